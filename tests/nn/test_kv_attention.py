"""MHA / MQA / GQA / MLA with a KV cache: equivalences, cache accounting, gradients, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from kexue.nn.kv_attention import (
    MLA_IMPLS,
    AttentionConfig,
    GroupedQueryAttention,
    KVCache,
    LatentCache,
    MultiHeadAttention,
    MultiHeadLatentAttention,
    MultiQueryAttention,
    build_attention,
    cache_size,
)
from kexue.nn.rope import apply_rope, rope_inv_freq

F64 = torch.float64


def _x(b: int, t: int, d: int = 32, seed: int = 0, dtype=F64) -> torch.Tensor:
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _mla(q_rank=None, rope_dim=8, latent_norm=True, seed=0, **kw) -> MultiHeadLatentAttention:
    torch.manual_seed(seed)
    return MultiHeadLatentAttention(
        32, 4, 12, q_rank=q_rank, head_dim=8, rope_dim=rope_dim, latent_norm=latent_norm, **kw
    ).double()


def _gqa(g: int, seed: int = 0, **kw) -> GroupedQueryAttention:
    torch.manual_seed(seed)
    return GroupedQueryAttention(32, 4, g, **kw).double()


# --- MLA: absorbed == naive -----------------------------------------------------------------


@pytest.mark.parametrize("q_rank", [None, 16])
@pytest.mark.parametrize("rope_dim", [0, 8])
@pytest.mark.parametrize("latent_norm", [True, False])
def test_mla_absorbed_and_latent_equal_naive_prefill(q_rank, rope_dim, latent_norm):
    m = _mla(q_rank, rope_dim, latent_norm)
    x = _x(3, 11)
    ref = m(x, impl="naive")
    assert ref.abs().max() > 0.1
    for impl in ("latent", "absorb"):
        torch.testing.assert_close(m(x, impl=impl), ref, atol=1e-12, rtol=0)


def test_mla_absorbed_token_by_token_decode_equals_full_naive():
    m = _mla(16)
    x = _x(2, 9)
    ref = m(x, impl="naive")
    cache = m.new_cache(2, impl="absorb")
    rows = [m(x[:, t : t + 1], cache, impl="absorb") for t in range(9)]
    torch.testing.assert_close(torch.cat(rows, 1), ref, atol=1e-12, rtol=0)


def test_mla_absorbed_gradients_equal_naive_gradients():
    grads = {}
    for impl in ("naive", "absorb"):
        m = _mla(16)
        x = _x(2, 5).requires_grad_(True)
        (m(x, impl=impl) ** 2).sum().backward()
        grads[impl] = [x.grad] + [p.grad for p in m.parameters()]
    for a, b in zip(grads["naive"], grads["absorb"]):
        torch.testing.assert_close(a, b, atol=1e-11, rtol=1e-9)


def test_mla_absorbed_gradcheck():
    torch.manual_seed(1)
    m = MultiHeadLatentAttention(8, 2, 4, head_dim=4, rope_dim=2, impl="absorb").double()
    x = _x(1, 3, 8).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: m(t), (x,))


def test_mla_negative_control_rope_on_latent_key_breaks_absorption():
    # RoPE on the whole k = c W_kc (no decoupling) makes the naive form differ from the absorbed one
    m = _mla(rope_dim=0)
    x = _x(2, 8)
    pos = torch.arange(8)
    inv = rope_inv_freq(8, 10000.0, F64)
    qc, _ = m.queries(x, pos)
    k, v = m.expand(*m.latents(x, pos))
    s = apply_rope(qc, pos, inv) @ apply_rope(k, pos, inv).transpose(-1, -2) * m.scale
    s = s.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    coupled = m.w_o((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 8, -1))
    assert (m(x, impl="absorb") - coupled).abs().max() > 1e-3


def test_mla_scale_is_one_over_sqrt_dk_plus_dr():
    m = _mla(rope_dim=8)
    assert m.scale == pytest.approx(1 / math.sqrt(8 + 8))


# --- cached decoding == full recomputation ----------------------------------------------------


def _variants():
    torch.manual_seed(0)
    out = [
        ("mha", MultiHeadAttention(32, 4).double(), None),
        ("gqa", GroupedQueryAttention(32, 4, 2).double(), None),
        ("mqa", MultiQueryAttention(32, 4).double(), None),
        (
            "gqa-norope-dv",
            GroupedQueryAttention(32, 4, 2, head_dim=6, v_head_dim=10, rope=False).double(),
            None,
        ),
    ]
    out += [(f"mla-{impl}", _mla(16), impl) for impl in MLA_IMPLS]
    return out


@pytest.mark.parametrize("name,attn,impl", _variants(), ids=lambda v: v if isinstance(v, str) else "")
@pytest.mark.parametrize("splits", [(1,) * 7, (3, 1, 1, 2), (7,), (2, 5)])
def test_cached_decoding_equals_full_recomputation(name, attn, impl, splits):
    kw = {} if impl is None else {"impl": impl}
    x = _x(2, sum(splits))
    ref = attn(x, **kw)
    cache = attn.new_cache(2, **kw)
    outs, start = [], 0
    for n in splits:
        outs.append(attn(x[:, start : start + n], cache, **kw))
        start += n
    torch.testing.assert_close(torch.cat(outs, 1), ref, atol=1e-12, rtol=0)
    assert cache.length == sum(splits)


def test_cache_grows_past_its_capacity():
    attn = _gqa(2)
    x = _x(1, 10)
    cache = attn.new_cache(1, capacity=2)
    for t in range(10):
        attn(x[:, t : t + 1], cache)
    assert cache.k.shape == (1, 2, 10, 8) and cache.length == 10
    full = attn.new_cache(1)
    attn(x, full)
    torch.testing.assert_close(cache.k, full.k, atol=1e-12, rtol=0)
    torch.testing.assert_close(cache.v, full.v, atol=1e-12, rtol=0)


# --- GQA special cases and head-to-group map -----------------------------------------------------


def _reference_gqa(attn: GroupedQueryAttention, x: torch.Tensor) -> torch.Tensor:
    """Per-head loop: head s uses key/value group s // (h / g); RoPE over the head; causal softmax."""
    c = attn.config
    b, t, _ = x.shape
    h, g, dk = c.n_heads, c.groups, c.head_dim
    q = attn.w_q(x).view(b, t, h, dk)
    k = attn.w_k(x).view(b, t, g, dk)
    v = attn.w_v(x).view(b, t, g, -1)
    pos = torch.arange(t)
    inv = rope_inv_freq(dk, 10000.0, F64)
    heads = []
    for s in range(h):
        grp = s // (h // g)
        qs = apply_rope(q[:, :, s], pos, inv)
        ks = apply_rope(k[:, :, grp], pos, inv)
        sc = qs @ ks.transpose(-1, -2) / math.sqrt(dk)
        sc = sc.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        heads.append(sc.softmax(-1) @ v[:, :, grp])
    return attn.w_o(torch.cat(heads, -1))


