"""Benchmark: kexue's LoRA layer vs peft's on the same model; LoRA-GA initialisation; LoRA-Pro step cost.

Run ``python benchmarks/lora.py`` (``--quick`` for a seconds-long run). Needs the peer ``peft``
(``pip install peft``); exits with a message if it is missing.

1. Forward + backward of an MLP of ``--layers`` Linear(d, d) layers with rank-``r`` LoRA on every layer:
   time of the bare model, ours and peft's, the LoRA overhead (time minus the bare model's) and the
   activation memory saved for backward (bytes of non-parameter tensors autograd keeps). Ratios are
   ``peft / ours`` (> 1 means ours is faster / smaller).
2. LoRA-GA initialisation time on the same model (gradient estimation + SVD + offset): ours
   (randomised SVD, the default, and exact SVD) vs peft's ``preprocess_loraga`` + ``get_peft_model``.
3. LoRA-Pro optimizer-step overhead on one d x d layer at rank r: backward + AdamW step for plain LoRA,
   LoRA-Pro in the backward pass + AdamW ("efficient"), and ``LoraProAdamW(mode="full")``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn


def _timeit(fn: Callable[[], None], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _interleaved(fns: list[Callable[[], None]], repeats: int, warmup: int = 2) -> list[float]:
    """Median time of each function, measured in alternating rounds (fair under background load)."""
    for f in fns:
        for _ in range(warmup):
            f()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, f in enumerate(fns):
            t0 = time.perf_counter()
            f()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def _saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in param_storages:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    out.sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _mlp(d: int, layers: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(d, d))
        if i < layers - 1:
            mods.append(nn.GELU())
    return nn.Sequential(*mods)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (seconds)")
    ap.add_argument("--dim", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        import peft
        from peft.tuners.lora import LoraGAConfig as PeftGAConfig
        from peft.tuners.lora import preprocess_loraga
    except ImportError:
        print("peft is not installed (pip install peft); nothing to compare against.")
        return 0
    from kexue.peft import LoraGAConfig, LoraProAdamW, apply_lora

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    d = args.dim or (256 if args.quick else 1024)
    n_layers = args.layers or (2 if args.quick else 4)
    batch = args.batch or (64 if args.quick else 512)
    reps = args.repeats or (5 if args.quick else 20)
    r = args.rank
    names = [str(2 * i) for i in range(n_layers)]
    x = torch.randn(batch, d)
    print(f"torch {torch.__version__}, peft {peft.__version__}, threads {args.threads}")
    print(f"model: {n_layers} x Linear({d}, {d}), batch {batch}, LoRA r={r} on every layer, float32\n")

    # 1. forward + backward
    base = _mlp(d, n_layers)
    ours = apply_lora(copy.deepcopy(base), names, r=r, alpha=2 * r)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=r, lora_alpha=2 * r, target_modules=names)
    )
    with torch.no_grad():  # same adapter weights everywhere (B != 0)
        for n in names:
            lo = ours.get_submodule(n)
            lo.lora_B.normal_(std=0.01)
            lp = theirs.base_model.model.get_submodule(n)
            lp.lora_A["default"].weight.copy_(lo.lora_A)
            lp.lora_B["default"].weight.copy_(lo.lora_B)
    diff = (ours(x) - theirs(x)).abs().max().item()
    for p in base.parameters():
        p.requires_grad_(False)
    xg = x.clone().requires_grad_(True)  # all three backprop to the input, so the base work is identical

    def fb(model: nn.Module) -> Callable[[], None]:
        def f() -> None:
            model(xg).sum().backward()
            xg.grad = None

        return f

    t_base, t_ours, t_peft = _interleaved([fb(base), fb(ours), fb(theirs)], reps)
    mem_ours = _saved_activation_bytes(ours, x)
    mem_peft = _saved_activation_bytes(theirs, x)
    ov_ours, ov_peft = t_ours - t_base, t_peft - t_base
    print(f"1. forward + backward (median of {reps})")
    print(f"   outputs agree: max |ours - peft| = {diff:.2e}")
    print(f"   bare model:                     {t_base * 1e3:8.2f} ms")
    print(f"   ours:                           {t_ours * 1e3:8.2f} ms   overhead {ov_ours * 1e3:7.2f} ms")
    print(f"   peft:                           {t_peft * 1e3:8.2f} ms   overhead {ov_peft * 1e3:7.2f} ms")
    print(f"   time ratio peft/ours: total {t_peft / t_ours:.2f}x", end="")
    if ov_ours > 0:
        print(f", overhead {ov_peft / ov_ours:.2f}x")
    else:
        print(", overhead: ours is within timing noise of the bare model")
    print(f"   ours/peft time: {t_ours / t_peft:.2f}x (target <= 1.0x)")
    print(
        f"   saved activations: ours {mem_ours / 2**20:.2f} MiB, peft {mem_peft / 2**20:.2f} MiB, "
        f"peft/ours {mem_peft / max(mem_ours, 1):.2f}x\n"
    )

    # 2. LoRA-GA initialisation
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, d, generator=gen) for _ in range(2)]  # reference defaults: bsz 2, 2 iters

    def train_step_for(model: nn.Module) -> Callable[[], None]:
        def step() -> None:
            for xb in batches:
                model(xb).pow(2).mean().backward()

        return step

    def ga_ours(svd: str) -> Callable[[], None]:
        def f() -> None:
            m = copy.deepcopy(base)
            for p in m.parameters():
                p.requires_grad_(True)
            apply_lora(
                m,
                names,
                r=r,
                alpha=2 * r,
                init="ga",
                train_step=train_step_for(m),
                ga_config=LoraGAConfig(svd=svd),
            )

        return f

    def ga_peft() -> None:
        m = copy.deepcopy(base)
        for p in m.parameters():
            p.requires_grad_(True)
        cfg = peft.LoraConfig(
            r=r,
            lora_alpha=2 * r,
            target_modules=names,
            init_lora_weights="lora_ga",
            lora_ga_config=PeftGAConfig(direction="ArB2r", scale="stable", stable_gamma=16),
        )
        preprocess_loraga(m, cfg, train_step_for(m))
        peft.get_peft_model(m, cfg)

    def ga_copy_only() -> None:
        copy.deepcopy(base)

    ga_reps = max(3, reps // 4)
    t_copy, t_ga_low, t_ga_peft = _interleaved([ga_copy_only, ga_ours("lowrank"), ga_peft], ga_reps, warmup=1)
    t_ga_low, t_ga_peft = t_ga_low - t_copy, t_ga_peft - t_copy
    t_ga_exact = _timeit(ga_ours("exact"), 1, warmup=0) - t_copy
    print("2. LoRA-GA initialisation (gradient estimation on 2 batches of 2 + SVD + offset, all layers)")
    print(f"   ours (randomised SVD): {t_ga_low * 1e3:8.1f} ms")
    print(f"   ours (exact SVD):      {t_ga_exact * 1e3:8.1f} ms")
    print(
        f"   peft:                  {t_ga_peft * 1e3:8.1f} ms   peft/ours (randomised) {t_ga_peft / t_ga_low:.2f}x\n"
    )

    # 3. LoRA-Pro step overhead on one d x d layer
    lx = torch.randn(batch, d)

    def setup(gradient: str) -> nn.Sequential:
        m = nn.Sequential(nn.Linear(d, d))
        torch.manual_seed(2)
        apply_lora(m, ["0"], r=r, alpha=2 * r, gradient=gradient)
        with torch.no_grad():
            m[0].lora_B.normal_(std=0.01)
        return m

    def step_fn(m: nn.Module, opt: torch.optim.Optimizer) -> Callable[[], None]:
        def f() -> None:
            opt.zero_grad(set_to_none=True)
            m(lx).pow(2).mean().backward()
            opt.step()

        return f

    m_plain, m_pro, m_full = setup("plain"), setup("pro"), setup("plain")
    opt_plain = torch.optim.AdamW([p for p in m_plain.parameters() if p.requires_grad], lr=1e-4)
    opt_pro = torch.optim.AdamW([p for p in m_pro.parameters() if p.requires_grad], lr=1e-4)
    opt_full = LoraProAdamW(m_full, lr=1e-4, mode="full")
    t_plain, t_pro, t_full = _interleaved(
        [step_fn(m_plain, opt_plain), step_fn(m_pro, opt_pro), step_fn(m_full, opt_full)], reps
    )
    print(f"3. one training step on Linear({d}, {d}), batch {batch}, r={r} (forward + backward + optimizer)")
    print(f"   LoRA + AdamW:                       {t_plain * 1e3:7.2f} ms")
    print(f"   LoRA-Pro (backward) + AdamW:        {t_pro * 1e3:7.2f} ms   {t_pro / t_plain:.2f}x plain")
    print(f"   LoraProAdamW(mode='full'):          {t_full * 1e3:7.2f} ms   {t_full / t_plain:.2f}x plain")
    state = sum(
        v.numel() * v.element_size()
        for s in opt_full.state.values()
        for v in s.values()
        if torch.is_tensor(v)
    )
    print(
        f"   full mode optimizer state: {state / 2**20:.2f} MiB ({d}x{d} moments; efficient mode: rank-sized)"
    )
    try:
        import lora_pro  # noqa: F401

        print("   (lora-pro-adamw is installed but not benchmarked here)")
    except ImportError:
        print("   (peer lora-pro-adamw not installed: no LoRA-Pro peer timing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
