import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kexue.nn.attention import (
    AttentionConfig,
    CausalSelfAttention,
    Extrapolation,
    causal_attention,
    cosine_log_mgf,
    cosine_objective,
    cosine_optimal_scale,
    cosine_optimal_scales,
    entropy_invariant_scale,
    gaussian_objective,
    gaussian_optimal_scale,
    logn_factor,
    softmax_gradient_norm,
    window_mask,
)
from kexue.nn.rope import RopeScaling, apply_rotary, rope_cos_sin, rope_inv_freq

F64 = torch.float64


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def _reference(q, k, v, scale, allowed):
    logits = (q @ k.mT) * scale
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), -1) @ v


# --- scale analysis -------------------------------------------------------------------------


def test_softmax_gradient_identity_against_autograd():
    g = _g(1)
    worst = 0.0
    for _ in range(60):  # the attention-scale reproduction runs the spec's 200 draws
        n = int(torch.randint(2, 65, (1,), generator=g))
        alpha = float(torch.rand(1, generator=g, dtype=F64)) * 10 + 0.01
        s = torch.randn(n, dtype=F64, generator=g) * 2
        jac = torch.autograd.functional.jacobian(lambda x, a=alpha: torch.softmax(a * x, -1), s)
        worst = max(worst, abs(0.5 * float(jac.abs().sum()) - float(softmax_gradient_norm(s, alpha))))
    assert worst < 1e-10


def test_gaussian_optimum():
    prev = 0.0
    for n in (2.5, 40, 512, 4096, 20000, 1e6):
        a = gaussian_optimal_scale(n)
        assert (1 + 2 * a * a) * math.exp(a * a) == pytest.approx(n, rel=1e-9)
        assert a > prev
        prev = a
        f = gaussian_objective(a, n)
        assert f >= gaussian_objective(a + 0.01, n) and f >= gaussian_objective(a - 0.01, n)
    assert [round(gaussian_optimal_scale(n), 2) for n in (40, 512, 4096, 20000)] == [1.43, 2.01, 2.41, 2.68]


def test_cosine_mgf_against_quadrature():
    integrate = pytest.importorskip("scipy.integrate")
    assert cosine_log_mgf(0.0, 32) == 0.0
    h = 1e-4
    assert (cosine_log_mgf(h, 32) - cosine_log_mgf(-h, 32)) / (2 * h) == pytest.approx(
        0.0, abs=1e-12
    )  # M'(0)=0
    for d in (8, 32, 128):
        dens = lambda s, d=d: (1 - s * s) ** ((d - 3) / 2)  # noqa: E731
        z = integrate.quad(dens, -1, 1, epsabs=0, epsrel=1e-12)[0]
        for a in (0.1, 1.0, 7.5, 30.0, 80.0):
            # integrate exp(a (s - 1)) to stay in range; add a back in log space
            num = integrate.quad(
                lambda s, a=a, dens=dens: math.exp(a * (s - 1)) * dens(s),
                -1,
                1,
                epsabs=0,
                epsrel=1e-12,
                limit=200,
            )[0]
            ref = math.log(num / z) + a
            assert math.exp(cosine_log_mgf(a, d) - ref) == pytest.approx(1.0, rel=1e-8)


def test_cosine_optimum_monotone_and_matches_post():
    assert cosine_optimal_scale(256, 128) == pytest.approx(22.29, abs=0.01)
    by_n = cosine_optimal_scales([64, 256, 1024, 4096], 64)
    assert np.all(np.diff(by_n) > 0)
    by_d = [cosine_optimal_scale(256, d) for d in (16, 32, 64, 128)]
    assert np.all(np.diff(by_d) > 0)
    a = cosine_optimal_scale(512, 32)
    assert cosine_objective(a, 512, 32) >= max(
        cosine_objective(a + 0.05, 512, 32), cosine_objective(a - 0.05, 512, 32)
    )


def test_logn_factors():
    pos = torch.arange(200)
    f = logn_factor(pos, 64)
    assert float(f[63]) == pytest.approx(1.0, abs=1e-15)  # n = 64 visible keys
    assert float(f[0]) == 0.0
    dag = logn_factor(pos, 64, clip=True)
    assert (dag >= 1).all() and (dag[:64] == 1).all() and (dag[64:] > 1).all()
    assert entropy_invariant_scale(512, 512) == 1.0
    q = torch.randn(2, 3, 200, 8, dtype=F64)
    assert (q * f[:, None]).shape == q.shape


