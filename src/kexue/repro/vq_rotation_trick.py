"""The rotation trick raises codebook usage over STE in the same VQ-VAE (only the backward differs).

Shared VQ-VAE harness (:mod:`kexue.repro._vqvae`). Pair A (the paper's setting): EMA codebook (decay 0.8,
N(0, 1) init), commitment 0.25, K = 1024 codes of dim 16; STE vs the rotation trick. Quick mode: the shared
quick run (hidden 64, 1000 steps, seed ``s``). Full mode (spec protocol, hidden 128): Pair A for 3000 steps
with seeds ``s..s+2``; Pair B (the post's setting: codebook learned by loss, U(-1/K, 1/K) init) reported
for 1000 steps; the paper's 2-D Himmelblau toy (16 codes, 1000 points, EMA 0.8, SGD lr 1e-3, 100 steps)
reported as 10-seed means (its effect is not stable across seeds, so it is not asserted).
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch

from kexue.quantizers import VectorQuantizer
from kexue.repro import _vqvae as h
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="vq-rotation-trick",
    title="The rotation trick for VQ: a generalisation of the straight-through estimator",
    title_zh="VQ的旋转技巧：梯度直通估计的一般推广",
    url="https://kexue.fm/archives/10489",
    date="2024-10-24",
    claim=(
        "Replacing the straight-through gradient by the rotation trick (forward value unchanged, gradient "
        "rotated and rescaled from the code back to the encoder output) raises codebook utilisation and "
        "perplexity in the same EMA VQ-VAE without hurting reconstruction."
    ),
)

# quick-mode thresholds, set from the shared quick run (hidden 64, 1000 steps) over seeds 0-4 (seeds 2-4:
# utilisation ratio 1.59-1.74x, perplexity ratio 1.34-1.46x, rotation MSE 5-10% below STE's)
QUICK_UTIL_RATIO = 1.4
QUICK_PPL_RATIO = 1.2


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    m = result.metrics
    rows: list[list] = []
    if mode == "quick":
        runs = h.quick_experiment(seed)
        ste, rot = runs["ema_ste"], runs["ema_rot"]
        _pair_a(result, ste, rot, util_ratio=QUICK_UTIL_RATIO, ppl_ratio=QUICK_PPL_RATIO)
        shown = [runs[v] for v in h.QUICK_VARIANTS]
        rows += [h.summary_row(r) for r in shown]
    else:
        shown = []
        for s in (seed, seed + 1, seed + 2):
            ste = h.train("ema_ste", 1024, h.FULL_STEPS, s)
            rot = h.train("ema_rot", 1024, h.FULL_STEPS, s)
            tag = f" (seed {s})"
            _pair_a(result, ste, rot, util_ratio=2.0, ppl_ratio=1.3, tag=tag)
            result.check_ge(f"rotation utilisation >= 0.8{tag}", rot.usage.utilisation, 0.8)
            rows += [h.summary_row(ste), h.summary_row(rot)]
            if s == seed:
                shown = [ste, rot]
        ste_b = h.train("vq", 1024, h.SWEEP_STEPS, seed)
        rot_b = h.train("vq_rot", 1024, h.SWEEP_STEPS, seed)
        for name, r in (("pair_b_ste", ste_b), ("pair_b_rotation", rot_b)):
            m[f"{name}_utilisation"] = r.usage.utilisation
            m[f"{name}_perplexity"] = r.usage.perplexity
            m[f"{name}_mse"] = r.mse
            m[f"{name}_rel_quant_error"] = r.rel_quant_error
        rows += [h.summary_row(ste_b), h.summary_row(rot_b)]
        shown += [ste_b, rot_b]
        _himmelblau(result, out)

    m["n_heldout_tokens"] = shown[0].usage.n_tokens
    fig = h.plot_usage_histograms(shown, f"Held-out code usage, K = 1024, seed {seed} ({mode} mode)")
    save_figure(fig, out, "rotation_usage_histograms.png", result)
    fig = h.plot_training_curves(shown, f"Training curves, seed {seed} ({mode} mode)")
    save_figure(fig, out, "rotation_training_curves.png", result)
    result.table = Table(
        h.SUMMARY_COLUMNS, rows, caption="Held-out utilisation, perplexity, MSE, ||z-q||^2/||z||^2"
    )
    result.notes = (
        "Only the backward through the quantiser differs between STE and rotation runs (same seed, data "
        "order and initialisation). The relative quantisation error ||z - q||^2 / ||z||^2 is reported, not "
        "asserted: with the EMA codebook (Pair A) the rotation trick raises it (full mode, 3 seeds: 0.17-0.18 vs "
        "0.115-0.12 for STE), with the loss-learned codebook (Pair B) it lowers it (0.21 vs 0.62); the paper "
        "reports a lower error in every setting. "
        "Quick mode uses hidden width 64 (spec: 128), 1000 steps."
    )
    return result


def _pair_a(
    result: Result, ste: h.RunResult, rot: h.RunResult, util_ratio: float, ppl_ratio: float, tag: str = ""
) -> None:
    m = result.metrics
    suffix = h.record_runs(m, tag, {"ste": ste, "rotation": rot})
    for name, r in (("ste", ste), ("rotation", rot)):
        m[f"{name}_rel_quant_error_{suffix}"] = r.rel_quant_error
    m[f"rotation_over_ste_rel_quant_error_{suffix}"] = rot.rel_quant_error / ste.rel_quant_error
    result.check_ge(
        f"rotation utilisation >= {util_ratio}x STE's{tag}",
        rot.usage.utilisation / ste.usage.utilisation,
        util_ratio,
    )
    result.check_ge(
        f"rotation perplexity >= {ppl_ratio}x STE's{tag}",
        rot.usage.perplexity / ste.usage.perplexity,
        ppl_ratio,
    )
    result.check_le(f"rotation held-out MSE <= STE's{tag}", rot.mse / ste.mse, 1.0)


def himmelblau(p: torch.Tensor) -> torch.Tensor:
    """``f(x, y) = (x^2 + y - 11)^2 + (x + y^2 - 7)^2`` on the last axis."""
    x, y = p[..., 0], p[..., 1]
    return (x**2 + y - 11) ** 2 + (x + y**2 - 7) ** 2


def himmelblau_toy(
    grad: str, seed: int, steps: int = 100, lr: float = 1e-3
) -> tuple[float, float, torch.Tensor]:
    """Paper App. A.2: 1000 points and 16 codes uniform in [-5, 5]^2, loss sum f(z_q), EMA 0.8 codebook,
    SGD on the points. Returns (mean ||e - q||^2, mean f(q), final points)."""
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(1000, 2, generator=g) * 10 - 5).requires_grad_(True)
    codes = torch.rand(16, 2, generator=g) * 10 - 5
    vq = VectorQuantizer(2, 16, grad=grad, ema_decay=0.8, commitment_weight=0.0, track_usage=False)
    with torch.no_grad():
        vq.embed.copy_(codes)
        vq.ema_embed_sum.copy_(codes)
    opt = torch.optim.SGD([pts], lr=lr)
    for _ in range(steps):
        zq, _, _ = vq(pts)
        loss = himmelblau(zq).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    vq.eval()
    with torch.no_grad():
        zq, _, _ = vq(pts)
        return float(((pts - zq) ** 2).sum(1).mean()), float(himmelblau(zq).mean()), pts.detach().clone()


def _himmelblau(result: Result, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.metrics
    finals = {}
    for grad in ("ste", "rotation"):
        dist, fq = [], []
        for s in track(range(10), f"Himmelblau toy ({grad})"):
            d, f, pts = himmelblau_toy(grad, s)
            dist.append(d)
            fq.append(f)
            if s == 0:
                finals[grad] = pts
        m[f"himmelblau_{grad}_distortion_mean10"] = statistics.mean(dist)
        m[f"himmelblau_{grad}_fq_mean10"] = statistics.mean(fq)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), sharey=True)
    xs = torch.linspace(-5, 5, 200)
    grid = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), dim=-1)
    for ax, grad in zip(axes, ("ste", "rotation")):
        ax.contour(xs, xs, himmelblau(grid).log1p(), levels=15, linewidths=0.5, cmap="Greys")
        ax.scatter(finals[grad][:, 0], finals[grad][:, 1], s=3)
        ax.set_title(
            f"{grad}: 10-seed mean f(q) {m[f'himmelblau_{grad}_fq_mean10']:.2f}, "
            f"||e-q||^2 {m[f'himmelblau_{grad}_distortion_mean10']:.3f}",
            fontsize=8,
        )
    fig.suptitle("Himmelblau toy (paper App. A.2), points after 100 steps, seed 0", fontsize=10)
    fig.tight_layout()
    save_figure(fig, out, "rotation_himmelblau_toy.png", result)
