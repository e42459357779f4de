import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kexue.losses.gan import (
    antisymmetric_difference,
    gan_qp_critic_loss,
    gan_qp_generator_loss,
    generator_regression_loss,
    gn_bce_critic_loss,
    gn_bce_generator_loss,
    gradient_penalty,
    hinge_critic_loss,
    logistic_discriminator_loss,
    monoflow_generator_loss,
    pair_distance,
    qp_divergence_discrete,
    qp_optimal_critic_discrete,
    reflow_gan_critic_loss,
    wgan_critic_loss,
    wgan_generator_loss,
    wgan_gp_critic_loss,
)

D64 = torch.float64


def _mlp(seed, out=1, act=nn.LeakyReLU, dtype=D64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 16), act(), nn.Linear(16, 16), act(), nn.Linear(16, out)).to(dtype)


# --- GAN-QP -----------------------------------------------------------------------------------


def test_gan_qp_critic_loss_hand_case():
    t_real = torch.tensor([1.0, 0.5], dtype=D64)
    t_fake = torch.tensor([[0.0], [1.5]], dtype=D64)  # [B, 1] must not broadcast to [B, B]
    x_real = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=D64)
    x_fake = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=D64)
    # L1 mean distances: 1.0 and 1.0; dT = 1, -1; lam = 10
    expect = ((-1 + 1 / 20) + (1 + 1 / 20)) / 2
    got = gan_qp_critic_loss(t_real, t_fake, x_real, x_fake, lam=10.0, eps=0.0)
    assert torch.allclose(got, torch.tensor(expect, dtype=D64))
    # L2 with reduce "sum": d = sqrt(2), 2
    got2 = gan_qp_critic_loss(
        t_real, t_fake, x_real, x_fake, lam=2.0, distance="l2", reduce_dims="sum", eps=0
    )
    expect2 = ((-1 + 1 / (4 * math.sqrt(2))) + (1 + 1 / 8)) / 2
    assert torch.allclose(got2, torch.tensor(expect2, dtype=D64))


def test_gan_qp_per_pair_optimum_is_lambda_d_over_2():
    d = torch.tensor([0.3, 1.0, 2.5], dtype=D64)
    lam = 7.0
    x_fake = torch.zeros(3, 1, dtype=D64)
    x_real = d[:, None]  # l1 distance with one dim = d
    dt = (lam * d).requires_grad_(True)
    loss = gan_qp_critic_loss(dt, torch.zeros(3, dtype=D64), x_real, x_fake, lam=lam, eps=0.0)
    (g,) = torch.autograd.grad(loss, dt)
    assert torch.allclose(g, torch.zeros(3, dtype=D64), atol=1e-12)  # stationary at dT = lam d
    assert torch.allclose(-loss * 3, (lam * d / 2).sum())


def test_gan_qp_tends_to_wgan_as_lambda_grows():
    torch.manual_seed(0)
    tr, tf = torch.randn(8, dtype=D64), torch.randn(8, dtype=D64)
    xr, xf = torch.randn(8, 3, dtype=D64), torch.randn(8, 3, dtype=D64)
    qp = gan_qp_critic_loss(tr, tf, xr, xf, lam=1e9)
    assert torch.allclose(qp, wgan_critic_loss(tr, tf), atol=1e-7)


def test_gan_qp_generator_gradient_only_through_fake():
    G = nn.Linear(2, 2).double()
    D = _mlp(1)
    z = torch.randn(16, 2, dtype=D64)
    x_real = torch.randn(16, 2, dtype=D64)
    x_fake = G(z)
    loss = gan_qp_generator_loss(D(x_real), D(x_fake))
    gG = torch.autograd.grad(loss, list(G.parameters()), retain_graph=True)
    ref = torch.autograd.grad(-D(x_fake).mean(), list(G.parameters()))
    for a, b in zip(gG, ref):
        assert torch.allclose(a, b)
    # the critic loss with a detached fake batch has no path to G
    closs = gan_qp_critic_loss(D(x_real), D(x_fake.detach()), x_real, x_fake.detach())
    assert all(g is None for g in torch.autograd.grad(closs, list(G.parameters()), allow_unused=True))


