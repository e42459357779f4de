"""Norm placement, depth diagnostics, tied output embeddings and the tiny LM."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.blocks import (
    PLACEMENTS,
    OutputHead,
    ResidualBranch,
    TinyLM,
    TransformerBlock,
    _loglog_slope,
    deepnorm_constants,
    depth_diagnostics,
    half_swap,
    make_norm,
    tied_init_std,
    tied_initial_loss,
)
from kexue.nn.kv_attention import AttentionConfig

F64 = torch.float64


def _idx(b: int = 2, t: int = 12, seed: int = 0, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


def _lm(placement="pre", seed=0, **kw) -> TinyLM:
    torch.manual_seed(seed)
    kw.setdefault("embed_std", 0.5)
    return TinyLM(50, 16, 3, 2, placement=placement, **kw).double()


def _zero_branches(model: TinyLM) -> None:
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn.fn.w_o.weight.zero_()
            blk.mlp.fn.fc2.weight.zero_()
            blk.mlp.fn.fc2.bias.zero_()


# --- norm placement -----------------------------------------------------------------------------


def test_pre_norm_with_zero_branches_is_identity_on_the_stream():
    m = _lm("pre")
    _zero_branches(m)
    xs = m.residual_stream(_idx())
    for x in xs[1:]:
        torch.testing.assert_close(x, xs[0], atol=0, rtol=0)


def test_post_norm_with_zero_branches_is_repeated_idempotent_norm():
    m = _lm("post")
    _zero_branches(m)
    xs = m.residual_stream(_idx())
    norm = make_norm("layer", 16).double()
    torch.testing.assert_close(xs[1], norm(xs[0]), atol=1e-12, rtol=0)
    for t, br in enumerate(m.branches):
        torch.testing.assert_close(xs[t + 1], br.norm(xs[t]), atol=1e-12, rtol=0)
    # idempotent up to LayerNorm's eps (x / sqrt(1 + eps) per application)
    for x in xs[2:]:
        torch.testing.assert_close(x, xs[1], atol=0, rtol=1e-4)


@pytest.mark.parametrize("placement", ["post", "deepnorm"])
def test_post_norm_stream_rms_is_one_after_every_branch(placement):
    xs = _lm(placement).residual_stream(_idx())
    for x in xs[1:]:
        rms = x.pow(2).mean(-1).sqrt()  # sqrt(var / (var + eps)) with LayerNorm's eps = 1e-5
        torch.testing.assert_close(rms, torch.ones_like(rms), atol=1e-4, rtol=0)


def test_branch_formulas():
    torch.manual_seed(0)
    f = nn.Linear(8, 8).double()
    x = torch.randn(3, 8, dtype=F64)
    for placement in PLACEMENTS:
        br = ResidualBranch(f, 8, placement, "rms", alpha=1.7, index=4).double()
        n = br.norm
        want = {
            "pre": x + f(n(x)),
            "post": n(x + f(x)),
            "deepnorm": n(1.7 * x + f(x)),
            "lns": x + f(n(x) / 2.0),
        }[placement]
        torch.testing.assert_close(br(x), want, atol=1e-14, rtol=0)


def test_deepnorm_constants_and_init_scale():
    alpha, beta = deepnorm_constants(8)
    assert alpha == pytest.approx(16**0.25) and beta == pytest.approx(64**-0.25)
    torch.manual_seed(0)
    blk = TransformerBlock(64, 2, "deepnorm", n_layers=8)
    assert blk.attn.alpha == pytest.approx(alpha)
    # Xavier-normal std = gain * sqrt(2 / (fan_in + fan_out)); value/output get gain beta, query/key gain 1
    std_v = blk.attn.fn.w_v.weight.std().item()
    std_q = blk.attn.fn.w_q.weight.std().item()
    assert std_v == pytest.approx(beta * math.sqrt(2 / 128), rel=0.1)
    assert std_q == pytest.approx(math.sqrt(2 / 128), rel=0.1)


def test_parallel_pair_with_zero_second_branch_equals_serial():
    for placement in ("pre", "post"):
        m = _lm(placement)
        idx = _idx()
        with torch.no_grad():
            m.blocks[1].attn.fn.w_o.weight.zero_()  # branch 2 = attention of block 1
        torch.testing.assert_close(m(idx, parallel_pair=1), m(idx), atol=1e-12, rtol=0)
        assert (m(idx, parallel_pair=0) - m(idx)).abs().max() > 1e-6


def test_parallel_pair_pre_norm_formula():
    m = _lm("pre")
    idx = _idx()
    br = m.branches
    x0 = m.embed(idx)
    x2 = x0 + br[0].branch(br[0].norm(x0)) + br[1].branch(br[1].norm(x0))
    x = x2
    for b in br[2:]:
        x = b(x)
    torch.testing.assert_close(m(idx, parallel_pair=0), m.head(m.final_norm(x)), atol=1e-12, rtol=0)


# --- diagnostics ----------------------------------------------------------------------------------


def test_loglog_slope_of_exact_power_law():
    assert _loglog_slope([5.0 / max(t, 1) for t in range(10)]) == pytest.approx(-1.0, abs=1e-12)
    assert _loglog_slope([3.0] * 6) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least"):
        _loglog_slope([1.0, 2.0, 3.0])


def test_depth_diagnostics_match_manual_computation_and_are_deterministic():
    m = _lm("pre")
    idx = _idx()
    rep = depth_diagnostics(m, idx, "branch")
    with torch.no_grad():
        xs = m.residual_stream(idx)
        b = m.branches[3]
        s, p = b.branch(b.branch_input(xs[3])), b.branch(b.branch_input(xs[2]))
    assert len(rep.rho) == 6 and len(rep.delta) == 5 and len(rep.rms) == 7
    assert rep.rho[3] == pytest.approx(float((xs[4] - xs[3]).norm() / xs[3].norm()), rel=1e-12)
    assert rep.rms[5] == pytest.approx(float(xs[5].pow(2).mean().sqrt()), rel=1e-12)
    assert rep.delta[2] == pytest.approx(float((s - p).norm() / s.norm()), rel=1e-12)
    assert rep == depth_diagnostics(m, idx, "branch")
    blk = depth_diagnostics(m, idx, "block")
    assert len(blk.rho) == 3 and blk.delta == [] and math.isnan(blk.slope)
    assert blk.rms_ratio == pytest.approx(blk.rms[-1] / blk.rms[2])


def test_pre_norm_relative_update_decays_and_post_does_not_at_init():
    slopes = {}
    idx = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    for placement in ("pre", "post"):
        torch.manual_seed(0)
        m = TinyLM(256, 32, 8, 2, placement=placement, embed_std=0.02)
        slopes[placement] = depth_diagnostics(m, idx, "block").slope
    assert slopes["pre"] < -0.4 < -0.25 < slopes["post"] < 0.25


# --- tied embeddings --------------------------------------------------------------------------------


def test_tied_head_shares_the_embedding_parameter_and_gradients_accumulate():
    m = _lm("pre", output="tied")
    assert m.head.weight is m.embed.weight
    assert _lm("pre", output="untied").head.weight is not _lm("pre", output="untied").embed.weight
    idx = _idx()
    targets = _idx(seed=1)
    # gradient of the shared table = input-side part + output-side part
    m.zero_grad()
    F.cross_entropy(m(idx).flatten(0, 1), targets.flatten()).backward()
    total = m.embed.weight.grad.clone()
    w = m.embed.weight
    parts = []
    for side in ("input", "output"):
        m.zero_grad()
        w_in = w if side == "input" else w.detach()
        w_out = w if side == "output" else w.detach()
        x = F.embedding(idx, w_in)
        for b in m.branches:
            x = b(x)
        logits = m.final_norm(x) @ w_out.T
        F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
        parts.append(w.grad.clone())
    torch.testing.assert_close(total, parts[0] + parts[1], atol=1e-12, rtol=1e-10)
    assert parts[0].abs().sum() > 0 and parts[1].abs().sum() > 0


def test_half_swap_is_a_norm_preserving_involution():
    h = torch.randn(3, 5, 8, dtype=F64)
    torch.testing.assert_close(half_swap(half_swap(h)), h, atol=0, rtol=0)
    torch.testing.assert_close(half_swap(h).norm(dim=-1), h.norm(dim=-1), atol=1e-12, rtol=0)
    assert torch.equal(half_swap(torch.arange(4.0)), torch.tensor([2.0, 3.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="even last dimension"):
        half_swap(torch.randn(2, 7))
    with pytest.raises(ValueError, match="even d_model"):
        OutputHead(nn.Embedding(10, 7), "swap")


def test_orthogonal_projection_init():
    torch.manual_seed(0)
    head = OutputHead(nn.Embedding(10, 32), "proj")
    p = head.proj.weight
    torch.testing.assert_close(p @ p.T, torch.eye(32), atol=1e-6, rtol=0)


def test_tied_init_std_makes_self_logit_equal_log_n():
    for n, d in ((256, 128), (5000, 64), (32000, 4096)):
        assert math.exp(d * tied_init_std(n, d)) == pytest.approx(n, rel=1e-12)
    assert tied_initial_loss(128, tied_init_std(256, 128), 256) == pytest.approx(math.log(511), rel=1e-12)


@pytest.mark.parametrize(
    "d,n,dsigma", [(64, 100, 2.0), (128, 1000, 8.0), (256, 10000, 20.0), (200, 3000, 12.0)]
)
def test_closed_form_initial_loss_matches_monte_carlo(d, n, dsigma):
    sigma = dsigma / d
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(n, d, generator=gen) * sigma
    i = torch.randint(0, n, (2000,), generator=gen)
    j = (i + torch.randint(1, n, (2000,), generator=gen)) % n
    h = w[i] / w[i].pow(2).mean(-1, keepdim=True).sqrt()
    mc = float(F.cross_entropy(h @ w.T, j))
    assert abs(mc - tied_initial_loss(d, sigma, n)) < 0.15


def test_zero_init_tied_model_is_norm_of_embedding_times_table():
    torch.manual_seed(0)
    for output in ("tied", "untied", "swap"):
        m = TinyLM(50, 16, 2, 2, norm="rms", output=output, embed_std=0.25, zero_init_branches=True).double()
        idx = _idx()
        h = m.final_norm(m.embed(idx))
        if output == "swap":
            h = half_swap(h)
        torch.testing.assert_close(m(idx), h @ m.head.weight.T, atol=0, rtol=0)


# --- the tiny LM ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attention,kw",
    [
        (None, {}),
        (AttentionConfig("gqa", 16, 4, n_kv_heads=2), {}),
        (AttentionConfig("mla", 16, 2, 8, kv_rank=8, rope_dim=4), {}),
        (AttentionConfig("mla", 16, 2, 8, kv_rank=8, rope_dim=4), {"impl": "naive"}),
    ],
)
def test_tiny_lm_cached_decoding_equals_full_forward(attention, kw):
    torch.manual_seed(0)
    m = TinyLM(50, 16, 2, 2 if attention is None else attention.n_heads, attention=attention).double().eval()
    for blk in m.blocks:
        if "impl" in kw:
            blk.attn.fn.impl = kw["impl"]
    idx = _idx(2, 9)
    full = m(idx)
    caches = m.new_caches(2)
    outs = [m(idx[:, :4], caches)] + [m(idx[:, t : t + 1], caches) for t in range(4, 9)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("output", ["untied", "tied", "proj"])
def test_tiny_lm_gradients_reach_every_parameter(placement, output):
    m = _lm(placement, output=output)
    F.cross_entropy(m(_idx()).flatten(0, 1), _idx(seed=3).flatten()).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="placement must be one of"):
        TinyLM(50, 16, 2, 2, placement="sandwich")
    with pytest.raises(ValueError, match="norm must be one of"):
        TinyLM(50, 16, 2, 2, norm="batch")
    with pytest.raises(ValueError, match="output must be one of"):
        TinyLM(50, 16, 2, 2, output="shared")
    with pytest.raises(ValueError, match="embed_std must be > 0"):
        TinyLM(50, 16, 2, 2, embed_std=0.0)
    with pytest.raises(ValueError, match="d_model=32, the block has d_model=16"):
        TransformerBlock(16, 2, attention=AttentionConfig("mha", 32, 2))
    m = _lm()
    with pytest.raises(ValueError, match="token ids must be in"):
        m(torch.full((1, 3), 50))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        m(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="token ids"):
        m(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="parallel_pair must be in"):
        m(_idx(), parallel_pair=5)
    with pytest.raises(ValueError, match="one cache per block"):
        m(_idx(), m.new_caches(2)[:1])
    with pytest.raises(ValueError, match="granularity must be one of"):
        depth_diagnostics(m, _idx(), "layer")
    with pytest.raises(ValueError, match="sigma must be > 0"):
        tied_initial_loss(64, 0.0, 100)
    with pytest.raises(ValueError, match="repeat_fraction"):
        tied_initial_loss(64, 0.1, 100, repeat_fraction=1.5)
