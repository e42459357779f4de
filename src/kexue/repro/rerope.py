"""ReRoPE, Leaky ReRoPE and InvLeaky ReRoPE: rectified relative positions for length extrapolation.

Posts: "Transformer升级之路：12、无限外推的ReRoPE？" (2023-08-07, kexue.fm/archives/9708) and
"13、逆用Leaky ReRoPE" (2023-08-14, kexue.fm/archives/9728). A RoPE model trained at length L is run at
L..8L with relative positions clipped at w = L/4 (ReRoPE) or compressed by k beyond w (Leaky), against
direct extrapolation and the frequency-scaling methods; in full mode an InvLeaky model (trained with
Leaky ReRoPE k = 1/16, run with plain RoPE) is added.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kexue.nn.rope import apply_rope, rectified_rope_logits, rerope_logits, rope_inv_freq
from kexue.repro import _lengthext as lx
from kexue.repro.base import Claim, Result, check_mode
from kexue.repro.catalog import BY_SLUG

_POST = BY_SLUG["rerope"]
CLAIM = Claim(
    slug=_POST.slug,
    title=_POST.title,
    title_zh=_POST.title_zh,
    url=_POST.url,
    date=_POST.date,
    claim=(
        "Clipping (ReRoPE) or compressing (Leaky ReRoPE) relative positions beyond a window lets a RoPE model "
        "run far beyond its training length with flat loss and no fine-tuning, better than NTK-style scaling."
    ),
)

VARIANTS = (
    "direct",
    "rerope",
    "rerope-half",
    "leaky",
    "rerope-dagger",
    "ntk",
    "ntk-old",
    "ntk-fixed",
    "pi",
    "yarn",
)


def _invariants(result: Result) -> None:
    g = torch.Generator().manual_seed(0)
    inv = rope_inv_freq(16, 10000.0, torch.float64)
    q = torch.randn(120, 16, dtype=torch.float64, generator=g)
    k = torch.randn(120, 16, dtype=torch.float64, generator=g)
    worst = 0.0
    for w, leaky in ((1, None), (7, None), (64, None), (7, 4.0)):
        two = rerope_logits(q, k, inv, w, leaky)
        brute = rectified_rope_logits(q, k, inv, w, leaky)
        worst = max(worst, float((two - brute).abs().max()))
    result.check("two-pass prefill equals the re-rotated-key form", worst < 1e-10, max_abs_diff=worst)
    pos = torch.arange(120)
    plain = apply_rope(q, pos, inv) @ apply_rope(k, pos, inv).T
    gap_w = float((rerope_logits(q, k, inv, 120) - plain).abs().max())
    gap_k1 = float((rerope_logits(q, k, inv, 7, 1.0) - plain).abs().max())
    result.check(
        "ReRoPE with w >= T and Leaky with k = 1 reduce to RoPE",
        max(gap_w, gap_k1) < 1e-10,
        window_ge_T=gap_w,
        leaky_k1=gap_k1,
    )


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    _invariants(result)
    s = lx.SETTINGS[mode]
    w = s.train_length // 4

    def loss(v: str, mult: int, model: str = "rope", tail: bool = False) -> float:
        return lx.loss_at(mode, seed, model, v, mult, tail)

    same = torch.equal(
        lx.logits(mode, seed, "rope", None, w), lx.logits(mode, seed, "rope", lx.variant("rerope")(w, s), w)
    )
    result.check("for T <= w the ReRoPE model logits equal RoPE's bit for bit", same)
    result.check(
        "ReRoPE (w = L/4) beats direct extrapolation at 4L",
        loss("rerope", 4) < loss("direct", 4),
        rerope_4L=loss("rerope", 4),
        direct_4L=loss("direct", 4),
    )
    rows = [("rope", v) for v in VARIANTS]
    if mode == "full":
        base = loss("rerope", 1)
        result.check_le("ReRoPE loss at 2L <= its T = L loss + 0.02", loss("rerope", 2), base + 0.02)
        result.check_le("ReRoPE loss at 4L <= its T = L loss + 0.02", loss("rerope", 4), base + 0.02)
        for m in (4, 8):
            others = min(loss(v, m) for v in ("ntk", "ntk-old", "ntk-fixed", "pi", "yarn"))
            result.check(
                f"ReRoPE beats every NTK / PI / YaRN variant at {m}L",
                loss("rerope", m) < others,
                rerope=loss("rerope", m),
                best_other=others,
            )
        result.check_ge(
            "ReRoPE beats direct by > 0.15 nats at 4L", loss("direct", 4) - loss("rerope", 4), 0.15
        )
        tail1 = loss("rerope", 1, tail=True)
        result.check_le("same-target tail loss at 2L <= at T = L", loss("rerope", 2, tail=True), tail1)
        result.check_le(
            "same-target tail loss at 4L <= at T = L + 0.02", loss("rerope", 4, tail=True), tail1 + 0.02
        )
        result.check_le(
            "Leaky ReRoPE within 0.03 of ReRoPE at 4L", abs(loss("leaky", 4) - loss("rerope", 4)), 0.03
        )
        inv4 = loss("plain", 4, "invleaky")
        result.check(
            "InvLeaky (plain RoPE inference) at 4L: better than direct - 0.1, worse than ReRoPE",
            loss("rerope", 4) < inv4 < loss("direct", 4) - 0.1,
            invleaky_4L=inv4,
            rerope_4L=loss("rerope", 4),
            direct_4L=loss("direct", 4),
        )
        result.check_le(
            "InvLeaky in-length loss within 0.03 of the RoPE model",
            abs(loss("plain", 1, "invleaky") - loss("direct", 1)),
            0.03,
        )
        rows.append(("invleaky", "plain"))
    lx.finish(
        result, out, mode, seed, rows, "rerope.png", "RoPE model: rectified positions vs frequency scaling"
    )
    return result