def test_pair_distance_is_per_pair_and_callable_checked():
    xr = torch.tensor([[[1.0, -1.0]], [[0.0, 2.0]]])
    xf = torch.zeros(2, 1, 2)
    assert torch.allclose(pair_distance(xr, xf, "l1"), torch.tensor([1.0, 1.0]))
    assert torch.allclose(pair_distance(xr, xf, "l2", "sum"), torch.tensor([math.sqrt(2), 2.0]))
    with pytest.raises(ValueError, match="distance callable must return"):
        pair_distance(xr, xf, lambda a, b: torch.ones(3))


def test_gan_qp_bad_inputs():
    t = torch.zeros(4)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="lam must be"):
        gan_qp_critic_loss(t, t, x, x + 1, lam=0.0)
    with pytest.raises(ValueError, match="lam must be"):
        gan_qp_critic_loss(t, t, x, x + 1, lam=-1.0)
    with pytest.raises(ValueError, match="batch sizes must match"):
        gan_qp_critic_loss(t, torch.zeros(3), x, x + 1)
    with pytest.raises(ValueError, match="batch sizes must match"):
        gan_qp_critic_loss(t, t, torch.zeros(5, 2), torch.ones(5, 2))
    with pytest.raises(ValueError, match="same shape"):
        gan_qp_critic_loss(t, t, x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match="one score per sample"):
        gan_qp_critic_loss(torch.zeros(4, 2), t, x, x + 1)
    with pytest.raises(ValueError, match="non-finite"):
        gan_qp_critic_loss(t, t, x, x + float("inf"))
    with pytest.raises(ValueError, match="must be > 0"):
        gan_qp_critic_loss(t, t, x, x, eps=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        gan_qp_generator_loss(torch.zeros(4, dtype=torch.long), t)


def test_antisymmetric_difference():
    lin = nn.Linear(4, 1).double()

    def critic(a, b):
        return lin(torch.cat([a, b], 1))

    a, b = torch.randn(5, 2, dtype=D64), torch.randn(5, 2, dtype=D64)
    assert torch.allclose(antisymmetric_difference(critic, a, b), -antisymmetric_difference(critic, b, a))


def test_qp_divergence_discrete_properties():
    d = torch.tensor([[0.0, 3.0], [3.0, 0.0]], dtype=D64)
    p, q = torch.tensor([1.0, 0.0], dtype=D64), torch.tensor([0.0, 1.0], dtype=D64)
    assert torch.allclose(qp_divergence_discrete(p, q, d, lam=4.0), torch.tensor(4.0 * 3 / 2, dtype=D64))
    g = torch.Generator().manual_seed(0)
    pts = torch.randn(5, 2, generator=g, dtype=D64)
    dist = torch.cdist(pts, pts)
    p = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    q = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    v1 = qp_divergence_discrete(p, q, dist, lam=1.0)
    assert v1 > 0
    assert torch.allclose(qp_divergence_discrete(p, q, dist, lam=3.0), 3 * v1)
    assert float(qp_divergence_discrete(p, p, dist, lam=1.0)) == 0.0
    dt = qp_optimal_critic_discrete(p, q, dist, lam=2.0)
    assert torch.allclose(dt, -dt.T)
    assert bool((dt.abs() <= 2.0 * dist + 1e-15).all())


def tabular_qp_critic_maximum(p, q, dist, lam, newton_steps=2):
    """Maximise sum_ij p_i q_j (dT_ij - dT_ij^2 / (2 lam d_ij)) over antisymmetric dT by Newton (autograd)."""
    n = p.shape[0]
    iu = torch.triu_indices(n, n, 1)
    off = ~torch.eye(n, dtype=torch.bool)
    safe = torch.where(off, dist, torch.ones_like(dist))

    def objective(u):
        w = torch.zeros(n, n, dtype=u.dtype).index_put((iu[0], iu[1]), u)
        dt = w - w.T
        pq = p[:, None] * q[None, :]
        return (pq * (dt - dt.pow(2) / (2 * lam * safe)))[off].sum()

    u = torch.zeros(iu.shape[1], dtype=p.dtype)
    for _ in range(newton_steps):
        g = torch.autograd.functional.jacobian(objective, u)
        h = torch.autograd.functional.hessian(objective, u)
        u = u - torch.linalg.solve(h, g)
    w = torch.zeros(n, n, dtype=u.dtype).index_put((iu[0], iu[1]), u)
    return float(objective(u)), w - w.T


def test_tabular_critic_ascent_reaches_closed_form():
    g = torch.Generator().manual_seed(1)
    pts = torch.randn(5, 2, generator=g, dtype=D64)
    dist = torch.cdist(pts, pts)
    p = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    q = torch.softmax(torch.randn(5, generator=g, dtype=D64), 0)
    lam = 1.5
    value, dt = tabular_qp_critic_maximum(p, q, dist, lam)
    assert abs(value - float(qp_divergence_discrete(p, q, dist, lam))) < 1e-12
    off = ~torch.eye(5, dtype=torch.bool)
    assert torch.allclose(dt[off], qp_optimal_critic_discrete(p, q, dist, lam)[off], atol=1e-10)
    assert bool((dt[off].abs() <= lam * dist[off]).all())


def test_qp_discrete_bad_inputs():
    d = torch.ones(3, 3, dtype=D64) - torch.eye(3, dtype=D64)
    p = torch.full((3,), 1 / 3, dtype=D64)
    with pytest.raises(ValueError, match="probability vector"):
        qp_divergence_discrete(p * 2, p, d)
    with pytest.raises(ValueError, match="dist_matrix must have shape"):
        qp_divergence_discrete(p, p, torch.ones(2, 2, dtype=D64))
    with pytest.raises(ValueError, match="lam must be"):
        qp_divergence_discrete(p, p, d, lam=0)


# --- WGAN-GP and the ReFlow-derived critic -----------------------------------------------------


def test_wgan_losses_and_gradient_penalty_linear_critic():
    w = torch.tensor([3.0, 4.0], dtype=D64)

    def critic(x):
        return x @ w + 1.0

    xr, xf = torch.randn(6, 2, dtype=D64), torch.randn(6, 2, dtype=D64)
    assert torch.allclose(gradient_penalty(critic, xr, xf, center=1.0), torch.tensor(16.0, dtype=D64))
    assert torch.allclose(gradient_penalty(critic, xr, xf, center=0.0), torch.tensor(25.0, dtype=D64))
    base = (xf @ w).mean() - (xr @ w).mean()
    assert torch.allclose(wgan_gp_critic_loss(critic, xr, xf, lam=2.0), base + 32.0)
    assert torch.allclose(reflow_gan_critic_loss(critic, xf, xr), base + 12.5)
    assert torch.allclose(wgan_generator_loss((xf @ w)[:, None]), -(xf @ w).mean())


def test_gradient_penalty_interpolates_and_param_gradient():
    D = _mlp(2)
    xr, xf = torch.randn(4, 2, dtype=D64), torch.randn(4, 2, dtype=D64)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=D64)
    gp = gradient_penalty(D, xr, xf, center=0.0, t=t)
    x_hat = ((1 - t[:, None]) * xf + t[:, None] * xr).requires_grad_(True)
    (g,) = torch.autograd.grad(D(x_hat).sum(), x_hat)
    assert torch.allclose(gp, g.pow(2).sum(1).mean())
    grads = torch.autograd.grad(gp, list(D.parameters()), allow_unused=True)
    assert any(gr is not None and gr.abs().sum() > 0 for gr in grads)  # create_graph=True
    with pytest.raises(ValueError, match="t must lie in"):
        gradient_penalty(D, xr, xf, t=torch.full((4,), 1.5, dtype=D64))
    with pytest.raises(ValueError, match="gp_weight must be"):
        reflow_gan_critic_loss(D, xf, xr, gp_weight=0.0)
    with pytest.raises(ValueError, match="lam must be"):
        wgan_gp_critic_loss(D, xr, xf, lam=-1.0)


