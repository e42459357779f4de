"""Mixed-precision lessons of the bert4keras post, measured in PyTorch on a CPU.

What a CPU can show: the numerics (fp16 overflow in additive masks, gradient underflow and what loss
scaling recovers, Adam's ε/loss-scale equivalence, early-training speed-up from loss scaling when
gradients sit below ε, bf16 cancellation without fp32 master weights) and loss parity of fp32 / bf16
autocast / fp16 autocast + GradScaler training. The post's speed-ups (AMP +10%, XLA +15%, both +30%
on an RTX 3090) need tensor cores or a CPU with AVX512-BF16/AMX; here speed is report-only.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kexue.data import digits
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track
from kexue.train import TrainConfig, masked_softmax, maybe_compile, precision_context, train

CLAIM = Claim(
    slug="mixed-precision",
    title="Mixed precision and graph compilation lessons, translated to PyTorch",
    title_zh="在bert4keras中使用混合精度和XLA加速训练",
    url="https://kexue.fm/archives/9059",
    date="2022-04-28",
    claim=(
        "Mixed precision trains as well as fp32 once fp16's range is respected — finite masking "
        "constants, loss scaling against gradient underflow, fp32 master weights — and loss scaling also "
        "changes Adam only through its ε."
    ),
)


def _mlp(
    widths: tuple[int, ...], act: type[nn.Module], seed: int, init_scale: float | None = None
) -> nn.Sequential:
    """An MLP; with ``init_scale`` it gets Keras' defaults (Glorot-uniform weights × init_scale, zero
    biases — the bert4keras setting), so every gradient below the output bias is tiny."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(widths) - 2:
            layers.append(act())
    model = nn.Sequential(*layers)
    if init_scale is not None:
        with torch.no_grad():
            for m in model:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_uniform_(m.weight)
                    m.weight.mul_(init_scale)
                    m.bias.zero_()
    return model


def masking_demo() -> dict[str, float]:
    logits = torch.randn(4, 8)
    mask = torch.rand(4, 8) > 0.3
    mask[:, 0] = True
    out: dict[str, float] = {}
    for name, dt in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        x = logits.to(dt)
        big = torch.tensor(1e12, dtype=dt)
        additive = torch.softmax(x - (1 - mask.to(dt)) * big, dim=-1)
        safe = masked_softmax(x, mask)
        out[f"{name}_1e12_is_inf"] = float(torch.isinf(big))
        out[f"{name}_additive_nan_fraction"] = float(torch.isnan(additive).float().mean())
        out[f"{name}_finfo_min_finite"] = float(torch.isfinite(safe).all())
    return out


def underflow_census(seed: int, scales: list[float]) -> dict[float, tuple[float, int]]:
    """Fraction of nonzero fp32 gradient entries that become 0 when S·g is cast to fp16, and overflows."""
    x, y = digits("all", flatten=True)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(x.shape[0], generator=gen)[:64]
    model = _mlp((64, 128, 128, 10), nn.Tanh, seed, init_scale=1e-3)
    F.cross_entropy(model(x[idx]), y[idx]).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    nz = g != 0
    res = {}
    for s in scales:
        h = (g * s).to(torch.float16)
        lost = float(((h == 0) & nz).sum()) / max(1, int(nz.sum()))
        res[s] = (lost, int(torch.isinf(h).sum()))
    return res


def grad_scaler_scale(seed: int, steps: int = 30) -> float:
    """The scale ``torch.amp.GradScaler('cpu')`` settles on in fp16 autocast training of the ×1e-3 MLP."""
    x, y = digits("all", flatten=True)
    model = _mlp((64, 128, 128, 10), nn.Tanh, seed, init_scale=1e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=10)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        with precision_context("cpu", torch.float16):
            loss = F.cross_entropy(model(x[idx]), y[idx])
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    return float(scaler.get_scale())


def adam_eps_equivalence(S: float = 1000.0, eps: float = 1e-3, steps: int = 50) -> float:
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(8, dtype=torch.float64, generator=gen)
    targets = [torch.randn(8, dtype=torch.float64, generator=gen) for _ in range(steps)]
    a, b = nn.Parameter(w0.clone()), nn.Parameter(w0.clone())
    oa = torch.optim.Adam([a], lr=1e-2, eps=eps)
    ob = torch.optim.Adam([b], lr=1e-2, eps=eps / S)
    for t in targets:
        for p, o, scale in ((a, oa, S), (b, ob, 1.0)):
            o.zero_grad()
            (scale * ((p - t) ** 2).sum()).backward()
            o.step()
    return float((a - b).detach().abs().max())