def test_scale_errors():
    with pytest.raises(ValueError, match="n \\(number of keys\\) must be"):
        gaussian_optimal_scale(1.5)
    with pytest.raises(ValueError, match="d >= 3"):
        cosine_log_mgf(1.0, 2)
    with pytest.raises(ValueError, match="alpha must be"):
        gaussian_objective(0.0, 10)
    with pytest.raises(ValueError, match="alpha must be"):
        cosine_objective(-1.0, 10, 32)
    with pytest.raises(ValueError, match="scores must be finite"):
        softmax_gradient_norm(torch.tensor([0.0, float("nan")]), 1.0)


# --- functional attention -------------------------------------------------------------------


def _qkv(b=2, h=2, t=12, d=8, seed=0):
    g = _g(seed)
    return [torch.randn(b, h, t, d, dtype=F64, generator=g) for _ in range(3)]


def test_plain_and_window_attention_match_reference():
    q, k, v = _qkv()
    pos = torch.arange(12)
    ref = _reference(q, k, v, 1 / math.sqrt(8), window_mask(pos, pos))
    assert torch.allclose(causal_attention(q, k, v), ref, atol=1e-12)
    for w in (1, 3, 5):
        m = window_mask(pos, pos, w)
        assert m.sum(-1).tolist() == [min(i + 1, w) for i in range(12)]
        rows, cols = torch.nonzero(m, as_tuple=True)
        assert ((rows - cols >= 0) & (rows - cols < w)).all()
        assert torch.allclose(
            causal_attention(q, k, v, window=w), _reference(q, k, v, 1 / math.sqrt(8), m), atol=1e-12
        )
    assert torch.equal(causal_attention(q, k, v, window=12), causal_attention(q, k, v, window=50))
    assert torch.allclose(causal_attention(q, k, v, window=12), causal_attention(q, k, v), atol=1e-14)


def test_rope_and_rerope_paths():
    q, k, v = _qkv(t=20)
    inv = rope_inv_freq(8, 10000.0, F64)
    pos = torch.arange(20)
    rq, rk = apply_rotary(q, *rope_cos_sin(pos, inv, F64)), apply_rotary(k, *rope_cos_sin(pos, inv, F64))
    plain = causal_attention(q, k, v, inv_freq=inv)
    assert torch.allclose(plain, _reference(rq, rk, v, 1 / math.sqrt(8), window_mask(pos, pos)), atol=1e-12)
    assert torch.equal(causal_attention(q, k, v, inv_freq=inv, rerope_window=20), plain)  # bit-identical
    assert torch.equal(causal_attention(q, k, v, inv_freq=inv, rerope_window=4, leaky_factor=1.0), plain)
    re = causal_attention(q, k, v, inv_freq=inv, rerope_window=4)
    assert not torch.allclose(re, plain)
    # decoding one query against all keys equals the last row of the prefill
    last = causal_attention(q[..., -1:, :], k, v, inv_freq=inv, rerope_window=4)
    assert torch.allclose(last, re[..., -1:, :], atol=1e-12)
    with pytest.raises(ValueError, match="needs inv_freq"):
        causal_attention(q, k, v, rerope_window=4)
    with pytest.raises(ValueError, match="more queries"):
        causal_attention(q, k[..., :5, :], v[..., :5, :])


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"window": 3},
        {"rerope_window": 3},
        {"rerope_window": 2, "leaky_factor": 2.5},
        {"rerope_window": 2, "leaky_factor": 0.25},
        {"q_scale": True},
    ],
)
def test_gradcheck(kw):
    q, k, v = (x.requires_grad_() for x in _qkv(b=1, h=1, t=6, d=4, seed=5))
    kw = dict(kw)
    if kw.pop("q_scale", False):
        kw["q_scale"] = logn_factor(torch.arange(6), 4)
    if "rerope_window" in kw:
        kw["inv_freq"] = rope_inv_freq(4, 10000.0, F64)
    assert torch.autograd.gradcheck(lambda a, b, c: causal_attention(a, b, c, **kw), (q, k, v))


# --- KeyNorm / cosine attention -------------------------------------------------------------


def _module(seed=0, **cfg):
    torch.manual_seed(seed)
    return CausalSelfAttention(16, 2, AttentionConfig(**cfg)).double()


