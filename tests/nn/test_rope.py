import math

import pytest
import torch

from kexue.nn.rope import (
    ROPE_SCALINGS,
    RopeScaling,
    apply_rope,
    apply_rotary,
    dynamic_ntk_inv_freq,
    leaky_rerope_factor,
    linear_inv_freq,
    llama3_inv_freq,
    ntk_inv_freq,
    ntk_mixed_inv_freq,
    ntk_mixed_lambdas,
    rectified_max_position,
    rectified_relative_positions,
    rectified_rope_logits,
    rerope_logits,
    rope_cos_sin,
    rope_inv_freq,
    yarn_attention_factor,
    yarn_inv_freq,
)

D, B = 32, 10000.0


def _rng(seed=0):
    return torch.Generator().manual_seed(seed)


def _all_variants(k, d=D, original=64):
    return {
        kind: RopeScaling(kind, k, original_length=original).inv_freq(d, B, seq_len=int(k * original))
        for kind in ROPE_SCALINGS
    }


# --- frequencies ----------------------------------------------------------------------------


def test_existing_api_is_unchanged():
    inv = rope_inv_freq(8, 100.0)
    assert inv.dtype == torch.float32
    assert torch.allclose(inv, torch.tensor([100.0 ** (-i / 4) for i in range(4)]))
    x = torch.randn(3, 5, 8, generator=_rng())
    y = apply_rope(x, torch.arange(5), inv)
    assert y.shape == x.shape
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # rotations keep norms


@pytest.mark.parametrize("kind", ROPE_SCALINGS)
def test_every_variant_is_relative(kind):
    inv = RopeScaling(kind, 4.0, original_length=16).inv_freq(D, B, seq_len=64)
    g = _rng(1)
    q, k = torch.randn(D, dtype=torch.float64, generator=g), torch.randn(D, dtype=torch.float64, generator=g)

    def dot(m, n):
        cq = rope_cos_sin(torch.tensor([float(m)]), inv, torch.float64)
        ck = rope_cos_sin(torch.tensor([float(n)]), inv, torch.float64)
        return float((apply_rotary(q, *cq) * apply_rotary(k, *ck)).sum())

    for m, n in [(7, 3), (40, 2), (100, 90)]:
        for shift in (1, 17, 1000):
            assert dot(m, n) == pytest.approx(dot(m + shift, n + shift), abs=1e-9)


def test_factor_one_reproduces_plain_rope_for_every_variant():
    plain = rope_inv_freq(D, B, torch.float64)
    for kind, inv in _all_variants(1.0).items():
        assert torch.allclose(inv, plain, rtol=1e-13, atol=0), kind
    # dynamic below the training length is plain RoPE as well
    assert torch.equal(RopeScaling("dynamic", 4.0, 64).inv_freq(D, B, seq_len=50), plain)


def test_ntk_formulas():
    k, i = 8.0, torch.arange(0, D, 2, dtype=torch.float64)
    plain = B ** (-i / D)
    assert torch.allclose(ntk_inv_freq(D, B, k, "old"), (B * k) ** (-i / D), rtol=1e-13)
    bloc = ntk_inv_freq(D, B, k, "bloc97")
    assert torch.allclose(bloc, (B * k ** (D / (D - 2))) ** (-i / D), rtol=1e-13)
    assert bloc[0] == plain[0]  # highest frequency unchanged
    assert float(bloc[-1]) == pytest.approx(float(plain[-1]) / k, rel=1e-13)  # lowest exactly interpolated
    fixed = ntk_inv_freq(D, B, k, "fixed")
    assert torch.allclose(fixed, (B * k) ** (-i / D) / k ** (2 / D), rtol=1e-13)
    # NTK-old differs from bloc97 only by k^(2/d) versus k^(2/(d-2)) per digit
    m = torch.arange(D // 2, dtype=torch.float64)
    assert torch.allclose(plain / ntk_inv_freq(D, B, k, "old"), k ** (2 * m / D), rtol=1e-12)
    assert torch.allclose(plain / bloc, k ** (2 * m / (D - 2)), rtol=1e-12)
    assert torch.allclose(linear_inv_freq(D, B, k), plain / k, rtol=1e-13)


def test_ntk_mixed_endpoints_and_lambdas():
    k = 12.0
    assert torch.allclose(
        ntk_mixed_inv_freq(D, B, k, 1.0), ntk_inv_freq(D, B, k, "fixed"), rtol=1e-12, atol=0
    )
    assert torch.allclose(ntk_mixed_inv_freq(D, B, k, 0.0), linear_inv_freq(D, B, k), rtol=1e-12, atol=0)
    # digits start at m = 1: even the highest frequency is divided by exp(a) > 1
    assert ntk_mixed_inv_freq(D, B, k, 0.625)[0] < 1.0
    for b in (0.0, 0.25, 0.625, 1.0):
        lam = ntk_mixed_lambdas(D, k, b)
        assert float(lam.prod()) == pytest.approx(k, rel=1e-12)
        assert (lam >= 1 - 1e-12).all() and (lam[1:] <= lam[:-1] + 1e-12).all()


def test_frequencies_strictly_decreasing_and_positive():
    for kind, inv in _all_variants(8.0).items():
        assert (inv > 0).all(), kind
        assert (inv[1:] < inv[:-1]).all(), kind


def test_dynamic_with_unit_factor_equals_bloc97():
    for k in (2.0, 4.0, 8.0):
        dyn = dynamic_ntk_inv_freq(D, B, 1.0, int(k * 64), 64)
        assert torch.allclose(dyn, ntk_inv_freq(D, B, k, "bloc97"), rtol=1e-12)
    # factor f: base * (f T / L - (f - 1))^(d/(d-2))
    f, t, L = 2.0, 300, 64
    expect = rope_inv_freq(D, B * (f * t / L - (f - 1)) ** (D / (D - 2)), torch.float64)
    assert torch.allclose(dynamic_ntk_inv_freq(D, B, f, t, L), expect, rtol=1e-13)


# Transcriptions of the formulas documented in transformers' modeling_rope_utils (float32, as there).
def _hf_yarn(dim, base, factor, original, beta_fast=32, beta_slow=1):
    def corr(rot):
        return dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), dim - 1)
    high = high + 0.001 if low == high else high
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos = base ** (torch.arange(0, dim, 2).float() / dim)
    extra = 1 - ramp
    return (1 / (factor * pos)) * (1 - extra) + (1 / pos) * extra, 0.1 * math.log(factor) + 1


