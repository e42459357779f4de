"""LoRA layer: forward formula, merge / unmerge, target matching, adapter files, peft equivalence."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kexue.peft import (
    LoraLinear,
    apply_lora,
    find_target_modules,
    load_adapter,
    lora_layers,
    lora_state_dict,
    merge_and_unload,
    merge_lora,
    save_adapter,
    unmerge_lora,
)


class Block(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.q_proj = nn.Linear(12, 10, dtype=dtype)
        self.v_proj = nn.Linear(12, 10, bias=False, dtype=dtype)
        self.out = nn.Linear(20, 6, dtype=dtype)
        self.norm = nn.LayerNorm(12, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.out(torch.tanh(torch.cat([self.q_proj(h), self.v_proj(h)], dim=-1)))


class Net(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(dtype), Block(dtype)])
        self.head = nn.Linear(6, 12, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = x + self.head(b(x))
        return x


def _randomise_B(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_layers(model):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g, dtype=layer.lora_B.dtype))


def _model(seed: int = 0, **kw) -> Net:
    torch.manual_seed(seed)
    m = Net()
    apply_lora(
        m, ["q_proj", "v_proj", "head"], r=3, alpha=6, generator=torch.Generator().manual_seed(1), **kw
    )
    _randomise_B(m, seed + 7)
    return m


def test_forward_matches_the_formula_and_b_zero_is_identity():
    torch.manual_seed(0)
    base = nn.Linear(7, 5, dtype=torch.float64)
    ref = copy.deepcopy(base)
    layer = LoraLinear(base, r=2, alpha=8)
    x = torch.randn(3, 4, 7, dtype=torch.float64)
    assert torch.equal(layer(x), ref(x))  # B = 0 at init
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = ref(x) + 4.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    assert layer.scaling == 4.0
    rs = LoraLinear(nn.Linear(7, 5), r=4, alpha=8, use_rslora=True)
    assert rs.scaling == pytest.approx(4.0)


def test_base_is_frozen_and_factor_gradients_follow_the_chain_rule():
    torch.manual_seed(1)
    layer = LoraLinear(nn.Linear(6, 4, dtype=torch.float64), r=2, alpha=3)
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not layer.base_layer.weight.requires_grad and not layer.base_layer.bias.requires_grad
    x = torch.randn(9, 6, dtype=torch.float64)
    target = torch.randn(9, 4, dtype=torch.float64)
    (layer(x) - target).pow(2).sum().backward()
    # full-weight gradient at the merged weight
    W = (layer.base_layer.weight + layer.delta_weight()).detach().requires_grad_(True)
    (x @ W.T + layer.base_layer.bias - target).pow(2).sum().backward()
    G, s = W.grad, layer.scaling
    torch.testing.assert_close(layer.lora_A.grad, s * layer.lora_B.detach().T @ G)
    torch.testing.assert_close(layer.lora_B.grad, s * G @ layer.lora_A.detach().T)


def test_merged_equals_unmerged_and_round_trips():
    m = _model()
    x = torch.randn(5, 12, dtype=torch.float64)
    y = m(x)
    w0 = {n: l.base_layer.weight.detach().clone() for n, l in lora_layers(m)}
    merge_lora(m)
    assert all(l.merged for _, l in lora_layers(m))
    torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)
    merge_lora(m)  # idempotent
    torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)
    unmerge_lora(m)
    for n, l in lora_layers(m):
        torch.testing.assert_close(l.base_layer.weight, w0[n], rtol=0, atol=1e-14)
    torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)
    plain = merge_and_unload(copy.deepcopy(m))
    assert not lora_layers(plain) and isinstance(plain.blocks[0].q_proj, nn.Linear)
    torch.testing.assert_close(plain(x), y, rtol=1e-12, atol=1e-12)


def test_dropout_applies_to_the_adapter_path_only():
    torch.manual_seed(2)
    layer = LoraLinear(nn.Linear(8, 8, dtype=torch.float64), r=2, alpha=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(16, 8, dtype=torch.float64)
    base = layer.base_layer(x)
    torch.manual_seed(3)
    y = layer(x)
    torch.manual_seed(3)
    xd = nn.functional.dropout(x, 0.5, training=True)
    torch.testing.assert_close(y, base + (xd @ layer.lora_A.T) @ layer.lora_B.T)
    layer.eval()
    torch.testing.assert_close(layer(x), base + (x @ layer.lora_A.T) @ layer.lora_B.T)


def test_apply_lora_freezes_everything_else_and_targets_by_suffix_or_regex():
    m = _model()
    names = [n for n, _ in lora_layers(m)]
    assert names == [
        "blocks.0.q_proj",
        "blocks.0.v_proj",
        "blocks.1.q_proj",
        "blocks.1.v_proj",
        "head",
    ]
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{f}" for n in names for f in "AB"}
    found = find_target_modules(Net(), r"blocks\.\d\.(q|v)_proj")
    assert [n for n, _ in found] == names[:4]
    assert len(find_target_modules(Net(), "all-linear")) == 7
    # modules inside a LoRA layer are never targets again
    assert [n for n, _ in find_target_modules(m, "all-linear")] == ["blocks.0.out", "blocks.1.out"]


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(Net(), ["q_proj", "k_proj"], r=2, alpha=2)
    with pytest.raises(ValueError, match="matched no module"):
        apply_lora(Net(), r"nothing\..*", r=2, alpha=2)
    with pytest.raises(ValueError, match="r must be >= 1"):
        apply_lora(Net(), ["q_proj"], r=0, alpha=2)
    with pytest.raises(ValueError, match=r"min\(12, 10\) = 10"):
        apply_lora(Net(), ["q_proj"], r=11, alpha=2)
    with pytest.raises(TypeError, match="rank r must be an int"):
        apply_lora(Net(), ["q_proj"], r=2.0, alpha=2)
    with pytest.raises(TypeError, match="LayerNorm"):
        apply_lora(Net(), ["norm"], r=2, alpha=2)
    with pytest.raises(ValueError, match="already has a LoRA adapter"):
        apply_lora(_model(), r"head", r=2, alpha=2)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        LoraLinear(nn.Linear(4, 4), r=1, alpha=0)
    with pytest.raises(ValueError, match="dropout"):
        LoraLinear(nn.Linear(4, 4), r=1, alpha=1, dropout=1.0)
    with pytest.raises(ValueError, match="init must be one of"):
        apply_lora(Net(), ["q_proj"], r=2, alpha=2, init="pissa")
    with pytest.raises(ValueError, match="only used with init='ga'"):
        apply_lora(Net(), ["q_proj"], r=2, alpha=2, train_step=lambda: None)
    with pytest.raises(ValueError, match="last dim 4"):
        LoraLinear(nn.Linear(4, 4), r=1, alpha=1)(torch.randn(2, 5))


def test_adapter_file_round_trip_into_a_fresh_model(tmp_path):
    m = _model(seed=3)
    x = torch.randn(4, 12, dtype=torch.float64)
    y = m(x)
    path = save_adapter(m, tmp_path / "sub" / "adapter.pt")
    assert [p.name for p in path.parent.iterdir()] == ["adapter.pt"]  # no temporary file left behind
    payload = torch.load(path, weights_only=True)
    assert set(payload["state"]) == set(lora_state_dict(m))  # only the adapter tensors
    assert all("lora_" in k for k in payload["state"])
    torch.manual_seed(3)
    fresh = Net()  # same base weights as _model(seed=3) before apply_lora
    load_adapter(fresh, path)
    torch.testing.assert_close(fresh(x), y, rtol=0, atol=0)
    # loading into an existing adapter with another rank fails clearly
    other = Net()
    apply_lora(other, ["q_proj", "v_proj", "head"], r=2, alpha=4)
    with pytest.raises(ValueError, match="rank 3"):
        load_adapter(other, path)
    with pytest.raises(ValueError, match="no LoRA layers"):
        save_adapter(Net(), tmp_path / "empty.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a kexue LoRA adapter"):
        load_adapter(Net(), tmp_path / "junk.pt")


def test_peft_plain_lora_equals_ours_given_the_same_weights():
    peft = pytest.importorskip("peft")
    torch.manual_seed(5)
    base = Net(dtype=torch.float32)
    ours = copy.deepcopy(base)
    theirs = peft.get_peft_model(
        copy.deepcopy(base), peft.LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj", "head"])
    )
    apply_lora(ours, ["q_proj", "v_proj", "head"], r=3, alpha=6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, layer in lora_layers(ours):
            peft_layer = theirs.base_model.model.get_submodule(name)
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g))
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    x = torch.randn(6, 12)
    y_ours, y_theirs = ours(x), theirs(x)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    y_ours.square().sum().backward()
    y_theirs.square().sum().backward()
    for name, layer in lora_layers(ours):
        peft_layer = theirs.base_model.model.get_submodule(name)
        torch.testing.assert_close(
            layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-4
        )
        torch.testing.assert_close(
            layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-4
        )
    # merged weights agree too
    merged = theirs.merge_and_unload()
    merge_lora(ours)
    for name, layer in lora_layers(ours):
        torch.testing.assert_close(
            layer.base_layer.weight, merged.get_submodule(name).weight, rtol=1e-5, atol=1e-5
        )
