import pytest
import torch
from torch import nn

from kexue.flows.rectified import RectifiedFlow, VelocityMLP, gaussian_oracle_velocity, straightness
from kexue.losses.gan import generator_regression_loss, reflow_gan_critic_loss, wgan_generator_loss

D64 = torch.float64


def test_constant_coupling_loss_zero_and_one_euler_step_exact():
    c = torch.tensor([0.5, -2.0], dtype=D64)
    flow = RectifiedFlow(lambda x, t: c.expand_as(x))
    x0 = torch.randn(50, 2, dtype=D64)
    loss, (t, x_t, target) = flow.loss(x0, x0 + c, return_parts=True)
    assert float(loss) < 1e-28  # round-off of (x0 + c) - x0 only
    assert t.shape == (50, 1) and torch.allclose(target, c.expand(50, 2))
    assert torch.allclose(x_t, x0 + t * c)
    assert torch.allclose(flow.sample(x0, steps=1), x0 + c)
    assert straightness(flow, x0, steps=10) < 1e-28


def test_loss_with_given_t_is_deterministic_and_matches_formula():
    torch.manual_seed(0)
    net = VelocityMLP(2, 16, 2).double()
    flow = RectifiedFlow(net)
    x0, x1 = torch.randn(8, 2, dtype=D64), torch.randn(8, 2, dtype=D64)
    t = torch.rand(8, dtype=D64)
    a, b = flow.loss(x0, x1, t=t), flow.loss(x0, x1, t=t[:, None])
    assert float(a.detach()) == float(b.detach())
    tt = t[:, None]
    xt = (1 - tt) * x0 + tt * x1
    expect = (net(xt, tt) - (x1 - x0)).pow(2).sum(1).mean()
    assert torch.allclose(a, expect)
    with torch.no_grad():
        first = flow.loss(x0, x1, generator=torch.Generator().manual_seed(3))
        again = flow.loss(x0, x1, generator=torch.Generator().manual_seed(3))
    assert float(first) == float(again)


def test_euler_one_step_and_samplers_agree_on_smooth_field():
    def v(x, t):
        return -x * (1 + t)

    flow = RectifiedFlow(v)
    x0 = torch.randn(10, 2, dtype=D64)
    assert torch.allclose(flow.sample(x0, 1), x0 + v(x0, torch.zeros(10, 1, dtype=D64)))
    exact = x0 * torch.exp(torch.tensor(-1.5, dtype=D64))  # x(1) = x0 exp(-(t + t^2/2))
    err = {m: float((flow.sample(x0, 20, m) - exact).abs().max()) for m in ("euler", "heun", "rk4")}
    assert err["rk4"] < err["heun"] < err["euler"]
    assert err["rk4"] < 1e-6
    assert float((flow.sample(x0, 100, "rk4") - exact).abs().max()) < 1e-9
    path = flow.sample(x0, 5, return_path=True)
    assert path.shape == (6, 10, 2) and torch.equal(path[0], x0)


def test_gaussian_oracle_maps_each_point_to_mu_plus_s_x0():
    mu, s = torch.tensor([1.0, -2.0], dtype=D64), 0.5
    flow = RectifiedFlow(gaussian_oracle_velocity(mu, s))
    x0 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=D64)
    x1 = flow.sample(x0, 100, "rk4")
    assert float((x1 - (mu + s * x0)).abs().max()) < 1e-6
    # sigma_t path: x_t = sqrt((1-t)^2 + t^2 s^2) x0 + t mu
    path = flow.sample(x0[:5], 100, "rk4", return_path=True)
    t = 0.3
    sig = ((1 - t) ** 2 + t * t * s * s) ** 0.5
    assert torch.allclose(path[30], sig * x0[:5] + t * mu, atol=1e-8)


def test_reflow_straightens_a_toy_flow():
    """1-RF on N(0,1) -> two points +-2 (crossing paths), then one reflow: straightness must drop."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    def data(n):
        return torch.where(torch.rand(n, 1, generator=g) < 0.5, -2.0, 2.0) * torch.ones(
            n, 2
        ) + 0.1 * torch.randn(n, 2, generator=g)

    net = VelocityMLP(2, 64, 2)
    flow = RectifiedFlow(net)
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(300):
        loss = flow.loss(torch.randn(256, 2, generator=g), data(256), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    z_eval = torch.randn(1000, 2, generator=g)
    s1 = straightness(flow, z_eval, steps=50)
    z0, z1 = flow.reflow_pairs(torch.randn(4000, 2, generator=g), steps=50)
    for _ in range(300):
        idx = torch.randint(0, 4000, (256,), generator=g)
        loss = flow.loss(z0[idx], z1[idx], generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s2 = straightness(flow, z_eval, steps=50)
    assert s2 < 0.5 * s1


def test_reflow_gan_identities_linear_and_general_critic():
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(64, 2, generator=g, dtype=D64), torch.randn(64, 2, generator=g, dtype=D64)
    t = torch.rand(64, generator=g, dtype=D64)
    w = torch.tensor([0.7, -1.3], dtype=D64)

    def linear_d(x):
        return x @ w + 0.2

    # ReFlow loss with v = grad D (factor 1/2) minus 0.5 E||x1 - x0||^2 == L_D exactly for linear D
    flow = RectifiedFlow(lambda x, tt: w.expand_as(x))
    rf = 0.5 * flow.loss(x0, x1, t=t) - 0.5 * (x1 - x0).pow(2).sum(1).mean()
    assert torch.allclose(rf, reflow_gan_critic_loss(linear_d, x0, x1, t=t))
    # generator: regression loss gradient == 2 eps * gradient of -E[D(g)]
    torch.manual_seed(2)
    G = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()
    Dn = nn.Sequential(nn.Linear(2, 16), nn.Softplus(), nn.Linear(16, 1)).double()
    z = torch.randn(32, 2, dtype=D64)
    out = G(z)
    xg = out.detach().requires_grad_(True)
    (v,) = torch.autograd.grad(Dn(xg).sum(), xg)
    reg = torch.autograd.grad(generator_regression_loss(out, v, 0.1), list(G.parameters()))
    ref = torch.autograd.grad(wgan_generator_loss(Dn(G(z))), list(G.parameters()))
    for a, b in zip(reg, ref):
        assert torch.allclose(a, 0.2 * b, atol=1e-12)


def test_bad_inputs():
    flow = RectifiedFlow(lambda x, t: torch.zeros_like(x))
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="same shape"):
        flow.loss(x, torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        flow.loss(x, x, t=torch.full((4,), 1.5))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        flow.sample(x, 0)
    with pytest.raises(ValueError, match="method must be"):
        flow.sample(x, 2, "rk45")
    with pytest.raises(ValueError, match="must return the shape of x"):
        RectifiedFlow(lambda x, t: x[:, :1]).sample(x, 1)
    with pytest.raises(TypeError, match="callable"):
        RectifiedFlow(3)