def _hf_llama3(dim, base, factor, original, low_ff=1.0, high_ff=4.0):
    inv = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
    wl = 2 * math.pi / inv
    out = torch.where(wl > original / low_ff, inv / factor, inv)
    smooth = (original / wl - low_ff) / (high_ff - low_ff)
    mixed = (1 - smooth) * out / factor + smooth * out
    med = ~(wl < original / high_ff) * ~(wl > original / low_ff)
    return torch.where(med, mixed, out)


@pytest.mark.parametrize(
    "dim,base,factor,original", [(32, 1e4, 8.0, 64), (128, 5e5, 4.0, 4096), (64, 1e4, 2.5, 512)]
)
def test_yarn_and_llama3_match_the_transformers_formulas(dim, base, factor, original):
    ref, att = _hf_yarn(dim, base, factor, original)
    assert torch.allclose(yarn_inv_freq(dim, base, factor, original).float(), ref, rtol=2e-6, atol=0)
    assert yarn_attention_factor(factor) == pytest.approx(att, rel=1e-15)
    assert RopeScaling("yarn", factor, original).logit_scale == pytest.approx(att**2)
    ref3 = _hf_llama3(dim, base, factor, original)
    assert torch.allclose(llama3_inv_freq(dim, base, factor, original).float(), ref3, rtol=2e-6, atol=0)


def test_from_hf_and_errors():
    s = RopeScaling.from_hf({"type": "yarn", "factor": 4.0, "beta_fast": 16}, max_position_embeddings=128)
    assert (s.kind, s.factor, s.original_length, s.beta_fast) == ("yarn", 4.0, 128, 16)
    with pytest.raises(ValueError, match="unsupported rope_type"):
        RopeScaling.from_hf({"rope_type": "longrope"})
    with pytest.raises(ValueError, match=">= 1"):
        RopeScaling("ntk", 0.5)
    with pytest.raises(ValueError, match="even int"):
        ntk_inv_freq(31, B, 2.0)
    with pytest.raises(ValueError, match="base must be"):
        linear_inv_freq(32, -5.0, 2.0)
    with pytest.raises(ValueError, match=r"b_mix must be in \[0, 1\]"):
        ntk_mixed_inv_freq(32, B, 2.0, 1.5)
    with pytest.raises(ValueError, match="unknown RoPE scaling"):
        RopeScaling("xpos")
    with pytest.raises(ValueError, match="needs original_length"):
        RopeScaling("yarn", 2.0)
    with pytest.raises(ValueError, match="covers 128 positions"):
        RopeScaling("linear", 2.0, 64).check_length(200)
    RopeScaling("linear", 2.0, 64).check_length(128)


# --- ReRoPE ---------------------------------------------------------------------------------