@pytest.mark.parametrize("g", [1, 2, 4])
def test_gqa_matches_per_head_reference(g):
    attn = _gqa(g)
    x = _x(2, 6)
    torch.testing.assert_close(attn(x), _reference_gqa(attn, x), atol=1e-12, rtol=0)


def test_gqa_with_groups_equal_heads_is_mha_and_one_group_is_mqa():
    x = _x(2, 7)
    for g, cls in ((4, MultiHeadAttention), (1, MultiQueryAttention)):
        gqa = _gqa(g)
        other = cls(32, 4).double()
        other.load_state_dict(gqa.state_dict())
        torch.testing.assert_close(other(x), gqa(x), atol=0, rtol=0)
        assert other.config.kind == ("mha" if g == 4 else "mqa")


def test_mha_with_keys_copied_within_groups_equals_gqa():
    # GQA == MHA whose K/V weights are repeated for the consecutive heads of each group
    gqa = _gqa(2)
    mha = MultiHeadAttention(32, 4).double()
    sd = gqa.state_dict()
    for name in ("w_k.weight", "w_v.weight"):
        w = sd[name].view(2, 8, 32)
        sd[name] = w.repeat_interleave(2, dim=0).reshape(32, 32)
    mha.load_state_dict(sd)
    x = _x(2, 7)
    torch.testing.assert_close(mha(x), gqa(x), atol=1e-12, rtol=0)


# --- cache sizes ------------------------------------------------------------------------------


def test_cache_size_deepseek_v2_numbers():
    mha = AttentionConfig("mha", 5120, 128, 128)
    mla = AttentionConfig("mla", 5120, 128, 128, kv_rank=512, q_rank=1536, rope_dim=64)
    assert cache_size(mha).elements == 32768
    assert cache_size(AttentionConfig("gqa", 5120, 128, 128, n_kv_heads=8)).elements == 2048
    assert cache_size(AttentionConfig("mqa", 5120, 128, 128)).elements == 256
    assert cache_size(mla).elements == 576
    cs = cache_size(mla, torch.bfloat16, n_layers=60)
    assert (cs.elements, cs.bytes) == (34560, 69120)
    assert cache_size(mla, torch.float32).bytes == 576 * 4
    assert cache_size(mla, impl="naive").elements == 128 * (128 + 64 + 128)


@pytest.mark.parametrize(
    "cfg,formula",
    [
        (AttentionConfig("mha", 48, 6, 8, v_head_dim=4), 6 * (8 + 4)),
        (AttentionConfig("gqa", 48, 6, 8, n_kv_heads=3), 2 * 3 * 8),
        (AttentionConfig("mqa", 48, 6, 8), 2 * 8),
        (AttentionConfig("mla", 48, 6, 8, kv_rank=20, rope_dim=6), 20 + 6),
    ],
)
def test_cache_size_formulas_and_measured_tensors(cfg, formula):
    assert cache_size(cfg).elements == formula
    torch.manual_seed(0)
    attn = build_attention(cfg).double()
    x = _x(3, 13, 48)
    cache = attn.new_cache(3, capacity=40)
    for t in range(13):
        attn(x[:, t : t + 1], cache)
    assert cache.numel() == 3 * 13 * formula
    assert cache.nbytes() == 8 * 3 * 13 * formula


