"""SimVQ: a learned linear map on a frozen random codebook keeps a large codebook alive.

Shared VQ-VAE harness (:mod:`kexue.repro._vqvae`), K = 1024 codes of dim 16: plain VQ (codebook learned by
loss, U(-1/K, 1/K) init, STE) vs SimVQ (C = E W, E ~ N(0, 1/16) frozen, W 16x16 without bias, same losses).
Quick mode: the shared quick run (hidden 64, 600 steps, seed ``s``) plus the exact one-step check of the
post's mechanism (one SGD step moves only the selected code in plain VQ, every code in SimVQ). Full mode
(spec protocol, hidden 128): 3000 steps with seeds ``s..s+2``; a K sweep {256, 1024, 4096} and the post's
variants (diagonal W, trainable E, SimVQ + rotation trick) at 1000 steps.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kexue.quantizers import VectorQuantizer
from kexue.repro import _vqvae as h
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure

CLAIM = Claim(
    slug="simvq",
    title="Another VQ trick: put a linear transform on the codebook",
    title_zh="VQ的又一技巧：给编码表加一个线性变换",
    url="https://kexue.fm/archives/10519",
    date="2024-11-06",
    claim=(
        "Reparameterising the codebook as a frozen random basis times one learned linear map (SimVQ) makes "
        "every update move all codes, so a 1024-code VQ-VAE keeps most codes in use and reconstructs better, "
        "where the plain learned codebook collapses."
    ),
)

SWEEP_K = (256, 1024, 4096)


def one_step_moved_rows(codebook: str, seed: int = 0) -> tuple[int, int]:
    """Rows of the effective codebook changed by one SGD step on a batch that selects a single code.

    Returns ``(selected codes, changed rows)``.
    """
    torch.manual_seed(seed)
    kw = {"init": "normal"} if codebook == "plain" else {}
    vq = VectorQuantizer(16, 1024, codebook=codebook, seed=seed, **kw)
    target = vq.codebook.detach()[7]
    x = target.repeat(32, 1) + 1e-3 * torch.randn(32, 16)
    opt = torch.optim.SGD(vq.parameters(), lr=0.1)
    before = vq.codebook.detach().clone()
    _, idx, loss = vq(x)
    opt.zero_grad()
    loss.backward()
    opt.step()
    changed = int(((vq.codebook.detach() - before).abs().sum(dim=1) > 0).sum())
    return len(set(idx.tolist())), changed


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    m = result.metrics
    rows: list[list] = []

    # claim 6 (post): an update of W moves every code; plain VQ moves only the selected ones
    sel_p, moved_p = one_step_moved_rows("plain", seed)
    sel_s, moved_s = one_step_moved_rows("linear", seed)
    m["one_step_rows_moved_plain"] = moved_p
    m["one_step_rows_moved_simvq"] = moved_s
    result.check(
        "one SGD step: plain VQ moves only the selected code, SimVQ moves all 1024",
        sel_p == 1 and moved_p == 1 and sel_s == 1 and moved_s == 1024,
        plain_moved=moved_p,
        simvq_moved=moved_s,
    )

    if mode == "quick":
        runs = h.quick_experiment(seed)
        _compare(result, runs["vq"], runs["simvq"], util_min=0.4, ppl_ratio=10.0)
        shown = [runs[v] for v in h.QUICK_VARIANTS]
        rows += [h.summary_row(r) for r in shown]
    else:
        shown = []
        for s in (seed, seed + 1, seed + 2):
            vq = h.train("vq", 1024, h.FULL_STEPS, s)
            sim = h.train("simvq", 1024, h.FULL_STEPS, s)
            tag = f" (seed {s})"
            _compare(result, vq, sim, util_min=0.85, ppl_ratio=10.0, tag=tag)
            result.check_le(f"plain VQ utilisation < 0.1{tag}", vq.usage.utilisation, 0.1)
            rows += [h.summary_row(vq), h.summary_row(sim)]
            if s == seed:
                shown = [vq, sim]
        _sweeps(result, out, seed, rows, shown)

    m["n_heldout_tokens"] = shown[0].usage.n_tokens
    fig = h.plot_usage_histograms(shown, f"Held-out code usage, seed {seed} ({mode} mode)")
    save_figure(fig, out, "simvq_usage_histograms.png", result)
    fig = h.plot_training_curves(shown[:5], f"Training curves, seed {seed} ({mode} mode)")
    save_figure(fig, out, "simvq_training_curves.png", result)
    result.table = Table(h.SUMMARY_COLUMNS, rows, caption="Held-out utilisation, perplexity and MSE")
    result.notes = (
        "SimVQ's basis E is frozen and W has no bias (the peer's default; the official code has a bias). "
        "Quick mode uses hidden width 64 and 600 steps (spec: 128 and 1000)."
    )
    return result


def _compare(
    result: Result, vq: h.RunResult, sim: h.RunResult, util_min: float, ppl_ratio: float, tag: str = ""
) -> None:
    m = result.metrics
    h.record_runs(m, tag, {"vq": vq, "simvq": sim})
    result.check_ge(f"SimVQ utilisation >= {util_min}{tag}", sim.usage.utilisation, util_min)
    result.check_ge(
        f"SimVQ utilisation >= 10x plain VQ's{tag}", sim.usage.utilisation / vq.usage.utilisation, 10.0
    )
    result.check_ge(
        f"SimVQ perplexity >= {ppl_ratio}x plain VQ's{tag}",
        sim.usage.perplexity / vq.usage.perplexity,
        ppl_ratio,
    )
    result.check_le(f"SimVQ held-out MSE <= 0.7x plain VQ's{tag}", sim.mse / vq.mse, 0.7)


def _sweeps(result: Result, out: Path, seed: int, rows: list[list], shown: list[h.RunResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = result.metrics
    sim_ppl, vq_ppl = [], []
    for k in SWEEP_K:
        sim = h.train("simvq", k, h.SWEEP_STEPS, seed)
        vq = h.train("vq", k, h.SWEEP_STEPS, seed)
        sim_ppl.append(sim.usage.perplexity)
        vq_ppl.append(vq.usage.perplexity)
        m[f"sweep_simvq_perplexity_K{k}"] = sim.usage.perplexity
        m[f"sweep_vq_perplexity_K{k}"] = vq.usage.perplexity
        rows += [h.summary_row(vq), h.summary_row(sim)]
    grows = all(b >= 1.5 * a for a, b in zip(sim_ppl, sim_ppl[1:]))
    result.check(
        "SimVQ perplexity grows >= 1.5x at each K step (256 -> 1024 -> 4096)",
        grows,
        **{f"simvq_ppl_K{k}": v for k, v in zip(SWEEP_K, sim_ppl)},
    )
    result.check_le("plain VQ perplexity stays below 50 across K", max(vq_ppl), 50.0)

    variants = {
        v: h.train(v, 1024, h.SWEEP_STEPS, seed)
        for v in ("vq", "simvq_diag", "simvq", "simvq_train_e", "simvq_rot")
    }
    for v, r in variants.items():
        m[f"variant_{v}_perplexity"] = r.usage.perplexity
        m[f"variant_{v}_mse"] = r.mse
        rows.append(h.summary_row(r))
    ppl = {v: r.usage.perplexity for v, r in variants.items()}
    result.check(
        "perplexity ordering plain VQ < SimVQ-diag < SimVQ (post's diagonal variant in between)",
        ppl["vq"] < ppl["simvq_diag"] < ppl["simvq"],
        vq=ppl["vq"],
        diag=ppl["simvq_diag"],
        simvq=ppl["simvq"],
    )
    ratio = ppl["simvq_train_e"] / ppl["simvq"]
    result.check(
        "trainable-E SimVQ within 2x of frozen-E SimVQ in perplexity (post: both forms about the same)",
        0.5 <= ratio <= 2.0,
        ratio=ratio,
    )
    shown += [variants["simvq_diag"], variants["simvq_train_e"], variants["simvq_rot"]]

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(SWEEP_K, sim_ppl, "o-", label="SimVQ")
    ax.plot(SWEEP_K, vq_ppl, "s-", label="plain VQ")
    ax.plot(SWEEP_K, SWEEP_K, "k:", label="uniform use (perplexity = K)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("codebook size K")
    ax.set_ylabel("held-out usage perplexity")
    ax.set_title(f"Codebook size sweep ({h.SWEEP_STEPS} steps, seed {seed})", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, out, "simvq_codebook_size_sweep.png", result)