# --- MonoFlow family ---------------------------------------------------------------------------


def test_monoflow_losses_equal_their_formulas_and_gradients_negative():
    d = torch.linspace(-6, 6, 13, dtype=D64)
    cases = {
        "logit": (-d.mean(), lambda x: torch.ones_like(x)),
        "ns": (F.softplus(-d).mean(), lambda x: torch.sigmoid(-x)),
        "vanilla": (-F.softplus(d + 5.0).mean(), lambda x: torch.sigmoid(x + 5.0)),
        "arcsinh": (-torch.asinh(d).mean(), lambda x: 1 / torch.sqrt(1 + x * x)),
    }
    for h, (expect, hprime) in cases.items():
        dd = d.clone().requires_grad_(True)
        loss = monoflow_generator_loss(dd, h)
        assert torch.allclose(loss, expect), h
        (g,) = torch.autograd.grad(loss, dd)
        assert torch.allclose(g, -hprime(d) / d.numel()), h
        assert bool((g < 0).all()), h
    # minimax loss with the shift: log(1 - sigmoid(d + C))
    assert torch.allclose(
        monoflow_generator_loss(d, "vanilla", shift=2.0), torch.log1p(-torch.sigmoid(d + 2.0)).mean()
    )
    assert torch.allclose(monoflow_generator_loss(d[:, None], "ns"), monoflow_generator_loss(d, "ns"))


