"""The small VQ-VAE experiment shared by the ``fsq``, ``vq-rotation-trick`` and ``simvq`` reproductions.

Protocol (the three specs' CPU-sized harness): "blobs" 8x8 images (:func:`kexue.data.blobs`, two Gaussian
bumps each; 20,000 train images with seed ``s``, 10,000 held-out with seed ``s + 1000``; standardised per
pixel by the train mean/std), one token per image, MLP autoencoder ``64 -> 128 -> 128 -> d -> quantiser ->
d -> 128 -> 128 -> 64`` (GELU; hidden width 64 in the quick-mode run), Adam lr 1e-3, batch 256 drawn with a seeded generator, element-wise mean
losses. Variants (K ~ 1024 unless swept):

* ``vq``: plain VQ, codebook learned by loss (weight 1), U(-1/K, 1/K) init, commitment 0.25, STE, d = 16;
* ``vq_rot``: the same with the rotation trick (the post's setting, "Pair B");
* ``ema_ste`` / ``ema_rot``: EMA codebook (decay 0.8, N(0, 1) init), commitment 0.25, STE / rotation
  (the paper's setting, "Pair A");
* ``simvq`` (C = E W, E ~ N(0, 1/16) frozen, W 16x16 without bias), ``simvq_rot``, ``simvq_diag`` (the
  post's C = E * w), ``simvq_train_e`` (E trained too);
* ``fsq`` / ``fsq_sigmoid``: FSQ [8,5,5,5] (d = 4) with the paper's tanh bound / the post's sigmoid.

Runs are memoised inside the process by (variant, K, steps, seed, held-out size), so the three
reproductions share every run they have in common (in particular the quick-mode experiment).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexue.data import blobs
from kexue.quantizers import FSQ, VectorQuantizer, recommended_levels
from kexue.quantizers.fsq import APPENDIX_LEVELS
from kexue.quantizers.stats import UsageStats, usage_from_counts
from kexue.repro.base import track

HIDDEN = 128
BATCH = 256
LR = 1e-3
N_TRAIN = 20_000
N_TEST = 10_000
VQ_DIM = 16
QUICK_STEPS = {"vq": 600, "fsq": 600, "simvq": 600, "ema_ste": 1000, "ema_rot": 1000}
QUICK_HIDDEN = 64
FULL_STEPS = 3000
SWEEP_STEPS = 1000
QUICK_VARIANTS = ("vq", "fsq", "ema_ste", "ema_rot", "simvq")

LABELS = {
    "vq": "plain VQ (STE)",
    "vq_rot": "plain VQ (rotation)",
    "ema_ste": "VQ-EMA (STE)",
    "ema_rot": "VQ-EMA (rotation trick)",
    "simvq": "SimVQ (C = E W)",
    "simvq_rot": "SimVQ + rotation",
    "simvq_diag": "SimVQ-diag (C = E * w)",
    "simvq_train_e": "SimVQ, E trained",
    "fsq": "FSQ (tanh)",
    "fsq_sigmoid": "FSQ (sigmoid)",
}

FSQ_LEVELS_BY_K = {k: recommended_levels(k) for k in (2**8, 2**10, 2**12)} | {
    k: APPENDIX_LEVELS[k] for k in (2**4, 2**6)
}
"""Levels used when an FSQ variant is asked for target codebook size K (paper Table 1 / appendix)."""


@dataclass
class RunResult:
    """One trained variant, measured on the held-out set."""

    variant: str
    codebook_size: int
    steps: int
    seed: int
    mse: float
    usage: UsageStats
    counts: np.ndarray
    rel_quant_error: float
    curve_steps: list[int] = field(default_factory=list)
    curve_mse: list[float] = field(default_factory=list)
    curve_used: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def label(self) -> str:
        return LABELS.get(self.variant, self.variant)


@lru_cache(maxsize=4)
def dataset(seed: int, n_test: int = N_TEST) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised ``(train (20000, 64), held-out (n_test, 64))`` blobs for ``seed``."""
    train = blobs(N_TRAIN, seed=seed, flatten=True)
    test = blobs(n_test, seed=seed + 1000, flatten=True)
    mean, std = train.mean(dim=0), train.std(dim=0).clamp_min(1e-6)
    return (train - mean) / std, (test - mean) / std


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def make_quantizer(variant: str, codebook_size: int, seed: int) -> tuple[nn.Module, int]:
    """The quantiser of ``variant`` for (target) codebook size ``codebook_size`` and its code width."""
    k = codebook_size
    if variant in ("fsq", "fsq_sigmoid"):
        if k not in FSQ_LEVELS_BY_K:
            raise ValueError(f"no FSQ levels for K={k}; choose one of {sorted(FSQ_LEVELS_BY_K)}")
        levels = FSQ_LEVELS_BY_K[k]
        return FSQ(levels, bound="tanh" if variant == "fsq" else "sigmoid"), len(levels)
    common = dict(commitment_weight=0.25, seed=seed)
    options: dict[str, dict] = {
        "vq": dict(grad="ste", init="uniform"),
        "vq_rot": dict(grad="rotation", init="uniform"),
        "ema_ste": dict(grad="ste", ema_decay=0.8, init="normal"),
        "ema_rot": dict(grad="rotation", ema_decay=0.8, init="normal"),
        "simvq": dict(grad="ste", codebook="linear"),
        "simvq_rot": dict(grad="rotation", codebook="linear"),
        "simvq_diag": dict(grad="ste", codebook="diagonal"),
        "simvq_train_e": dict(grad="ste", codebook="linear", trainable_basis=True),
    }
    if variant not in options:
        raise ValueError(f"unknown variant {variant!r}; choose one of {sorted(LABELS)}")
    return VectorQuantizer(VQ_DIM, k, **common, **options[variant]), VQ_DIM


