import pytest
import torch

from kexue.nn.attention import AttentionConfig, Extrapolation
from kexue.nn.rope import RopeScaling
from kexue.nn.transformer import TransformerConfig, TransformerLM, hwfa_layers, hwfa_window

F64 = torch.float64


def _model(seed=0, layers=None, n_layers=3, **attn):
    cfg = TransformerConfig(
        vocab_size=17,
        d_model=16,
        n_layers=n_layers,
        n_heads=2,
        mlp_ratio=2,
        attention=AttentionConfig(**attn),
        layers=layers,
    )
    torch.manual_seed(seed)
    return TransformerLM(cfg).double().eval()


CASES = {
    "rope": ({"train_length": 8}, None),
    "kna-logn": ({"train_length": 8, "qk_norm": "key", "scale": "logn"}, None),
    "hwfa": ({}, hwfa_layers(3, 3, 8)),
    "rerope": ({"train_length": 8}, Extrapolation(rerope_window=3)),
    "leaky": ({"train_length": 8}, Extrapolation(rerope_window=2, leaky_factor=4.0)),
    "dynamic": ({"train_length": 8}, Extrapolation(scaling=RopeScaling("dynamic", 2.0, 8))),
    "yarn+dagger": (
        {"train_length": 8},
        Extrapolation(scaling=RopeScaling("yarn", 3.0, 8), logn_dagger=True),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_cached_decoding_equals_full_recomputation(name):
    attn, ext = CASES[name]
    layers = ext if isinstance(ext, tuple) else None
    ext = None if isinstance(ext, tuple) else ext
    # dynamic NTK changes the base as the text grows; cached hidden states of deeper layers were computed
    # under earlier bases, so only a one-layer model can match full recomputation exactly
    m = _model(layers=layers, n_layers=1 if name == "dynamic" else 3, **attn)
    x = torch.randint(0, 17, (2, 22), generator=torch.Generator().manual_seed(1))
    cache = m.new_cache()
    with torch.no_grad():
        steps = [m(x[:, :5], cache=cache, extrapolation=ext)[:, -1]]  # chunked prefill
        steps += [m(x[:, 5:9], cache=cache, extrapolation=ext)[:, -1]]
        for t in range(9, 22):
            steps.append(m(x[:, t : t + 1], cache=cache, extrapolation=ext)[:, -1])
        full = [m(x[:, :t], extrapolation=ext)[:, -1] for t in [5, 9] + list(range(10, 23))]
    for a, b in zip(steps, full):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert cache.length == 22


def test_generate_with_and_without_cache_agree():
    m = _model(layers=hwfa_layers(3, 3, 8))
    prompt = torch.randint(0, 17, (2, 4), generator=torch.Generator().manual_seed(2))
    a = m.generate(prompt, 12)
    b = m.generate(prompt, 12, use_cache=False)
    assert torch.equal(a, b) and a.shape == (2, 16) and torch.equal(a[:, :4], prompt)
    s1 = m.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    s2 = m.generate(prompt, 6, temperature=1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2)


def test_window_layers_keep_a_bounded_cache():
    m = _model(layers=hwfa_layers(3, 3, 8))
    cache = m.new_cache()
    with torch.no_grad():
        m(torch.randint(0, 17, (1, 30)), cache=cache)
    assert [c.k.shape[-2] for c in cache.layers] == [2, 2, 30]


def test_hwfa_window_constraint_and_layout():
    assert hwfa_window(4, 64) == 16  # (16-1)*3+1 = 46 <= 48 < (17-1)*3+1
    assert hwfa_window(24, 512, 0.68) == 16  # the post: 15 * 23 + 1 = 346 = 0.68 N
    for n_layers, length, alpha in [(3, 100, 0.5), (6, 64, 0.75), (2, 32, 1.0)]:
        w = hwfa_window(n_layers, length, alpha)
        assert (w - 1) * (n_layers - 1) + 1 <= alpha * length < w * (n_layers - 1) + 1
    layers = hwfa_layers(4, 16, 64)
    assert [c.window for c in layers] == [16, 16, 16, None]
    assert (layers[-1].position, layers[-1].scale) == ("none", "logn")
    two = hwfa_layers(4, 32, 64, variant="hwfa2")
    assert [c.window for c in two] == [32, 32, None, 32] and two[2].position == "rope"
    assert [c.window is None for c in hwfa_layers(6, 8, 64, variant="hwfa2", n_full=2)] == [
        False,
        False,
        True,
        False,
        True,
        False,
    ]
    with pytest.raises(ValueError, match="n_layers must be an int >= 2"):
        hwfa_window(1, 64)
    with pytest.raises(ValueError, match=r"alpha must be in \(0, 1\]"):
        hwfa_window(4, 64, 1.5)
    with pytest.raises(ValueError, match="variant must be"):
        hwfa_layers(4, 16, 64, variant="swa")


def test_receptive_field_of_a_window_stack():
    w, n_layers, t = 3, 3, 16
    m = _model(layers=tuple(AttentionConfig(window=w) for _ in range(n_layers)), n_layers=n_layers)
    emb = m.embed(torch.randint(0, 17, (1, t))).detach().requires_grad_()
    x = emb
    pos = torch.arange(t)
    for block in m.blocks:
        x = block(x, pos, None, None)
    i = t - 1
    x[0, i].sum().backward()
    reach = [j for j in range(t) if emb.grad[0, j].abs().sum() > 0]
    assert reach == list(range(i - (w - 1) * n_layers, i + 1))


def test_relative_models_ignore_a_position_offset():
    x = torch.randint(0, 17, (2, 12))
    for attn in ({}, {"qk_norm": "key"}, {"position": "none"}):
        m = _model(**attn)
        assert torch.allclose(m(x), m(x, position_offset=100), atol=1e-10)


def test_hwfa2_rerope_within_window_equals_rope_and_invleaky_unit_slope_is_rope():
    m = _model(layers=hwfa_layers(3, 4, 16, variant="hwfa2"))
    x = torch.randint(0, 17, (2, 6))
    assert torch.equal(m(x), m(x, extrapolation=Extrapolation(rerope_window=6)))
    y = torch.randint(0, 17, (2, 14))
    assert not torch.allclose(m(y), m(y, extrapolation=Extrapolation(rerope_window=6)))
    plain = _model(seed=4)
    unit = _model(seed=4, rerope_window=3, leaky_factor=1.0)
    assert torch.equal(plain(y), unit(y))
    inv = _model(seed=4, rerope_window=3, leaky_factor=0.25)
    assert not torch.allclose(plain(y), inv(y))
    assert torch.equal(plain(y), inv(y, extrapolation=Extrapolation()))  # plain RoPE at inference


def test_config_errors():
    with pytest.raises(ValueError, match="divisible"):
        TransformerConfig(d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="expected n_layers"):
        TransformerConfig(n_layers=3, layers=(AttentionConfig(),))
    with pytest.raises(TypeError, match="config must be a TransformerConfig"):
        TransformerLM({"d_model": 8})
    m = _model()
    with pytest.raises(ValueError, match="integer tensor"):
        m(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="extrapolation must be"):
        m(torch.zeros(1, 3, dtype=torch.long), extrapolation=RopeScaling())
