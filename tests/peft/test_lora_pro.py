"""LoRA-Pro: the equivalent gradient is the projection of G; Sylvester X; the three ways to apply it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from kexue.peft import (
    LoraProAdamW,
    apply_lora,
    equivalent_gradient,
    lora_layers,
    lora_pro_gradients,
    lora_pro_hook,
    project_gradient,
    solve_sylvester_symmetric,
)

D = torch.float64


def _setup(out_f=9, in_f=7, r=3, s=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(r, in_f, generator=g, dtype=D)
    B = torch.randn(out_f, r, generator=g, dtype=D)
    G = torch.randn(out_f, in_f, generator=g, dtype=D)
    return A, B, G, s * B.T @ G, s * G @ A.T, s


def _proj(A, B, G):
    PB = B @ torch.linalg.inv(B.T @ B) @ B.T
    PA = A.T @ torch.linalg.inv(A @ A.T) @ A
    I_o, I_i = torch.eye(B.shape[0], dtype=D), torch.eye(A.shape[1], dtype=D)
    return G - (I_o - PB) @ G @ (I_i - PA)


@pytest.mark.parametrize("x_rule", ["sylvester", "symmetric", "zero"])
def test_equivalent_gradient_is_the_projection_of_G_for_every_x(x_rule):
    A, B, G, GA, GB, s = _setup()
    gA, gB = lora_pro_gradients(A, B, GA, GB, s, x_rule=x_rule, jitter=0.0)
    eq = equivalent_gradient(A, B, gA, gB, s)
    torch.testing.assert_close(eq, _proj(A, B, G), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(project_gradient(A, B, G, jitter=0.0), eq, rtol=1e-10, atol=1e-10)
    # idempotent, descent direction with <G, g~> = |g~|^2
    torch.testing.assert_close(project_gradient(A, B, eq, jitter=0.0), eq, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close((G * eq).sum(), eq.pow(2).sum(), rtol=1e-10, atol=0)


def test_projection_is_the_least_squares_optimum_and_beats_lora():
    A, B, G, GA, GB, s = _setup(out_f=6, in_f=5, r=2, seed=1)
    r, (out_f, in_f) = A.shape[0], G.shape
    # vectorised problem: min over (gA, gB) of |s (B gA + gB A) - G|_F
    cols = []
    for k in range(r * in_f):
        e = torch.zeros(r * in_f, dtype=D)
        e[k] = 1
        cols.append((s * B @ e.reshape(r, in_f)).reshape(-1))
    for k in range(out_f * r):
        e = torch.zeros(out_f * r, dtype=D)
        e[k] = 1
        cols.append((s * e.reshape(out_f, r) @ A).reshape(-1))
    M = torch.stack(cols, 1)
    sol = torch.linalg.lstsq(M, G.reshape(-1, 1), driver="gelsd").solution
    best = (M @ sol).reshape(out_f, in_f)
    eq = project_gradient(A, B, G, jitter=0.0)
    torch.testing.assert_close(eq, best, rtol=1e-9, atol=1e-9)
    # LoRA's own equivalent gradient s^2 (B B^T G + G A^T A), at any scaling c, is never closer to G
    lora = equivalent_gradient(A, B, GA, GB, s)
    for c in torch.linspace(-2, 2, 41, dtype=D):
        assert (eq - G).norm() <= (c * lora - G).norm() + 1e-12


def test_sylvester_x_solves_its_equation_and_minimises_the_distance_to_the_raw_gradients():
    A, B, G, GA, GB, s = _setup(seed=2)
    M, N = B.T @ B, A @ A.T
    C = -(torch.linalg.inv(M) @ GA @ A.T) / s**2
    X = solve_sylvester_symmetric(M, N, C)
    res = (M @ X + X @ N - C).norm() / C.norm()
    assert res < 1e-10
    scipy_linalg = pytest.importorskip("scipy.linalg")
    torch.testing.assert_close(
        X, torch.from_numpy(scipy_linalg.solve_sylvester(M.numpy(), N.numpy(), C.numpy()))
    )
    # the Sylvester choice gives the adjusted gradients closest to the raw ones among all X
    gA0, gB0 = lora_pro_gradients(A, B, GA, GB, s, x_rule="zero", jitter=0.0)
    gA, gB = lora_pro_gradients(A, B, GA, GB, s, x_rule="sylvester", jitter=0.0)
    torch.testing.assert_close(gA - gA0, X @ A)
    torch.testing.assert_close(gB0 - gB, B @ X)

    def dist(Xv):
        return (gA0 + Xv @ A - GA).pow(2).sum() + (gB0 - B @ Xv - GB).pow(2).sum()

    Xp = X.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dist(Xp), Xp)
    assert grad.abs().max() < 1e-9
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert dist(X) <= dist(X + 1e-3 * torch.randn(X.shape, generator=g, dtype=D))
    with pytest.raises(ValueError, match="must have shape"):
        solve_sylvester_symmetric(M, N, C[:, :2])


def test_symmetric_rule_closed_forms():
    A, B, G, GA, GB, s = _setup(seed=3)
    PA = A.T @ torch.linalg.inv(A @ A.T) @ A
    PB = B @ torch.linalg.inv(B.T @ B) @ B.T
    gA, gB = lora_pro_gradients(A, B, GA, GB, s, x_rule="symmetric", jitter=0.0)
    I_i, I_o = torch.eye(A.shape[1], dtype=D), torch.eye(B.shape[0], dtype=D)
    torch.testing.assert_close(gA, torch.linalg.inv(B.T @ B) @ GA @ (I_i - 0.5 * PA) / s**2)
    torch.testing.assert_close(gB, (I_o - 0.5 * PB) @ GB @ torch.linalg.inv(A @ A.T) / s**2)


def test_full_rank_equals_full_fine_tuning_and_b_zero_uses_the_step0_rule():
    A, B, G, GA, GB, s = _setup(out_f=4, in_f=6, r=4, seed=4)  # r = min(out, in), B invertible
    gA, gB = lora_pro_gradients(A, B, GA, GB, s, jitter=0.0)
    torch.testing.assert_close(equivalent_gradient(A, B, gA, gB, s), G, rtol=1e-9, atol=1e-9)
    A, B, G, _, _, s = _setup(seed=5)
    B = torch.zeros_like(B)
    GA, GB = s * B.T @ G, s * G @ A.T
    gA, gB = lora_pro_gradients(A, B, GA, GB, s)
    assert torch.equal(gA, torch.zeros_like(gA))
    torch.testing.assert_close(gB, GB @ torch.linalg.inv(A @ A.T) / s**2)
    assert torch.isfinite(gB).all()


def _net(gradient: str = "plain") -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 12, dtype=D), nn.Tanh(), nn.Linear(12, 5, dtype=D))
    apply_lora(net, ["0", "2"], r=2, alpha=3, gradient=gradient, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for _, layer in lora_layers(net):
            layer.lora_B.normal_(generator=torch.Generator().manual_seed(2))
    return net


def test_pro_layers_return_adjusted_gradients_and_accumulate_linearly():
    plain, pro = _net("plain"), _net("pro")
    xs = [torch.randn(6, 8, dtype=D) for _ in range(2)]
    for net in (plain, pro):
        for x in xs:  # two backward passes accumulate
            net(x).pow(2).sum().backward()
    torch.testing.assert_close(pro(xs[0]), plain(xs[0]))
    for (_, lp), (_, lq) in zip(lora_layers(plain), lora_layers(pro)):
        gA, gB = lora_pro_gradients(lp.lora_A, lp.lora_B, lp.lora_A.grad, lp.lora_B.grad, lp.scaling)
        torch.testing.assert_close(lq.lora_A.grad, gA, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(lq.lora_B.grad, gB, rtol=1e-9, atol=1e-12)


def test_hook_and_efficient_adamw_match_pro_layers():
    x = torch.randn(10, 8, dtype=D)
    nets = {k: _net("pro" if k == "layer" else "plain") for k in ("layer", "hook", "adamw")}
    opts = {
        "layer": torch.optim.AdamW(
            [p for p in nets["layer"].parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
        ),
        "hook": torch.optim.AdamW(
            [p for p in nets["hook"].parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1
        ),
        "adamw": LoraProAdamW(nets["adamw"], lr=1e-2, weight_decay=0.1, mode="efficient"),
    }
    handle = lora_pro_hook(opts["hook"], nets["hook"])
    for _ in range(3):
        for k, net in nets.items():
            opts[k].zero_grad()
            net(x).pow(2).sum().backward()
            opts[k].step()
    for k in ("hook", "adamw"):
        for (_, a), (_, b) in zip(lora_layers(nets["layer"]), lora_layers(nets[k])):
            torch.testing.assert_close(a.lora_A, b.lora_A, rtol=1e-9, atol=1e-10)
            torch.testing.assert_close(a.lora_B, b.lora_B, rtol=1e-9, atol=1e-10)
    handle.remove()


def test_full_mode_adamw_step_is_the_projection_of_the_adam_direction():
    net = _net()
    opt = LoraProAdamW(net, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, mode="full")
    x = torch.randn(10, 8, dtype=D)
    net(x).pow(2).sum().backward()
    layer = net[0]
    A, B, s = layer.lora_A.detach().clone(), layer.lora_B.detach().clone(), layer.scaling
    gA, gB = lora_pro_gradients(A, B, layer.lora_A.grad, layer.lora_B.grad, s)
    g_full = equivalent_gradient(A, B, gA, gB, s)
    U = g_full / (g_full.abs() + 1e-8)  # Adam's first direction (bias-corrected moments)
    opt.step()
    dA, dB = layer.lora_A.detach() - A, layer.lora_B.detach() - B
    # first-order change of W is -lr * (projection of U onto {B Y + Z A})
    torch.testing.assert_close(s * (B @ dA + dB @ A), -1e-2 * project_gradient(A, B, U), rtol=1e-7, atol=1e-9)
    assert opt.state[layer.lora_A]["exp_avg"].shape == (12, 8)  # full-size state, as documented
    with pytest.raises(ValueError, match="mode must be one of"):
        LoraProAdamW(net, mode="fast")
    with pytest.raises(ValueError, match="at least one LoraLinear"):
        LoraProAdamW(nn.Sequential(nn.Linear(2, 2)))


def test_bad_shapes_raise():
    A, B, G, GA, GB, s = _setup()
    with pytest.raises(ValueError, match="expected A of shape"):
        lora_pro_gradients(A.T, B, GA, GB, s)
    with pytest.raises(ValueError, match="must match the factors"):
        lora_pro_gradients(A, B, GA.T, GB, s)
    with pytest.raises(ValueError, match="x_rule must be one of"):
        lora_pro_gradients(A, B, GA, GB, s, x_rule="best")
    with pytest.raises(ValueError, match="G must have shape"):
        project_gradient(A, B, G.T)
    net = copy.deepcopy(_net())
    with pytest.raises(ValueError, match="x_rule must be one of"):
        lora_pro_hook(torch.optim.SGD(net.parameters(), lr=0.1), net, x_rule="nope")