def early_training(seed: int, loss_scale: float, init_scale: float = 1e-3, steps: int = 300) -> float:
    """fp32 Adam (ε 1e-7) on S·loss without unscaling; returns the full-data loss after ``steps``."""
    x, y = digits("all", flatten=True)
    model = _mlp((64, 128, 128, 10), nn.Tanh, seed, init_scale=init_scale)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    gen = torch.Generator().manual_seed(100 + seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (64,), generator=gen)
        opt.zero_grad()
        (loss_scale * F.cross_entropy(model(x[idx]), y[idx])).backward()
        opt.step()
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def parity(seed: int, steps: int, batch: int | None) -> dict[str, float]:
    """Full-data fp32 loss after training the 64-256-10 MLP in fp32, bf16 autocast, fp16 + GradScaler."""
    x, y = digits("all", flatten=True)
    out = {}
    for precision in ("fp32", "bf16", "fp16"):
        model = _mlp((64, 256, 10), nn.ReLU, seed)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(200 + seed)
        if batch is None:
            batches = ((x, y) for _ in range(steps))
        else:
            batches = (
                (x[i], y[i])
                for i in (torch.randint(0, x.shape[0], (batch,), generator=gen) for _ in range(steps))
            )
        log = train(
            model,
            lambda m, b: F.cross_entropy(m(b[0]), b[1]),
            batches,
            opt,
            TrainConfig(steps=steps, seed=None, precision=precision, log_every=steps, description=precision),
        )
        with torch.no_grad():
            out[precision] = float(F.cross_entropy(model(x), y))
        out[f"{precision}_skipped"] = float(log.skipped_steps)
        out[f"{precision}_params_fp32"] = float(all(p.dtype == torch.float32 for p in model.parameters()))
    return out