def _brute_logits(q, k, inv, window, leaky):
    """q_i . R^{-p_ij} k_j with p_ij computed entry by entry in Python, rotation via apply_rope."""
    tq, tk = q.shape[-2], k.shape[-2]
    rows = []
    for i in range(tq):
        row = []
        for j in range(tk):
            r = i + (tk - tq) - j
            row.append(r if r < window else (window if leaky is None else window + (r - window) / leaky))
        rows.append(row)
    p = torch.tensor(rows, dtype=torch.float64)
    rot = apply_rope(k.unsqueeze(-3).expand(*k.shape[:-2], tq, tk, k.shape[-1]), -p, inv)
    return (q.unsqueeze(-2) * rot).sum(-1)


@pytest.mark.parametrize(
    "window,leaky,t", [(1, None, 40), (7, None, 300), (64, None, 120), (7, 3.0, 150), (16, 0.25, 80)]
)
def test_two_pass_equals_brute_force(window, leaky, t):
    g = _rng(window)
    inv = rope_inv_freq(16, B, torch.float64)
    q = torch.randn(2, t, 16, dtype=torch.float64, generator=g)
    k = torch.randn(2, t, 16, dtype=torch.float64, generator=g)
    ref = _brute_logits(q, k, inv, window, leaky)
    two = rerope_logits(q, k, inv, window, leaky)
    direct = rectified_rope_logits(q, k, inv, window, leaky)
    assert torch.allclose(two, ref, atol=1e-10, rtol=0)
    assert torch.allclose(direct, ref, atol=1e-10, rtol=0)


def _rope_logits(q, k, inv, qp=None, kp=None):
    qp = torch.arange(q.shape[-2]) if qp is None else qp
    kp = torch.arange(k.shape[-2]) if kp is None else kp
    return (
        apply_rotary(q, *rope_cos_sin(qp, inv, q.dtype)) @ apply_rotary(k, *rope_cos_sin(kp, inv, k.dtype)).mT
    )


def test_rerope_reduces_to_rope():
    g = _rng(3)
    inv = rope_inv_freq(16, B, torch.float64)
    q, k = (
        torch.randn(50, 16, dtype=torch.float64, generator=g),
        torch.randn(50, 16, dtype=torch.float64, generator=g),
    )
    plain = _rope_logits(q, k, inv)
    assert torch.equal(rerope_logits(q, k, inv, window=50), plain)  # window >= length: exact
    assert torch.equal(rerope_logits(q, k, inv, window=60), plain)
    assert torch.equal(rerope_logits(q, k, inv, window=5, leaky_factor=1.0), plain)  # slope 1 is RoPE
    big = rerope_logits(q, k, inv, window=5, leaky_factor=1e9)
    assert torch.allclose(big, rerope_logits(q, k, inv, window=5), atol=1e-6, rtol=0)


def test_rerope_is_invariant_to_a_position_offset_and_decode_matches_prefill():
    g = _rng(4)
    inv = rope_inv_freq(16, B, torch.float64)
    q, k = (
        torch.randn(40, 16, dtype=torch.float64, generator=g),
        torch.randn(40, 16, dtype=torch.float64, generator=g),
    )
    pos = torch.arange(40)
    for leaky in (None, 4.0):
        base = rerope_logits(q, k, inv, 8, leaky, pos, pos)
        shifted = rerope_logits(q, k, inv, 8, leaky, pos + 1000, pos + 1000)
        assert torch.allclose(base, shifted, atol=1e-9, rtol=0)
        for i in (0, 9, 39):
            row = rectified_rope_logits(q[i : i + 1], k[: i + 1], inv, 8, leaky, pos[i : i + 1], pos[: i + 1])
            assert torch.allclose(row[0], base[i, : i + 1], atol=1e-10, rtol=0)


def test_rectified_positions_and_leaky_rule():
    rel = torch.arange(10.0)
    assert rectified_relative_positions(rel, 4).tolist() == [0, 1, 2, 3, 4, 4, 4, 4, 4, 4]
    assert rectified_relative_positions(rel, 4, 2.0).tolist() == [0, 1, 2, 3, 4, 4.5, 5, 5.5, 6, 6.5]
    assert rectified_max_position(512, 16, 15.0) == pytest.approx(16 + 495 / 15)
    k = leaky_rerope_factor(512, 16, 64)
    assert 16 + 495 / k <= 32 and 16 + 495 / (k - 1) > 32
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        rerope_logits(torch.zeros(3, 4), torch.zeros(3, 4), rope_inv_freq(4), 0)
    with pytest.raises(ValueError, match="factor k must be > 0"):
        rectified_relative_positions(rel, 4, 0.0)
    with pytest.raises(ValueError, match="frequencies disagree"):
        rerope_logits(torch.zeros(3, 6), torch.zeros(3, 6), rope_inv_freq(4), 2)
