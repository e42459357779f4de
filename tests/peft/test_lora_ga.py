"""LoRA-GA: Eckart-Young init, unchanged output, the first step vs full fine-tuning, gradient estimation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kexue.peft import (
    LoraGAConfig,
    apply_lora,
    estimate_gradients,
    load_adapter,
    lora_ga_factors,
    save_adapter,
)


def _decaying_gradient(out_f: int, in_f: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(out_f, out_f, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(in_f, in_f, generator=g, dtype=torch.float64))
    k = min(out_f, in_f)
    S = 2.0 ** -torch.arange(k, dtype=torch.float64)
    return U[:, :k] @ torch.diag(S) @ V[:, :k].T, S


@pytest.mark.parametrize("direction", ["ArB2r", "A2rBr", "ArBr", "random"])
def test_init_is_the_best_rank_2r_approximation(direction):
    g = torch.Generator().manual_seed(1)
    G = torch.randn(20, 30, generator=g, dtype=torch.float64)
    r = 3
    cfg = LoraGAConfig(direction=direction, scale="unit", svd="exact")
    A, B = lora_ga_factors(G, r, scaling=2.0, config=cfg)
    assert A.shape == (r, 30) and B.shape == (20, r)
    torch.testing.assert_close(A @ A.T, torch.eye(r, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(B.T @ B, torch.eye(r, dtype=torch.float64), rtol=0, atol=1e-12)
    S = torch.linalg.svdvals(G)
    resid = (B @ B.T @ G + G @ A.T @ A - G).pow(2).sum()
    torch.testing.assert_close(resid, S[2 * r :].pow(2).sum(), rtol=1e-8, atol=0)


def test_scales():
    G, _ = _decaying_gradient(16, 24)
    r, s = 2, 4.0
    unit = lora_ga_factors(G, r, s, LoraGAConfig(scale="unit", svd="exact"))
    stable = lora_ga_factors(G, r, s, LoraGAConfig(scale="stable", stable_gamma=16, svd="exact"))
    gd = lora_ga_factors(G, r, s, LoraGAConfig(scale="gd", svd="exact"))
    zeta = 16**0.25 / 4.0
    torch.testing.assert_close(stable[0], zeta * unit[0])
    torch.testing.assert_close(stable[1], zeta * unit[1])
    torch.testing.assert_close(gd[0], unit[0] / s)
    torch.testing.assert_close(gd[1], unit[1] / s)
    W = torch.randn(16, 24, dtype=torch.float64)
    ws = lora_ga_factors(G, r, s, LoraGAConfig(scale="weightS", svd="exact"), weight=W)
    factor = torch.sqrt(torch.linalg.svdvals(W)[:r] / s).mean()
    torch.testing.assert_close(ws[0], factor * unit[0])
    # randomised SVD agrees with the exact one on a decaying spectrum (sign-invariant comparison)
    low = lora_ga_factors(G, r, s, LoraGAConfig(scale="unit", svd="lowrank"))
    torch.testing.assert_close(low[0].T @ low[0], unit[0].T @ unit[0], rtol=0, atol=1e-8)
    torch.testing.assert_close(low[1] @ low[1].T, unit[1] @ unit[1].T, rtol=0, atol=1e-8)
    sign = lora_ga_factors(G, r, s, LoraGAConfig(scale="unit", svd="exact", gradient_transform="sign"))
    ref = lora_ga_factors(torch.sign(G), r, s, LoraGAConfig(scale="unit", svd="exact"))
    torch.testing.assert_close(sign[0].T @ sign[0], ref[0].T @ ref[0])


def _mlp(dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16, dtype=dtype), nn.Tanh(), nn.Linear(16, 8, dtype=dtype))


def test_output_unchanged_at_step_0_and_adapter_reloads(tmp_path):
    model = _mlp()
    x = torch.randn(32, 10)
    y0 = model(x).detach()
    base = copy.deepcopy(model)
    data = torch.Generator().manual_seed(3)

    def step():
        for _ in range(2):
            xb = torch.randn(2, 10, generator=data)
            model(xb).pow(2).sum().backward()

    apply_lora(model, ["0", "2"], r=2, alpha=4, init="ga", train_step=step)
    torch.testing.assert_close(model(x), y0, rtol=0, atol=1e-6)
    assert not torch.equal(model[0].base_layer.weight, base[0].weight)  # the offset was applied
    # training moves it; an adapter file restores the trained model on the original weights
    with torch.no_grad():
        model[0].lora_B.add_(0.1)
    y1 = model(x)
    save_adapter(model, tmp_path / "ga.pt")
    restored = load_adapter(copy.deepcopy(base), tmp_path / "ga.pt")
    torch.testing.assert_close(restored(x), y1, rtol=0, atol=0)


def test_first_sgd_step_is_the_rank_2r_match_of_full_fine_tuning():
    torch.manual_seed(4)
    lin = nn.Linear(12, 9, bias=False, dtype=torch.float64)
    model = nn.Sequential(lin)
    x = torch.randn(40, 12, dtype=torch.float64)
    t = torch.randn(40, 9, dtype=torch.float64)

    def loss() -> torch.Tensor:
        return 0.5 * (model(x) - t).pow(2).sum(-1).mean()

    W0 = lin.weight.detach().clone()
    G = (W0 @ x.T - t.T) @ x / len(x)  # dL/dW at W0
    r, alpha, eta = 2, 3.0, 0.05
    cfg = LoraGAConfig(svd="exact")  # stable scale, gamma 16
    apply_lora(model, ["0"], r=r, alpha=alpha, init="ga", train_step=lambda: loss().backward(), ga_config=cfg)
    layer = model[0]
    s = layer.scaling
    torch.testing.assert_close(layer.base_layer.weight + layer.delta_weight(), W0, rtol=0, atol=1e-14)
    opt = torch.optim.SGD([layer.lora_A, layer.lora_B], lr=eta)
    loss().backward()
    gA, gB = layer.lora_A.grad.clone(), layer.lora_B.grad.clone()
    A0, B0 = layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    opt.step()
    dW = (layer.base_layer.weight + layer.delta_weight()).detach() - W0
    # exact: s[(B - eta gB)(A - eta gA) - BA] = -eta s^2 (B B^T G + G A^T A) + eta^2 s gB gA
    torch.testing.assert_close(dW, -eta * s * s * (B0 @ B0.T @ G + G @ A0.T @ A0) + eta**2 * s * gB @ gA)
    # and B B^T G + G A^T A = zeta^2 * (best rank-2r approximation of G)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    G2r = U[:, : 2 * r] @ torch.diag(S[: 2 * r]) @ Vh[: 2 * r]
    zeta2 = 9**0.5 / 16
    torch.testing.assert_close(B0 @ B0.T @ G + G @ A0.T @ A0, zeta2 * G2r, rtol=1e-10, atol=1e-12)


def test_estimate_gradients_averages_and_restores_the_model():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    model[2].bias.grad = torch.ones(3)
    model[0].bias.requires_grad_(False)
    bn_state = copy.deepcopy(model[1].state_dict())
    xs = [torch.randn(5, 4) for _ in range(3)]

    def step():
        for xb in xs:
            model.zero_grad()  # must not matter
            out = model(xb)
            (out.pow(2).sum() + model[2](torch.ones(1, 6)).sum()).backward()  # layer "2" used twice

    grads = estimate_gradients(model, ["0", "2"], step)
    # reference: average of the per-batch gradients (BatchNorm in train mode, stats restored between)
    ref = copy.deepcopy(model)
    ref.load_state_dict(model.state_dict())
    acc = {n: torch.zeros_like(ref.get_submodule(n).weight) for n in ("0", "2")}
    for xb in xs:
        ref.zero_grad()
        (ref(xb).pow(2).sum() + ref[2](torch.ones(1, 6)).sum()).backward()
        for n in acc:
            acc[n] += ref.get_submodule(n).weight.grad
    # ref's BatchNorm stats advanced exactly as during estimation; the gradient path is identical
    for n in acc:
        torch.testing.assert_close(grads[n], acc[n] / len(xs))
    # the model is left as it was
    assert all(torch.equal(a, b) for a, b in zip(model[1].state_dict().values(), bn_state.values()))
    assert torch.equal(model[2].bias.grad, torch.ones(3))
    assert model[0].weight.grad is None
    assert not model[0].bias.requires_grad and model[0].weight.requires_grad


def test_ga_errors():
    with pytest.raises(ValueError, match="2r <= min"):
        apply_lora(_mlp(), ["2"], r=5, alpha=1, init="ga", gradients={"2": torch.randn(8, 16)})
    with pytest.raises(ValueError, match="no gradient for target module '2'"):
        model = _mlp()
        apply_lora(
            model,
            ["0", "2"],
            r=2,
            alpha=1,
            init="ga",
            train_step=lambda: model[0](torch.randn(3, 10)).sum().backward(),
        )
    with pytest.raises(ValueError, match="non-finite"):
        model = _mlp()
        apply_lora(
            model,
            ["0"],
            r=2,
            alpha=1,
            init="ga",
            train_step=lambda: (model(torch.randn(2, 10)).sum() * float("inf")).backward(),
        )
    with pytest.raises(ValueError, match="non-finite"):
        lora_ga_factors(torch.full((6, 6), float("nan")), 1, 1.0)
    with pytest.raises(ValueError, match="needs train_step"):
        apply_lora(_mlp(), ["0"], r=2, alpha=1, init="ga")
    with pytest.raises(ValueError, match="direction must be one of"):
        LoraGAConfig(direction="BrA2r")
    with pytest.raises(ValueError, match="no gradient given"):
        apply_lora(_mlp(), ["0", "2"], r=2, alpha=1, init="ga", gradients={"0": torch.randn(16, 10)})


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_peft_compat_matches_peft_lora_ga():
    peft = pytest.importorskip("peft")
    from peft.tuners.lora import LoraGAConfig as PeftGAConfig
    from peft.tuners.lora import preprocess_loraga

    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(32, 24))
    G, _ = _decaying_gradient(24, 32, seed=2)
    G = G.float()
    x = torch.randn(64, 32)
    # a loss whose weight gradient is exactly G: L = <G, W> computed through the layer on x with x^T x = I-ish
    xw = torch.linalg.pinv(x)  # (32, 64): x^T-side solve so that (xw^T)^T x = I
    targ = (G @ xw).T  # dL/dy such that dL/dW = targ^T x = G x^+ x... only exact if x^+ x = I
    assert torch.allclose(xw @ x, torch.eye(32), atol=1e-4)

    def step(model):
        (model(x) * targ).sum().backward()

    cfg = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        target_modules=["0"],
        init_lora_weights="lora_ga",
        lora_ga_config=PeftGAConfig(direction="ArB2r", scale="stable", stable_gamma=16),
    )
    theirs_model = copy.deepcopy(base)
    preprocess_loraga(theirs_model, cfg, lambda: step(theirs_model))
    theirs = peft.get_peft_model(theirs_model, cfg).base_model.model[0]
    ours_model = copy.deepcopy(base)
    apply_lora(
        ours_model,
        ["0"],
        r=2,
        alpha=4,
        init="ga",
        train_step=lambda: step(ours_model),
        ga_config=LoraGAConfig(peft_compat=True),
    )
    ours = ours_model[0]
    tA, tB = theirs.lora_A["default"].weight.detach(), theirs.lora_B["default"].weight.detach()
    oA, oB = ours.lora_A.detach(), ours.lora_B.detach()
    torch.testing.assert_close(oA.T @ oA, tA.T @ tA, rtol=0, atol=1e-4)
    torch.testing.assert_close(oB @ oB.T, tB @ tB.T, rtol=0, atol=1e-4)
    torch.testing.assert_close(
        ours.base_layer.weight + ours.delta_weight(),
        theirs.base_layer.weight + 2.0 * tB @ tA,
        rtol=0,
        atol=1e-5,
    )
    # the default (paper) variant differs from peft's: no singular values in B
    paper = lora_ga_factors(G, 2, 2.0, LoraGAConfig(svd="exact"))
    assert not torch.allclose(paper[1] @ paper[1].T, tB @ tB.T, atol=1e-3)
