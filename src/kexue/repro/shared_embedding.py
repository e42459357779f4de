"""Reproduction: revisiting tied input/output embeddings (kexue.fm/archives/9698).

When the residual branches start at zero the LM is the identity at step 0, so with tied embeddings it is the
bigram model ``softmax_j(N(w_i) . w_j)``: the self-logit is ``|w_i|^2 / sigma ~= d sigma`` and the initial
loss is ``log(e^{d sigma} + n - 1) - r d sigma`` instead of about ``log n``. Fixes: untie, init
``sigma = log(n)/d``, an orthogonal projection after the final norm, or the parameter-free half swap.

* quick: Monte-Carlo of the identity-network bigram for three ``(d, n)`` settings against the closed form
  (and the fixes), the small-``d sigma`` regime, and the measured step-0 loss of the real tiny LM
  (:class:`kexue.nn.blocks.TinyLM`, d=128, 2 blocks, pre-RMSNorm, zero-initialised branch outputs) on
  standard-library bytes, with the repeat fraction ``r`` measured on the same windows.
* full: trains the five variants for 400 steps (batch 16, AdamW lr 2e-3, 100 warmup steps) on two seeds;
  checks the post's "the init fix converges slowest" and reports how close the final losses are.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.blocks import OutputHead, TinyLM, tied_init_std, tied_initial_loss
from kexue.repro._tinylm import byte_split, eval_loss, fixed_windows, lm_loss, train_lm
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="shared-embedding",
    title="Revisiting tied input/output embeddings in language models",
    title_zh="语言模型输出端共享Embedding的重新探索",
    url="https://kexue.fm/archives/9698",
    date="2023-07-20",
    claim=(
        "With tied output embeddings and a near-identity initial network, the initial loss is about "
        "log(e^{d sigma} + n - 1) (far above log n) because every token predicts itself; untying, "
        "sigma = log(n)/d, a projection, or a half swap of the hidden state bring it back to about log n."
    ),
)

SETTINGS = ((256, 2000), (128, 5000), (64, 256))
VARIANTS = {  # name -> (output mode, embedding std or "log" for log(n)/d)
    "untied": ("untied", None),
    "tied": ("tied", None),
    "tied, sigma=log(n)/d": ("tied", "log"),
    "tied + half swap": ("swap", None),
    "tied + orthogonal proj": ("proj", None),
}


@torch.no_grad()
def bigram_losses(d: int, n: int, sigma: float, pairs: int, seed: int) -> dict[str, float]:
    """Monte-Carlo loss of the identity-network bigram ``softmax(head(RMSNorm(w_i)))`` at targets ``j != i``."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    emb = nn.Embedding(n, d)
    emb.weight.copy_(torch.randn(n, d, generator=gen) * sigma)
    i = torch.randint(0, n, (pairs,), generator=gen)
    j = (i + torch.randint(1, n, (pairs,), generator=gen)) % n  # uniform over j != i
    h = nn.RMSNorm(d, eps=1e-6)(emb(i))
    out = {}
    for mode in ("tied", "untied", "swap", "proj"):
        head = OutputHead(emb, mode, out_std=sigma)
        out[mode] = float(F.cross_entropy(head(h), j))
    return out


def _step0_model(name: str, seed: int, d: int = 128, n_layers: int = 2) -> TinyLM:
    mode, std = VARIANTS[name]
    sigma = tied_init_std(256, d) if std == "log" else 1.0 / math.sqrt(d)
    torch.manual_seed(seed)
    return TinyLM(
        256,
        d,
        n_layers,
        2,
        placement="pre",
        norm="rms",
        output=mode,
        embed_std=sigma,
        zero_init_branches=True,
    )


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    pairs = 2000 if mode == "quick" else 8000

    rows = []
    for d, n in SETTINGS:
        sigma = 1.0 / math.sqrt(d)
        mc = bigram_losses(d, n, sigma, pairs, seed)
        pred = tied_initial_loss(d, sigma, n)
        ln = math.log(n)
        rows.append(
            [
                f"d={d}, n={n}",
                "1/sqrt(d)",
                round(mc["tied"], 3),
                round(pred, 3),
                round(mc["untied"], 3),
                round(mc["swap"], 3),
                round(mc["proj"], 3),
                round(ln, 3),
            ]
        )
        tag = f"d{d}_n{n}"
        result.metrics.update({f"mc_{k}_{tag}": v for k, v in mc.items()})
        result.metrics[f"formula_tied_{tag}"] = pred
        result.check_le(
            f"{tag}: tied loss matches log(e^(d sigma)+n-1) within 0.15", abs(mc["tied"] - pred), 0.15
        )
        result.check_le(
            f"{tag}: every fix within log n + 0.6", max(mc["untied"], mc["swap"], mc["proj"]) - ln, 0.6
        )
        if (d, n) == SETTINGS[0]:
            s_fix = tied_init_std(n, d)
            mc_fix = bigram_losses(d, n, s_fix, pairs, seed)["tied"]
            pred_fix = tied_initial_loss(d, s_fix, n)
            rows.append(
                [
                    f"d={d}, n={n}",
                    "log(n)/d",
                    round(mc_fix, 3),
                    round(pred_fix, 3),
                    "-",
                    "-",
                    "-",
                    round(ln, 3),
                ]
            )
            result.metrics[f"mc_tied_logn_init_{tag}"] = mc_fix
            result.check_le(
                f"{tag}: init fix gives log(2n-1) within 0.15", abs(mc_fix - math.log(2 * n - 1)), 0.15
            )
    small = bigram_losses(128, 5000, 0.02, pairs, seed)["tied"]
    result.metrics["mc_tied_sigma0.02_d128_n5000"] = small
    rows.append(
        [
            "d=128, n=5000",
            "0.02",
            round(small, 3),
            round(tied_initial_loss(128, 0.02, 5000), 3),
            "-",
            "-",
            "-",
            round(math.log(5000), 3),
        ]
    )
    result.check_le(
        "small d*sigma (0.02 x 128): tied loss within 0.15 of log n", abs(small - math.log(5000)), 0.15
    )
    result.table = Table(
        ["setting", "sigma", "tied (MC)", "tied (formula)", "untied", "half swap", "orth. proj", "log n"],
        rows,
        caption=f"Identity-network bigram, {pairs} random (i, j != i) pairs, RMS-normalised w_i.",
    )

    step0 = _lm_step0(result, seed)
    logs: dict[str, list] = {}
    if mode == "full":
        logs = _train_variants(result, seed)
    _figures(result, out, step0, logs)
    return result