def test_monoflow_callable_checked_for_monotonicity():
    d = torch.randn(8, dtype=D64)
    assert torch.allclose(monoflow_generator_loss(d, lambda x: x.pow(3)), -d.pow(3).mean())
    with pytest.raises(ValueError, match="monotonically increasing"):
        monoflow_generator_loss(d, lambda x: -x)
    with pytest.raises(ValueError, match="monotonically increasing"):
        monoflow_generator_loss(d, torch.sin)
    with pytest.raises(ValueError, match="constant"):
        monoflow_generator_loss(d, lambda x: torch.zeros_like(x))
    with pytest.raises(ValueError, match="non-finite"):
        monoflow_generator_loss(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="h must be one of"):
        monoflow_generator_loss(d, "softmax")


def test_logistic_discriminator_loss_and_optimum_is_log_ratio():
    dr, df = torch.tensor([0.0, 2.0]), torch.tensor([-1.0])
    assert torch.allclose(logistic_discriminator_loss(dr, df), F.softplus(-dr).mean() + F.softplus(df).mean())
    # 1-D Gaussians N(0,1) (real) vs N(1, 2^2) (fake); logistic regression on (1, x, x^2)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    xr = torch.randn(n, generator=g, dtype=D64)
    xf = 1 + 2 * torch.randn(n, generator=g, dtype=D64)

    def feats(x):
        return torch.stack([torch.ones_like(x), x, x * x], 1)

    fr, ff = feats(xr), feats(xf)

    def loss(w):
        return logistic_discriminator_loss(fr @ w, ff @ w)

    w = torch.zeros(3, dtype=D64)
    for _ in range(12):  # Newton on a convex objective
        w = w - torch.linalg.solve(
            torch.autograd.functional.hessian(loss, w), torch.autograd.functional.jacobian(loss, w)
        )
    # log N(x;0,1) - log N(x;1,4) = log 2 - x^2/2 + (x-1)^2/8
    exact = torch.tensor([math.log(2) + 1 / 8, -1 / 4, -0.5 + 1 / 8], dtype=D64)
    assert torch.allclose(w, exact, atol=0.05)


def test_regression_loss_gradient_is_2eps_times_minus_d_gradient():
    G = _mlp(3, out=2, act=nn.Tanh)
    Dn = _mlp(4)
    z = torch.randn(32, 2, dtype=D64)
    eps = 0.05
    g_out = G(z)
    x = g_out.detach().requires_grad_(True)
    (v,) = torch.autograd.grad(Dn(x).sum(), x)
    reg = generator_regression_loss(g_out, v, eps)
    assert reg.item() == pytest.approx(eps**2 * v.pow(2).sum(1).mean().item())
    gr = torch.autograd.grad(reg, list(G.parameters()))
    gd = torch.autograd.grad(-Dn(G(z)).mean(), list(G.parameters()))
    for a, b in zip(gr, gd):
        assert torch.allclose(a, 2 * eps * b, atol=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        generator_regression_loss(g_out, v[:, :1], eps)
    with pytest.raises(ValueError, match="eps must be"):
        generator_regression_loss(g_out, v, 0.0)


def test_gn_bce_and_hinge_formulas():
    fr = torch.tensor([0.5, -0.2], dtype=D64)
    ff = torch.tensor([-0.5], dtype=D64)
    expect = -(torch.log((1 + fr) / 2).mean() + torch.log((1 - ff) / 2).mean())
    assert torch.allclose(gn_bce_critic_loss(fr, ff), expect)
    assert torch.allclose(gn_bce_generator_loss(ff), -torch.log((1 + ff) / 2).mean())
    tr, tf = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert torch.allclose(hinge_critic_loss(tr, tf), torch.tensor(0.25 + 0.5))
