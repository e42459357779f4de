"""Reproduction: why Pre Norm underperforms Post Norm (kexue.fm/archives/9009).

The post argues that in Pre Norm the residual stream ``x_t`` grows like ``t``, so each later layer changes it
relatively less and neighbouring layers see almost the same normalised input: late layers act in parallel
(a wider, shallower net), while Post Norm keeps every layer as real depth. Measured with
:func:`kexue.nn.blocks.depth_diagnostics` on a tiny byte LM (8 blocks, d=64, 2 heads, LayerNorm, embeddings
``N(0, 0.02^2)``, PyTorch default Linear init):

* quick (init, 3 seeds, one batch of 8 random byte sequences of length 64): stream RMS, relative update ``rho_t`` and its
  log-log slope (block granularity), serial/parallel gap ``delta_t`` (branch granularity); DeepNorm and
  LayerNorm Scaling are measured alongside (informational).
* full: train Pre, Post (and DeepNorm, informational) for 400 steps; the same diagnostics after training at
  branch granularity plus the functional test M4 (loss increase when branch pair ``(t, t+1)`` runs in
  parallel) and the validation losses (quality comparison, reported).
"""

from __future__ import annotations

from pathlib import Path

import torch

from kexue.nn.blocks import PLACEMENTS, DepthReport, TinyLM, depth_diagnostics
from kexue.repro._tinylm import byte_split, eval_loss, fixed_windows, train_lm
from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track

CLAIM = Claim(
    slug="pre-post-norm",
    title="Why Pre Norm underperforms Post Norm",
    title_zh="为什么Pre Norm的效果不如Post Norm？",
    url="https://kexue.fm/archives/9009",
    date="2022-03-29",
    claim=(
        "In Pre Norm the residual stream grows with depth, so each later layer changes it less and adjacent "
        "layers could run in parallel: a Pre Norm net is effectively wider and shallower than a Post Norm one."
    ),
)

N_BLOCKS, D_MODEL, N_HEADS, SEQ = 8, 64, 2, 64
EMBED_STD = 0.02