def test_keynorm_properties():
    q, k, _ = _qkv(t=10, d=8)
    inv = rope_inv_freq(8, 10000.0, F64)
    pos = torch.arange(10)
    cs = rope_cos_sin(pos, inv, F64)
    # normalise-then-rotate == rotate-then-normalise
    a = apply_rotary(F.normalize(k, dim=-1), *cs)
    b = F.normalize(apply_rotary(k, *cs), dim=-1)
    assert torch.allclose(a, b, atol=1e-12)
    scores = q @ F.normalize(k, dim=-1).mT
    assert (scores.abs() <= q.norm(dim=-1, keepdim=True) + 1e-12).all()
    # KNA is invariant to rescaling any key by a positive constant
    m = _module(qk_norm="key", position="none")
    x = torch.randn(2, 10, 16, dtype=F64)
    base = m(x)
    with torch.no_grad():
        m.qkv.weight[16:32] *= 3.7  # scales every key
    assert torch.allclose(m(x), base, atol=1e-12)
    # QNA invariant to query scale, CosA to both
    for mode, rows in (("query", slice(0, 16)), ("both", slice(0, 32))):
        mm = _module(qk_norm=mode, position="none", train_length=64)
        ref = mm(x)
        with torch.no_grad():
            mm.qkv.weight[rows] *= 0.3
        assert torch.allclose(mm(x), ref, atol=1e-12), mode


def test_kna_with_unit_keys_equals_sdpa_scale_one_and_tiny_keys_have_finite_grads():
    q, k, v = _qkv(t=9, d=8)
    ku = F.normalize(k, dim=-1)
    ref = F.scaled_dot_product_attention(q, ku, v, is_causal=True, scale=1.0)
    assert torch.allclose(causal_attention(q, F.normalize(ku, dim=-1), v, scale=1.0), ref, atol=1e-12)
    m = _module(qk_norm="key")
    x = torch.randn(1, 5, 16, dtype=F64)
    with torch.no_grad():
        m.qkv.weight[16:32] *= 1e-9  # keys of norm ~1e-8
    m(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_cosine_attention_scale_and_bounds():
    m = _module(qk_norm="both", train_length=64)
    assert m._base_scale == pytest.approx(cosine_optimal_scale(32, 8))
    m2 = _module(qk_norm="both", cos_scale=5.0)
    assert m2._base_scale == 5.0
    g = _module(scale="gradient", train_length=64)
    assert g._base_scale == pytest.approx(gaussian_optimal_scale(32) / math.sqrt(8))


def test_module_gradcheck_variants():
    x = torch.randn(1, 5, 8, dtype=F64, requires_grad=True)
    for cfg in (
        {},
        {"qk_norm": "key"},
        {"scale": "logn", "train_length": 4},
        {"window": 3},
        {"rerope_window": 2, "leaky_factor": 0.5},
    ):
        torch.manual_seed(0)
        m = CausalSelfAttention(8, 2, AttentionConfig(**cfg)).double()
        assert torch.autograd.gradcheck(lambda a, m=m: m(a), (x,)), cfg


def test_config_and_extrapolation_errors():
    with pytest.raises(ValueError, match="qk_norm must be one of"):
        AttentionConfig(qk_norm="value")
    with pytest.raises(ValueError, match="cos_scale"):
        AttentionConfig(qk_norm="both", cos_scale=0.0)
    with pytest.raises(ValueError, match="window must be an int >= 1"):
        AttentionConfig(window=0)
    with pytest.raises(ValueError, match="scale must be one of"):
        AttentionConfig(scale="entropy")
    with pytest.raises(ValueError, match="needs train_length"):
        AttentionConfig(scale="logn")
    with pytest.raises(ValueError, match="even head dimension"):
        CausalSelfAttention(10, 2)
    x = torch.randn(1, 40, 16, dtype=F64)
    m = _module(train_length=16)
    with pytest.raises(ValueError, match="beyond the trained range"):
        m(x, extrapolation=Extrapolation(rerope_window=4, leaky_factor=2.0))
    m(x, extrapolation=Extrapolation(rerope_window=4, leaky_factor=4.0))
    with pytest.raises(ValueError, match="covers 32 positions"):
        m(x, extrapolation=Extrapolation(scaling=RopeScaling("linear", 2.0, 16)))
    with pytest.raises(ValueError, match="trained without log n"):
        _module(scale="logn", train_length=16)(x, extrapolation=Extrapolation(logn_dagger=True))


def test_logn_dagger_is_bit_identical_within_training_length():
    m = _module(train_length=16)
    x = torch.randn(2, 16, 16, dtype=F64)
    assert torch.equal(m(x), m(x, extrapolation=Extrapolation(logn_dagger=True)))
    y = torch.randn(2, 40, 16, dtype=F64)
    assert not torch.allclose(m(y), m(y, extrapolation=Extrapolation(logn_dagger=True)))