def test_cache_tensor_shapes():
    m = _mla(16)
    cache = m.new_cache(2, impl="absorb")
    m(_x(2, 5), cache, impl="absorb")
    assert isinstance(cache, LatentCache)
    assert cache.c.shape == (2, 5, 12) and cache.r.shape == (2, 5, 8)
    attn = _gqa(2)
    kv = attn.new_cache(2)
    attn(_x(2, 5), kv)
    assert isinstance(kv, KVCache)
    assert kv.k.shape == (2, 2, 5, 8) and kv.v.shape == (2, 2, 5, 8)


def test_latent_cache_holds_rotated_shared_key_from_x():
    m = _mla(16)
    x = _x(1, 4)
    cache = m.new_cache(1, impl="absorb")
    m(x, cache, impl="absorb")
    want = apply_rope(m.w_kr(x), torch.arange(4), rope_inv_freq(8, 10000.0, F64))
    torch.testing.assert_close(cache.r, want, atol=1e-14, rtol=0)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name,attn,impl", _variants(), ids=lambda v: v if isinstance(v, str) else "")
def test_gradients_reach_every_parameter(name, attn, impl):
    kw = {} if impl is None else {"impl": impl}
    attn.zero_grad()
    attn(_x(2, 5), **kw).pow(2).sum().backward()
    for pname, p in attn.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_bfloat16_runs_and_is_close():
    m = _mla(16).to(torch.bfloat16)
    x = _x(2, 6).to(torch.bfloat16)
    a, n = m(x, impl="absorb"), m(x, impl="naive")
    assert a.dtype == torch.bfloat16
    assert (a.double() - n.double()).abs().max() < 5e-2


# --- bad input ----------------------------------------------------------------------------------


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="divisible by n_kv_heads"):
        GroupedQueryAttention(32, 4, 3)
    with pytest.raises(ValueError, match="must not exceed d_model"):
        MultiHeadLatentAttention(32, 4, 64)
    with pytest.raises(ValueError, match="kv_rank .* must be > 0"):
        MultiHeadLatentAttention(32, 4, 0)
    with pytest.raises(ValueError, match="rope_dim .* must be even"):
        MultiHeadLatentAttention(32, 4, 8, rope_dim=3)
    with pytest.raises(ValueError, match="q_rank"):
        MultiHeadLatentAttention(32, 4, 8, q_rank=40)
    with pytest.raises(ValueError, match="kind must be one of"):
        AttentionConfig("mqa2", 32, 4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        AttentionConfig("mha", 32, 4, n_kv_heads=2)
    with pytest.raises(ValueError, match="needs n_kv_heads"):
        AttentionConfig("gqa", 32, 4)
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        AttentionConfig("mha", 30, 4)
    with pytest.raises(ValueError, match="even head_dim"):
        AttentionConfig("mha", 12, 4)
    with pytest.raises(ValueError, match="impl must be one of"):
        MultiHeadLatentAttention(32, 4, 8, impl="fast")
    with pytest.raises(TypeError, match="n_heads must be an int"):
        AttentionConfig("mha", 32, 4.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="AttentionConfig"):
        cache_size({"kind": "mha"})  # type: ignore[arg-type]


def test_mismatched_caches_raise():
    attn = _gqa(2)
    with pytest.raises(ValueError, match="batch size"):
        attn(_x(2, 1), attn.new_cache(3))
    with pytest.raises(ValueError, match="groups, d_k, d_v"):
        attn(_x(2, 1), _gqa(4).new_cache(2))
    with pytest.raises(TypeError, match="dtype"):
        attn(_x(2, 1), attn.new_cache(2, dtype=torch.float32))
    with pytest.raises(TypeError, match="KVCache"):
        attn(_x(2, 1), _mla().new_cache(2, impl="absorb"))
    m = _mla()
    with pytest.raises(TypeError, match="needs a LatentCache"):
        m(_x(2, 1), m.new_cache(2, impl="naive"), impl="absorb")
    with pytest.raises(ValueError, match="do not match"):
        m(_x(2, 1), LatentCache(2, 10, 8, F64), impl="absorb")
    with pytest.raises(ValueError, match="KVCache expects"):
        KVCache(2, 2, 8, 8, F64).append(
            torch.zeros(2, 2, 1, 7, dtype=F64), torch.zeros(2, 2, 1, 8, dtype=F64)
        )
    with pytest.raises(ValueError, match="LatentCache expects"):
        LatentCache(2, 12, 8, F64).append(torch.zeros(2, 1, 12, dtype=F64), torch.zeros(2, 1, 4, dtype=F64))


def test_bad_inputs_raise():
    attn = _gqa(2)
    with pytest.raises(ValueError, match=r"shape \(B, T, d_model=32\)"):
        attn(torch.zeros(2, 5, 31, dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(B, T, d_model=32\)"):
        attn(torch.zeros(5, 32, dtype=F64))
    with pytest.raises(TypeError, match="floating"):
        attn(torch.zeros(2, 5, 32, dtype=torch.int64))