def _model(placement: str, seed: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM(256, D_MODEL, N_BLOCKS, N_HEADS, placement=placement, norm="layer", embed_std=EMBED_STD)


def _gap_ratio(delta: list[float]) -> float:
    """Mean serial/parallel gap of the last 4 branch pairs over that of pairs 1..4 (pair 0 excluded)."""
    return sum(delta[-4:]) / sum(delta[1:5])


def init_diagnostics(seed: int, seeds: int = 3) -> dict[str, list[tuple[DepthReport, DepthReport]]]:
    """``{placement: [(block report, branch report) per seed]}`` at random init."""
    out: dict[str, list[tuple[DepthReport, DepthReport]]] = {p: [] for p in PLACEMENTS}
    for s in track(range(seed, seed + seeds), "init diagnostics"):
        batch = torch.randint(0, 256, (8, SEQ), generator=torch.Generator().manual_seed(1000 + s))
        for placement in PLACEMENTS:
            m = _model(placement, s)
            out[placement].append(
                (depth_diagnostics(m, batch, "block"), depth_diagnostics(m, batch, "branch"))
            )
    return out


@torch.no_grad()
def parallel_pair_losses(model: TinyLM, wins: torch.Tensor) -> tuple[float, list[float]]:
    """Validation loss and the loss increase ``dL_t`` when branches ``t, t+1`` run in parallel."""
    base = eval_loss(model, wins)
    return base, [eval_loss(model, wins, parallel_pair=t) - base for t in range(2 * model.n_layers - 1)]


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    init = init_diagnostics(seed)
    rows = []
    for placement, reports in init.items():
        for i, (blk, br) in enumerate(reports):
            rows.append(
                [
                    placement,
                    seed + i,
                    round(blk.slope, 3),
                    round(blk.rms_ratio, 3),
                    round(blk.rho[2], 3),
                    round(blk.rho[-1], 3),
                    round(_gap_ratio(br.delta), 3),
                ]
            )
        result.metrics[f"init_slope_{placement}"] = sum(b.slope for b, _ in reports) / len(reports)
        result.metrics[f"init_rms_ratio_{placement}"] = sum(b.rms_ratio for b, _ in reports) / len(reports)
        result.metrics[f"init_gap_ratio_{placement}"] = sum(_gap_ratio(r.delta) for _, r in reports) / len(
            reports
        )
    result.table = Table(
        [
            "placement",
            "seed",
            "slope log rho_t vs log t (t>=2)",
            "RMS(x_8)/RMS(x_2)",
            "rho_2",
            "rho_7",
            "delta late/early",
        ],
        rows,
        caption="Random init, 8 blocks, block granularity (delta: branch granularity, mean of last 4 pairs / "
        "pairs 1-4). Checks use pre and post; deepnorm and lns (LayerNorm Scaling) are informational.",
    )
    pre, post = init["pre"], init["post"]
    result.check(
        "init: Pre Norm rho_t slope < -0.45 (every seed)",
        all(b.slope < -0.45 for b, _ in pre),
        **{f"seed{seed + i}": b.slope for i, (b, _) in enumerate(pre)},
    )
    result.check(
        "init: Post Norm rho_t slope in [-0.25, 0.25] (every seed)",
        all(-0.25 <= b.slope <= 0.25 for b, _ in post),
        **{f"seed{seed + i}": b.slope for i, (b, _) in enumerate(post)},
    )
    result.check(
        "init: Pre Norm stream grows, RMS(x_8)/RMS(x_2) > 1.8 (every seed)",
        all(b.rms_ratio > 1.8 for b, _ in pre),
        **{f"seed{seed + i}": b.rms_ratio for i, (b, _) in enumerate(pre)},
    )
    post_rms = [r for b, _ in post for r in b.rms[1:]]
    result.check(
        "init: Post Norm stream RMS = 1 after every block (+-0.01)",
        all(abs(r - 1) < 0.01 for r in post_rms),
        max_dev=max(abs(r - 1) for r in post_rms),
    )
    g_pre, g_post = result.metrics["init_gap_ratio_pre"], result.metrics["init_gap_ratio_post"]
    result.check(
        "init: Pre Norm serial/parallel gap decays with depth, Post Norm's does not",
        g_pre < 0.6 and g_post > g_pre + 0.2,
        pre=g_pre,
        post=g_post,
    )

    trained: dict[str, dict] = {}
    if mode == "full":
        trained = _train_and_measure(result, seed)
    _figures(result, out, init, trained)
    return result


def _train_and_measure(result: Result, seed: int, steps: int = 400) -> dict[str, dict]:
    train, val = byte_split(1_000_000)
    wins = fixed_windows(val, 32, SEQ)
    probe = wins[:, :-1]
    trained: dict[str, dict] = {}
    for placement in ("pre", "post", "deepnorm"):
        m = _model(placement, seed)
        log = train_lm(
            m,
            train,
            steps,
            batch=16,
            seq_len=SEQ,
            lr=1e-3,
            warmup=100,
            clip=1.0,
            seed=seed,
            description=f"train {placement}",
        )
        rep = depth_diagnostics(m, probe, "branch")
        loss, dl = parallel_pair_losses(m, wins)
        half = len(dl) // 2
        bottom, top = dl[:half], dl[half:]
        trained[placement] = {"report": rep, "loss": loss, "dl": dl, "log": log}
        result.metrics[f"val_loss_{placement}"] = loss
        result.metrics[f"trained_slope_{placement}"] = rep.slope
        result.metrics[f"trained_rms_ratio_{placement}"] = rep.rms_ratio
        result.metrics[f"m4_bottom_{placement}"] = sum(bottom) / len(bottom)
        result.metrics[f"m4_top_{placement}"] = sum(top) / len(top)
    mt = result.metrics
    result.check(
        "trained: Pre slope < -0.3 and below Post's by > 0.3",
        mt["trained_slope_pre"] < -0.3 and mt["trained_slope_post"] - mt["trained_slope_pre"] > 0.3,
        pre=mt["trained_slope_pre"],
        post=mt["trained_slope_post"],
    )
    post_rms = trained["post"]["report"].rms[1:-1]
    result.check(
        "trained: Pre RMS ratio > 1.8, Post stream RMS 1 +- 0.05",
        mt["trained_rms_ratio_pre"] > 1.8 and all(abs(r - 1) <= 0.05 for r in post_rms),
        pre=mt["trained_rms_ratio_pre"],
        post_max_dev=max(abs(r - 1) for r in post_rms),
    )
    ratio = {p: mt[f"m4_top_{p}"] / max(mt[f"m4_bottom_{p}"], 1e-12) for p in ("pre", "post")}
    mt["m4_top_over_bottom_pre"], mt["m4_top_over_bottom_post"] = ratio["pre"], ratio["post"]
    result.check(
        "trained: parallelising top-half pairs is nearly free for Pre (ratio < 0.2 and < Post's)",
        ratio["pre"] < 0.2 and ratio["pre"] < ratio["post"],
        pre=ratio["pre"],
        post=ratio["post"],
    )
    result.tables.append(
        Table(
            [
                "placement",
                "validation loss",
                "rho slope (branch)",
                "RMS ratio",
                "M4 dL bottom half",
                "M4 dL top half",
            ],
            [
                [
                    p,
                    round(d["loss"], 4),
                    round(d["report"].slope, 3),
                    round(d["report"].rms_ratio, 3),
                    round(mt[f"m4_bottom_{p}"], 4),
                    round(mt[f"m4_top_{p}"], 4),
                ]
                for p, d in trained.items()
            ],
            caption=f"After {steps} steps (seed {seed}); validation loss is reported, not checked (the post's "
            "quality claim needs tuned schedules and scale).",
        )
    )
    return trained


def _figures(result: Result, out: Path, init: dict, trained: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for i, (placement, reports) in enumerate(init.items()):
        blk, br = reports[0]
        ts = range(len(blk.rho))
        axes[0].plot(list(ts)[1:], blk.rho[1:], "o-", color=f"C{i}", label=placement)
        axes[1].plot(range(len(blk.rms)), blk.rms, "o-", color=f"C{i}", label=placement)
        axes[2].plot(range(len(br.delta)), br.delta, "o-", color=f"C{i}", label=placement)
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="block t",
        ylabel="rho_t = |x_{t+1}-x_t| / |x_t|",
        title="relative update (init)",
    )
    ticks = list(range(1, len(init["pre"][0][0].rho)))
    axes[0].set_xticks(ticks, [str(t) for t in ticks])
    axes[0].minorticks_off()
    axes[1].set(xlabel="block t", ylabel="RMS(x_t)", title="stream size (init)")
    axes[2].set(xlabel="branch pair (t, t+1)", ylabel="delta_t", title="serial vs parallel gap (init)")
    axes[0].legend()
    save_figure(fig, out, "pre_post_norm_init.png", result)
    if trained:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for i, (placement, d) in enumerate(trained.items()):
            axes[0].plot(d["dl"], "o-", color=f"C{i}", label=placement)
            rep = d["report"]
            axes[1].plot(range(1, len(rep.rho)), rep.rho[1:], "o-", color=f"C{i}", label=placement)
        axes[0].set(
            xlabel="branch pair (t, t+1) run in parallel",
            ylabel="validation loss increase",
            title="M4 after training",
        )
        axes[1].set(
            xscale="log", yscale="log", xlabel="branch t", ylabel="rho_t", title="relative update (trained)"
        )
        axes[0].legend()
        save_figure(fig, out, "pre_post_norm_trained.png", result)
