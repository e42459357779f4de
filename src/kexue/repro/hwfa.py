"""Hybrid Window-Full Attention (HWFA) and HWFA + ReRoPE (HWFA2).

Posts: "Transformer升级之路：9、一种全局长度外推的新思路" (2023-05-12, kexue.fm/archives/9603) and
"14、当HWFA遇见ReRoPE" (2023-08-24, kexue.fm/archives/9731). HWFA: window-attention RoPE layers whose
stacked receptive field stays inside 3/4 of the training length, then one full NoPE layer with the
log-n scale. HWFA2 (full mode): larger windows and a full RoPE layer in the middle, switched to ReRoPE
at inference. Both are compared with an all-full-attention RoPE baseline at L..8L.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kexue.nn.attention import AttentionConfig, window_mask
from kexue.nn.transformer import TransformerConfig, TransformerLM, hwfa_window
from kexue.repro import _lengthext as lx
from kexue.repro.base import Claim, Result, check_mode
from kexue.repro.catalog import BY_SLUG

_POST = BY_SLUG["hwfa"]
CLAIM = Claim(
    slug=_POST.slug,
    title=_POST.title,
    title_zh=_POST.title_zh,
    url=_POST.url,
    date=_POST.date,
    claim=(
        "Window-attention layers topped by one full NoPE layer with a log-n scale (HWFA) keep the loss flat far "
        "beyond the training length, at a small in-length cost; HWFA + ReRoPE keeps that with full RoPE layers."
    ),
)


def _invariants(result: Result) -> None:
    pos = torch.arange(20)
    counts = window_mask(pos, pos, 6).sum(-1).tolist()
    result.check("window mask: row i has min(i + 1, w) keys", counts == [min(i + 1, 6) for i in range(20)])
    w, n_layers, t = 3, 3, 16
    cfg = TransformerConfig(
        17, 16, n_layers, 2, 2, layers=tuple(AttentionConfig(window=w) for _ in range(n_layers))
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TransformerLM(cfg).double()
    emb = model.embed(torch.arange(t)[None] % 17).detach().requires_grad_()
    x = emb
    for block in model.blocks:
        x = block(x, pos[:t], None, None)
    x[0, t - 1].sum().backward()
    reach = [j for j in range(t) if float(emb.grad[0, j].abs().sum()) > 0]
    field = (t - 1) - reach[0] + 1
    result.check(
        "receptive field of a window stack (by gradient) is (w - 1) l + 1",
        field == (w - 1) * n_layers + 1,
        measured=field,
        formula=(w - 1) * n_layers + 1,
    )
    s = lx.SETTINGS["full"]
    wf = hwfa_window(s.n_layers, s.train_length)
    result.metrics["HWFA window for the full-mode model"] = wf


def run(mode: str, seed: int, out: Path) -> Result:
    mode = check_mode(mode)
    out = Path(out)
    result = Result()
    _invariants(result)

    def loss(model: str, v: str, mult: int) -> float:
        return lx.loss_at(mode, seed, model, v, mult)

    result.check_le(
        "HWFA loss at 4L is not more than 0.1 above its T = L loss",
        loss("hwfa", "direct", 4),
        loss("hwfa", "direct", 1) + 0.1,
    )
    result.check(
        "HWFA beats the full-attention RoPE baseline at 8L",
        loss("hwfa", "direct", 8) < loss("rope", "direct", 8),
        hwfa_8L=loss("hwfa", "direct", 8),
        rope_8L=loss("rope", "direct", 8),
    )
    rows = [("rope", "direct"), ("hwfa", "direct")]
    if mode == "full":
        h1 = loss("hwfa", "direct", 1)
        # "no degradation": one-sided (the loss over all positions may fall with more context)
        drift = max(loss("hwfa", "direct", m) - h1 for m in (4, 8))
        degrade = loss("rope", "direct", 4) - loss("rope", "direct", 1)
        result.check(
            "HWFA at most 0.05 above its T = L loss at 4L and 8L while the baseline degrades by > 0.15 at 4L",
            drift <= 0.05 and degrade > 0.15,
            hwfa_drift=drift,
            baseline_degradation=degrade,
        )
        result.check_ge(
            "HWFA beats the baseline by > 0.2 nats at 8L",
            loss("rope", "direct", 8) - loss("hwfa", "direct", 8),
            0.2,
        )
        result.check_le(
            "HWFA in-length loss within 0.1 of the baseline", abs(h1 - loss("rope", "direct", 1)), 0.1
        )
        h2 = loss("hwfa2", "direct", 1)
        drift2 = max(loss("hwfa2", "rerope", m) - h2 for m in (4, 8))
        result.check_le("HWFA2 + ReRoPE at most 0.05 above its T = L loss at 4L and 8L", drift2, 0.05)
        result.check_le(
            "HWFA2: ReRoPE not worse than direct at 8L",
            loss("hwfa2", "rerope", 8),
            loss("hwfa2", "direct", 8),
        )
        result.metrics["in-length loss HWFA2 - baseline (report only)"] = h2 - loss("rope", "direct", 1)
        rows += [("hwfa2", "direct"), ("hwfa2", "rerope")]
    lx.finish(result, out, mode, seed, rows, "hwfa.png", "HWFA versus a full-attention RoPE baseline")
    return result