def speed(rounds: int, reps: int, compile_too: bool, widths: tuple[int, ...], batch: int) -> dict[str, float]:
    """Median seconds per training step of an MLP (``widths``, ``batch``) per mode, interleaved rounds."""
    x = torch.randn(batch, widths[0])
    y = torch.randint(0, widths[-1], (batch,))
    modes = [("fp32", False), ("bf16", False)] + ([("fp32", True), ("bf16", True)] if compile_too else [])
    setups = {}
    out: dict[str, float] = {}
    for precision, comp in modes:
        model = _mlp(widths, nn.ReLU, 0)
        net = maybe_compile(model, comp)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)

        def step(net=net, opt=opt, precision=precision) -> None:
            with precision_context("cpu", precision):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()

        t0 = time.perf_counter()
        step()  # warm-up (compilation happens here)
        name = f"{precision}{'_compiled' if comp else ''}"
        out[f"{name}_warmup_s"] = time.perf_counter() - t0
        setups[name] = step
    times: dict[str, list[float]] = {k: [] for k in setups}
    for _ in range(rounds):
        for name, step in setups.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                step()
            times[name].append((time.perf_counter() - t0) / reps)
    for name, ts in times.items():
        out[f"{name}_step_s"] = statistics.median(ts)
    return out


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quick = mode == "quick"
    result = Result()

    # (a) masking
    m = masking_demo()
    result.metrics.update(m)
    result.check(
        "fp16: 1e12 overflows to inf and additive masking turns every row into NaN",
        m["fp16_1e12_is_inf"] == 1.0 and m["fp16_additive_nan_fraction"] == 1.0,
        "",
        nan_fraction=m["fp16_additive_nan_fraction"],
    )
    result.check(
        "finfo.min / boolean masking stays finite in fp16, bf16 and fp32",
        all(m[f"{d}_finfo_min_finite"] == 1.0 for d in ("fp16", "bf16", "fp32")),
    )

    # (b) gradient underflow and loss scaling
    scales = [1.0, 2.0**10, 2.0**16, 2.0**24]
    census = underflow_census(seed, scales)
    for s, (lost, inf) in census.items():
        result.metrics[f"fp16_lost_fraction_S{int(s)}"] = lost
        result.metrics[f"fp16_overflow_S{int(s)}"] = float(inf)
    lost1, lost10 = census[1.0][0], census[2.0**10][0]
    result.check(
        "small gradients underflow in fp16; a static scale S = 1024 recovers them",
        lost1 >= 0.5 and lost10 < lost1 / 10 and census[2.0**10][1] == 0,
        "lost = nonzero fp32 entries that become 0 in fp16",
        lost_S1=lost1,
        lost_S1024=lost10,
        overflow_S1024=census[2.0**10][1],
    )
    found = grad_scaler_scale(seed)
    lost_found, inf_found = underflow_census(seed, [found])[found]
    result.metrics.update(grad_scaler_scale=found, grad_scaler_lost=lost_found)
    result.check(
        "GradScaler finds a working scale automatically",
        lost_found < lost1 / 10 and inf_found == 0,
        "starting from 2^24 (overflows), backing off",
        scale=found,
        lost=lost_found,
    )

    # (c) Adam: S·L with ε equals L with ε/S
    diff = adam_eps_equivalence()
    result.metrics["adam_eps_equivalence_maxdiff"] = diff
    result.check_le("Adam(S·L, ε) == Adam(L, ε/S) over 50 steps (float64)", diff, 1e-10)

    # (d) loss scaling speeds up early fp32 Adam training when gradients are below ε
    seeds = [seed, seed + 1]
    rows = []
    ok = True
    for s in track(seeds, "loss scaling in fp32"):
        plain = early_training(s, 1.0)
        scaled = early_training(s, 1000.0)
        result.metrics[f"early_loss_unscaled_seed{s}"] = plain
        result.metrics[f"early_loss_x1000_seed{s}"] = scaled
        rows.append([f"×1e-3 init, seed {s}", round(plain, 4), round(scaled, 4)])
        ok = ok and scaled <= 0.5 * plain
    result.check(
        "loss ×1000 speeds up early Adam training (ε = 1e-7, tiny gradients)",
        ok,
        "step-300 loss halves or better",
    )
    if not quick:
        plain = early_training(seed, 1.0, init_scale=1e-2)
        scaled = early_training(seed, 1000.0, init_scale=1e-2)
        result.metrics.update(early_loss_unscaled_init1e2=plain, early_loss_x1000_init1e2=scaled)
        rows.append(["×1e-2 init (control)", round(plain, 4), round(scaled, 4)])

    # (e) bf16 cancellation
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    lost_update = bool(one + torch.tensor(1e-3, dtype=torch.bfloat16) == one)
    master = torch.tensor(1.0) + 1e-3
    result.check(
        "bf16 drops a 1e-3 update to 1.0; an fp32 master weight keeps it",
        lost_update and float(master) != 1.0,
        "",
        bf16_result=float(one + torch.tensor(1e-3, dtype=torch.bfloat16)),
        fp32_result=float(master),
    )

    # training parity
    par = parity(seed, 300, 128 if quick else None)
    result.metrics.update({f"parity_{k}": v for k, v in par.items()})
    for precision in ("bf16", "fp16"):
        rel = abs(par[precision] - par["fp32"]) / par["fp32"]
        result.check(
            f"{precision} autocast{' + GradScaler' if precision == 'fp16' else ''} matches fp32 loss (10%)",
            rel <= 0.10 and par[f"{precision}_params_fp32"] == 1.0,
            "full-data loss after 300 Adam steps; weights stay fp32",
            loss=par[precision],
            fp32=par["fp32"],
        )

    # speed: report only
    widths, sbatch = ((256, 512, 10), 64) if quick else ((256, 1024, 1024, 10), 256)
    sp = speed(3 if quick else 7, 1 if quick else 3, not quick, widths, sbatch)
    result.metrics.update({f"speed_{k}": v for k, v in sp.items()})
    ratio = sp["fp32_step_s"] / sp["bf16_step_s"]
    result.metrics["bf16_speedup"] = ratio
    cap = torch.backends.cpu.get_cpu_capability()
    result.notes = (
        f"CPU capability {cap}: bf16 autocast runs at {ratio:.2f}x the fp32 speed on this machine "
        "(report-only). The post's speed-ups (AMP +10%, XLA +15%, both +30% on an RTX 3090) need tensor "
        "cores (GPU) or AVX512-BF16/AMX CPUs; on CPUs without them bf16 is emulated and slower. Under CPU "
        "autocast softmax and layer_norm stay in low precision (kexue.train.probe_autocast_dtypes): use "
        "the fp32 islands."
    )
    result.table = Table(
        columns=["setting", "loss, unscaled", "loss, ×1000"],
        rows=rows,
        caption="fp32 Adam (ε = 1e-7), digits MLP 64-128-128-10 tanh, full-data loss after 300 steps",
    )
    speed_rows = [
        [k.removesuffix("_step_s"), f"{v * 1e3:.2f} ms"] for k, v in sp.items() if k.endswith("_step_s")
    ]
    result.tables.append(
        Table(
            columns=["mode", "time per step"],
            rows=speed_rows,
            caption=f"MLP {'-'.join(map(str, widths))}, batch {sbatch}, CPU {cap}",
        )
    )

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.bar(
        [f"S=2^{int(round(torch.log2(torch.tensor(s)).item()))}" for s in scales],
        [100 * census[s][0] for s in scales],
    )
    ax1.set_ylabel("% nonzero grads lost in fp16")
    ax1.set_title("gradient underflow vs loss scale")
    names = ["fp32", "bf16", "fp16"]
    ax2.bar(names, [par[n] for n in names], color=["C0", "C1", "C2"])
    ax2.set_ylabel("full-data loss after 300 steps")
    ax2.set_title("training parity")
    save_figure(fig, out, "mixed_precision.png", result)
    return result