class _AutoEncoder(nn.Module):
    def __init__(self, quantizer: nn.Module, code_dim: int, hidden: int) -> None:
        super().__init__()
        self.encoder = _mlp([64, hidden, hidden, code_dim])
        self.decoder = _mlp([code_dim, hidden, hidden, 64])
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        if isinstance(self.quantizer, FSQ):
            zq, idx = self.quantizer(z)
            aux = torch.zeros((), dtype=x.dtype)
        else:
            zq, idx, aux = self.quantizer(z)
        return self.decoder(zq), idx, aux, z


_RUNS: dict[tuple, RunResult] = {}


def train(
    variant: str, codebook_size: int, steps: int, seed: int, hidden: int = HIDDEN, n_test: int = N_TEST
) -> RunResult:
    """Train ``variant`` for ``steps`` steps with ``seed`` and measure it on held-out data (memoised)."""
    key = (variant, codebook_size, steps, seed, hidden, n_test)
    if key in _RUNS:
        return _RUNS[key]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = _train(variant, codebook_size, steps, seed, hidden, n_test)
    finally:
        torch.set_num_threads(threads)
    _RUNS[key] = result
    return result


def _train(variant: str, codebook_size: int, steps: int, seed: int, hidden: int, n_test: int) -> RunResult:
    t0 = time.perf_counter()
    c0 = time.process_time()
    train_x, test_x = dataset(seed, n_test)
    torch.manual_seed(seed)
    quantizer, code_dim = make_quantizer(variant, codebook_size, seed)
    model = _AutoEncoder(quantizer, code_dim, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=True)
    gen = torch.Generator().manual_seed(seed)
    log_every = max(1, steps // 25)
    curve_steps: list[int] = []
    curve_mse: list[float] = []
    curve_used: list[float] = []
    window = 0.0
    model.train()
    quantizer.reset_usage()
    for step in track(range(1, steps + 1), f"{LABELS.get(variant, variant)} K={codebook_size} seed {seed}"):
        x = train_x[torch.randint(0, N_TRAIN, (BATCH,), generator=gen)]
        x_hat, _, aux, _ = model(x)
        recon = F.mse_loss(x_hat, x)
        loss = recon + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window += float(recon.detach())
        if step % log_every == 0:
            curve_steps.append(step)
            curve_mse.append(window / log_every)
            curve_used.append(quantizer.usage(reset=True).utilisation)
            window = 0.0
    model.eval()
    with torch.no_grad():
        x_hat, idx, _, z = model(test_x)
        mse = float(F.mse_loss(x_hat, test_x))
        if isinstance(quantizer, FSQ):
            rel_qerr = math.nan  # FSQ has no encoder-vector-to-code distance in the same sense
        else:
            q = quantizer.indices_to_codes(idx)
            rel_qerr = float(((z - q) ** 2).sum() / (z**2).sum())
    counts = torch.bincount(idx.reshape(-1), minlength=_codebook_size(quantizer))
    return RunResult(
        variant=variant,
        codebook_size=_codebook_size(quantizer),
        steps=steps,
        seed=seed,
        mse=mse,
        usage=usage_from_counts(counts),
        counts=counts.numpy(),
        rel_quant_error=rel_qerr,
        curve_steps=curve_steps,
        curve_mse=curve_mse,
        curve_used=curve_used,
        seconds=time.perf_counter() - t0,
        cpu_seconds=time.process_time() - c0,
    )


def _codebook_size(quantizer: nn.Module) -> int:
    return int(quantizer.codebook_size)


def quick_experiment(seed: int) -> dict[str, RunResult]:
    """The shared quick-mode run: every variant of :data:`QUICK_VARIANTS` at K ~ 1024, same seed.

    Smaller than the spec protocol (hidden width 64; 600 steps, 1000 for the STE / rotation pair whose
    difference needs longer to emerge) so the five runs fit the quick budget."""
    return {v: train(v, 1024, QUICK_STEPS[v], seed, hidden=QUICK_HIDDEN) for v in QUICK_VARIANTS}


# --- figures ------------------------------------------------------------------------------------


def plot_usage_histograms(runs: list[RunResult], title: str):
    """Sorted per-code held-out counts (rank-frequency) for each run, one panel per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(runs)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), sharey=True, squeeze=False)
    for ax, run in zip(axes[0], runs):
        counts = np.sort(run.counts)[::-1]
        ax.stairs(counts, np.arange(len(counts) + 1), fill=True, color="tab:blue")
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_title(
            f"{run.label}\nK={run.codebook_size}, used {100 * run.usage.utilisation:.1f}%, "
            f"ppl {run.usage.perplexity:.0f}",
            fontsize=8,
        )
        ax.set_xlabel("code (sorted by use)")
    axes[0][0].set_ylabel(f"held-out tokens per code (N={runs[0].usage.n_tokens})")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_training_curves(runs: list[RunResult], title: str):
    """Training reconstruction MSE and per-window code utilisation against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for run in runs:
        ax1.plot(run.curve_steps, run.curve_mse, label=f"{run.label} (held-out {run.mse:.3f})")
        ax2.plot(run.curve_steps, run.curve_used, label=run.label)
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("train reconstruction MSE")
    ax1.legend(fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_ylabel("fraction of codes used in the window")
    ax2.set_ylim(0, 1.02)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def summary_row(run: RunResult) -> list:
    return [
        run.label,
        run.codebook_size,
        run.steps,
        run.seed,
        round(100 * run.usage.utilisation, 1),
        round(run.usage.perplexity, 1),
        round(run.mse, 4),
        round(run.rel_quant_error, 4) if not math.isnan(run.rel_quant_error) else "n/a",
    ]


SUMMARY_COLUMNS = [
    "variant",
    "K",
    "steps",
    "seed",
    "used %",
    "perplexity",
    "held-out MSE",
    "rel. quant. error",
]


def record_runs(metrics: dict[str, float], tag: str, runs: dict[str, RunResult]) -> str:
    """Store utilisation, perplexity and held-out MSE of each named run as ``<name>_<stat>_<suffix>``.

    ``suffix`` is derived from ``tag`` (``" (64 codes)"`` -> ``"64codes"``; empty -> ``"main"``) and returned.
    """
    suffix = tag.strip().replace("(", "").replace(")", "").replace(" ", "") or "main"
    for name, r in runs.items():
        metrics[f"{name}_utilisation_{suffix}"] = r.usage.utilisation
        metrics[f"{name}_perplexity_{suffix}"] = r.usage.perplexity
        metrics[f"{name}_mse_{suffix}"] = r.mse
    return suffix