@torch.no_grad()
def _lm_step0(result: Result, seed: int) -> dict[str, float]:
    train, val = byte_split(1_000_000)
    wins = fixed_windows(val, 64, 64)
    r = float((wins[:, 1:] == wins[:, :-1]).double().mean())
    d, n = 128, 256
    sigma = 1.0 / math.sqrt(d)
    pred = tied_initial_loss(d, sigma, n, repeat_fraction=r)
    result.metrics["repeat_fraction"] = r
    result.metrics["lm_step0_tied_predicted"] = pred
    step0 = {}
    for name in VARIANTS:
        m = _step0_model(name, seed).eval()
        step0[name] = float(lm_loss(m, wins))
        result.metrics[f"lm_step0_{name}"] = step0[name]
    ln = math.log(n)
    result.check_le(
        "LM step 0: tied loss within 0.3 of log(e^(d sigma)+n-1) - r d sigma", abs(step0["tied"] - pred), 0.3
    )
    result.check_ge("LM step 0: tied loss > log n + 2", step0["tied"] - ln, 2.0)
    fixes = [k for k in VARIANTS if k != "tied"]
    result.check_le(
        "LM step 0: every fix < log n + 0.7",
        max(step0[k] for k in fixes) - ln,
        0.7,
        ", ".join(f"{k}={step0[k]:.3f}" for k in fixes),
    )
    return step0


def _train_variants(result: Result, seed: int, steps: int = 400, seeds: int = 2) -> dict[str, list]:
    train, val = byte_split(1_000_000)
    wins = fixed_windows(val, 32, 64)
    logs: dict[str, list] = {name: [] for name in VARIANTS}
    final: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for s in range(seed, seed + seeds):
        for name in track(VARIANTS, f"train variants (seed {s})"):
            m = _step0_model(name, s)
            log = train_lm(
                m,
                train,
                steps,
                batch=16,
                seq_len=64,
                lr=2e-3,
                warmup=100,
                seed=s,
                evaluate=lambda m=m: eval_loss(m, wins),
                eval_every=100,
                description=name,
            )
            logs[name].append(log)
            final[name].append(log.eval_loss[-1])
    mean = {k: sum(v) / len(v) for k, v in final.items()}
    for k, v in mean.items():
        result.metrics[f"val_loss_{steps}_{k}"] = v
    fixes = [k for k in VARIANTS if k != "tied"]
    slowest = max(fixes, key=lambda k: mean[k])
    result.check(
        "after 400 steps the init fix sigma=log(n)/d is the slowest fix (2-seed mean)",
        slowest == "tied, sigma=log(n)/d",
        f"slowest: {slowest}",
        **{k: mean[k] for k in fixes},
    )
    spread = max(mean.values()) - min(mean.values())
    result.metrics["final_spread"] = spread
    result.check_le(f"after {steps} steps all five variants are within 0.1 nats (2-seed mean)", spread, 0.1)
    result.notes = (
        "At this scale (d=128, 2 blocks, 400 steps) the variants' validation losses end within a few hundredths "
        "of a nat; which fix is slowest is decided by differences of that size, so the post's 'the init fix "
        "converges slowest' is a weak, scale-dependent observation here."
    )
    result.tables.append(
        Table(
            ["variant", "val loss step 0", *(f"val loss step {s}" for s in (100, 200, steps))],
            [
                [
                    k,
                    *(
                        round(sum(lg.eval_loss[lg.eval_steps.index(s)] for lg in logs[k]) / len(logs[k]), 4)
                        for s in (0, 100, 200, steps)
                    ),
                ]
                for k in VARIANTS
            ],
            caption=f"Tiny byte LM (d=128, 2 blocks, zero-init branches), {seeds}-seed mean; spread at step {steps}: "
            f"{spread:.3f} nats (reported; the post's 'all end about the same' is after much longer training).",
        )
    )
    return logs


def _figures(result: Result, out: Path, step0: dict[str, float], logs: dict[str, list]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    names = list(step0)
    ax.barh(names, [step0[k] for k in names], color=[f"C{i}" for i in range(len(names))])
    ax.axvline(math.log(256), color="k", ls="--", label="log n")
    ax.axvline(result.metrics["lm_step0_tied_predicted"], color="r", ls=":", label="tied prediction")
    ax.set_xlabel("step-0 loss (nats/byte)")
    ax.set_title("Tiny LM at init (identity network), d=128, n=256")
    ax.legend()
    save_figure(fig, out, "shared_embedding_step0.png", result)
    if logs:
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for i, (name, runs) in enumerate(logs.items()):
            steps = runs[0].eval_steps
            mean = [sum(r.eval_loss[k] for r in runs) / len(runs) for k in range(len(steps))]
            ax.plot(steps, mean, "o-", color=f"C{i}", label=name)
        ax.set(xlabel="step", ylabel="validation loss", yscale="log", title="training (2-seed mean)")
        ax.legend()
        save_figure(fig, out, "shared_embedding_training.png", result)
