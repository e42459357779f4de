"""Key normalisation (KeyNorm / KNA) helps length extrapolation.

Post: "Transformer升级之路：15、Key归一化助力长度外推" (2023-11-20, kexue.fm/archives/9859). A RoPE model with
scores ``q_i . k_j / |k_j|`` (no 1/sqrt(d)) is compared with the standard-scaled RoPE baseline at L..8L,
with and without inference-time tricks on top (NTK, YaRN, ReRoPE). Full mode adds QNA (query-normalised),
cosine attention with lambda = alpha*(L/2, head dim) from the attention-scale computation, and NoPE
models with and without KeyNorm (report only).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from kexue.nn.rope import apply_rotary, rope_cos_sin, rope_inv_freq
from kexue.repro import _lengthext as lx
from kexue.repro.base import Claim, Result, check_mode
from kexue.repro.catalog import BY_SLUG

_POST = BY_SLUG["keynorm"]
CLAIM = Claim(
    slug=_POST.slug,
    title=_POST.title,
    title_zh=_POST.title_zh,
    url=_POST.url,
    date=_POST.date,
    claim=(
        "L2-normalising the keys (and dropping 1/sqrt(d)) makes a RoPE model extrapolate far better beyond its "
        "training length with no inference-time change, at no in-length cost."
    ),
)

KNA_VARIANTS = ("direct", "ntk", "ntk-old", "ntk-fixed", "yarn", "rerope", "pi")


def _invariants(result: Result) -> None:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 12, 16, dtype=torch.float64, generator=g)
    k = torch.randn(2, 12, 16, dtype=torch.float64, generator=g)
    scale = torch.rand(2, 12, 1, dtype=torch.float64, generator=g) * 5 + 0.1
    s1 = q @ F.normalize(k, dim=-1).mT
    s2 = q @ F.normalize(k * scale, dim=-1).mT
    cs = rope_cos_sin(torch.arange(12), rope_inv_freq(16, 10000.0, torch.float64), torch.float64)
    commute = float(
        (apply_rotary(F.normalize(k, dim=-1), *cs) - F.normalize(apply_rotary(k, *cs), dim=-1)).abs().max()
    )
    bounded = bool((s1.abs() <= q.norm(dim=-1, keepdim=True) + 1e-12).all())
    result.check(
        "KNA scores ignore key scale, commute with RoPE and are bounded by |q|",
        float((s1 - s2).abs().max()) < 1e-12 and commute < 1e-12 and bounded,
        scale_gap=float((s1 - s2).abs().max()),
        commute_gap=commute,
    )


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    _invariants(result)

    def loss(model: str, v: str, mult: int) -> float:
        return lx.loss_at(mode, seed, model, v, mult)

    result.check(
        "KNA loss at 4L is below the RoPE baseline's",
        loss("kna", "direct", 4) < loss("rope", "direct", 4),
        kna_4L=loss("kna", "direct", 4),
        rope_4L=loss("rope", "direct", 4),
    )
    rows = [("rope", "direct")] + [("kna", v) for v in KNA_VARIANTS]
    if mode == "full":
        result.check_le(
            "KNA in-length loss <= baseline + 0.01",
            loss("kna", "direct", 1),
            loss("rope", "direct", 1) + 0.01,
        )
        for m in (4, 8):
            result.check_ge(
                f"KNA beats the baseline by > 0.08 at {m}L",
                loss("rope", "direct", m) - loss("kna", "direct", m),
                0.08,
            )
        gain = max(
            loss("kna", "direct", m) - loss("kna", v, m)
            for v in ("ntk", "ntk-old", "ntk-fixed")
            for m in (4, 8)
        )
        result.check_le(
            "NTK (old / bloc97 / fixed) on top of KNA does not improve it at 4L or 8L (within 0.005)",
            gain,
            0.005,
        )
        for name in ("qna", "cosa", "nope", "kna-nope"):
            rows.append((name, "direct"))
        result.metrics["QNA minus baseline at 4L (report only; post: no gain)"] = loss(
            "qna", "direct", 4
        ) - loss("rope", "direct", 4)
        result.metrics["KNA-NoPE minus NoPE at 4L (report only; post: no gain)"] = loss(
            "kna-nope", "direct", 4
        ) - loss("nope", "direct", 4)
        result.metrics["CosA minus KNA at 4L (report only; post: similar)"] = loss(
            "cosa", "direct", 4
        ) - loss("kna", "direct", 4)
    lx.finish(result, out, mode, seed, rows, "keynorm.png", "KeyNorm (KNA) versus the RoPE baseline")
    return result
