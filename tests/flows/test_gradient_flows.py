import math

import pytest
import torch

from kexue.flows.density import density_flow_1d, density_flow_particles, functional_value_1d
from kexue.flows.gradient import gradient_descent, gradient_flow, natural_gradient_step, proximal_step
from kexue.flows.particles import fokker_planck_1d, kde_score, langevin, probability_flow_particles

D64 = torch.float64
A = torch.diag(torch.tensor([1.0, 10.0], dtype=D64))


def quad(x):
    return 0.5 * (x @ A * x).sum(-1)


def test_gd_is_bitwise_euler_and_f_decreases_for_small_steps():
    x0 = torch.tensor([[1.0, 1.0], [-0.3, 2.0]], dtype=D64)
    gd = gradient_descent(x0, 0.01, 50, f=quad, return_path=True)
    fl = gradient_flow(x0, 0.5, 50, grad=lambda x: x @ A, return_path=True)
    assert torch.equal(gd, fl)
    vals = quad(gradient_descent(x0, 0.19, 100, f=quad, return_path=True))  # alpha < 2/L = 0.2
    assert bool((vals[1:] <= vals[:-1]).all())
    diverge = quad(gradient_descent(x0, 0.21, 100, f=quad, return_path=True))
    assert float(diverge[-1].max()) > 1e3


def test_rk4_matches_exponential_and_convergence_orders():
    x0 = torch.tensor([1.0, 1.0], dtype=D64)
    exact = torch.matrix_exp(-A) @ x0
    e_euler = [float((gradient_flow(x0, 1.0, n, f=quad) - exact).norm()) for n in (100, 200, 400)]
    slope = math.log(e_euler[0] / e_euler[2]) / math.log(4)
    assert 0.9 < slope < 1.1
    e_rk4 = [float((gradient_flow(x0, 1.0, n, f=quad, method="rk4") - exact).norm()) for n in (40, 80)]
    assert 3.7 < math.log2(e_rk4[0] / e_rk4[1]) < 4.3
    # ||x||^2 / 2: x(t) = x0 exp(-t)
    sq = gradient_flow(x0, 1.0, 100, grad=lambda x: x, method="rk4")
    assert torch.allclose(sq, x0 * math.exp(-1.0), atol=1e-10, rtol=0)


def test_proximal_and_natural_gradient_steps():
    x = torch.tensor([[0.7, -0.4]], dtype=D64)
    gd = x - 0.05 * (x @ A)
    assert torch.allclose(proximal_step(x, 0.05, f=quad), gd, atol=1e-10)
    implicit = torch.linalg.solve(torch.eye(2, dtype=D64) + 0.05 * A, x[0])  # (I + alpha A)^-1 x
    assert torch.allclose(proximal_step(x, 0.05, f=quad, linearize=False)[0], implicit, atol=1e-10)
    g = x[0] @ A
    assert torch.allclose(natural_gradient_step(x[0], g, torch.eye(2, dtype=D64), 0.05), gd[0])
    # Gaussian N(m, s^2) in (m, log s): f = KL(q || N(0,1)), Fisher diag(1/s^2, 2)
    theta = torch.tensor([0.8, math.log(1.5)], dtype=D64)
    m, s = theta[0], theta[1].exp()
    grad = torch.stack([m, s * s - 1])
    fisher = torch.diag(torch.stack([1 / s**2, torch.tensor(2.0, dtype=D64)]))
    step = natural_gradient_step(theta, grad, fisher, 0.1)
    assert torch.allclose(step, torch.stack([m - 0.1 * s * s * m, theta[1] - 0.1 * (s * s - 1) / 2]))
    with pytest.raises(ValueError, match="shapes must be"):
        natural_gradient_step(theta, grad[:1], fisher, 0.1)


def test_langevin_pure_diffusion_and_ou_moments():
    g = torch.Generator().manual_seed(0)
    x = langevin(lambda z: torch.zeros_like(z), torch.zeros(50_000, 1, dtype=D64), 0.01, 50, generator=g)
    assert float(x.var()) == pytest.approx(2 * 0.01 * 50, rel=0.02)
    # OU: target N(1, 0.5^2), start N(0, 2^2); moments at t = 0.5
    m, s2 = 1.0, 0.25
    x0 = 2 * torch.randn(30_000, 1, generator=g, dtype=D64)
    xt = langevin(lambda z: -(z - m) / s2, x0, 1e-3, 500, generator=g)
    decay = math.exp(-0.5 / s2)
    assert float(xt.mean()) == pytest.approx(m + decay * (0 - m), abs=0.02)
    assert float(xt.var()) == pytest.approx(s2 + decay**2 * (4 - s2), rel=0.03)


def test_fokker_planck_conserves_mass_and_keeps_target_stationary():
    x = torch.linspace(-6, 6, 301, dtype=D64)
    dx = float(x[1] - x[0])

    def log_p(z):
        return torch.logaddexp(-((z - 2) ** 2) / 0.5, -((z + 2) ** 2) / 0.5)

    p = log_p(x).exp()
    p = p / (p.sum() * dx)
    q0 = torch.exp(-x.pow(2) / (2 * 0.09))
    q0 = q0 / (q0.sum() * dx)
    q = fokker_planck_1d(log_p, q0, x, 1e-3, 500)
    assert abs(float(q.sum() * dx) - 1) < 1e-10
    assert float((fokker_planck_1d(log_p, p, x, 1e-3, 100) - p).abs().max()) < 1e-6
    qe = fokker_planck_1d(log_p, q0, x, 1e-4, 5000, method="explicit")
    assert float((qe - q).abs().sum() * dx) < 0.01  # the two time discretisations agree
    with pytest.raises(ValueError, match="explicit scheme unstable"):
        fokker_planck_1d(log_p, q0, x, 0.1, 2, method="explicit")


def test_density_flow_mass_fixed_point_and_monotone_functional():
    grid = torch.linspace(-8, 8, 201, dtype=D64)
    dx = float(grid[1] - grid[0])

    def phi(p, z):
        return torch.log(p.clamp_min(1e-300)) + 1 + z * z / 2

    def F(p, z):
        return torch.xlogy(p, p) + p * z * z / 2

    gibbs = torch.exp(-grid.pow(2) / 2)
    gibbs = gibbs / (gibbs.sum() * dx)
    assert float((density_flow_1d(phi, gibbs, grid, 1e-3, 50) - gibbs).abs().max()) < 1e-8
    p0 = torch.exp(-(grid - 2).pow(2) / 0.5)
    p0 = p0 / (p0.sum() * dx)
    p, snaps = density_flow_1d(phi, p0, grid, 1e-3, 400, record_every=20)
    assert abs(float(p.sum() * dx) - 1) < 1e-12
    vals = functional_value_1d(F, snaps, grid)
    assert bool((vals[1:] < vals[:-1]).all())
    # porous medium: support spreads, mass conserved
    bump = torch.clamp(1 - grid.pow(2), min=0)
    bump = bump / (bump.sum() * dx)
    pm = density_flow_1d(lambda p, z: p, bump, grid, 1e-3, 500)
    assert abs(float(pm.sum() * dx) - 1) < 1e-12
    assert int((pm > 1e-8).sum()) > int((bump > 0).sum())
    with pytest.raises(ValueError, match="too large"):
        density_flow_1d(phi, p0, grid, 0.5, 5)


def test_particles_kde_score_and_flows_reduce_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 2, generator=g, dtype=D64)
    # kde_score is the gradient of the KDE log density
    from kexue.flows.particles import kde_log_density

    xr = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(kde_log_density(xr, x, 0.3).sum(), xr)
    assert torch.allclose(kde_score(x, 0.3), auto)
    # deterministic particle flow towards N(0, 0.5^2 I) from N(0, I): spread shrinks monotonically
    _, snaps = probability_flow_particles(lambda z: -z / 0.25, x, 0.01, 60, bandwidth=0.3, record_every=10)
    spread = snaps.var(dim=1).sum(-1)
    assert bool((spread[1:] < spread[:-1]).all())
    # 1-D density particles move the mean as the OU flow
    u = (torch.arange(300, dtype=D64) + 0.5) / 300
    x0 = (2 + 0.5 * math.sqrt(2) * torch.erfinv(2 * u - 1))[:, None]

    def phi(p, z):
        return torch.log(p.clamp_min(1e-300)) + 1 + z * z / 2

    xt = density_flow_particles(phi, x0, 0.01, 50, bandwidth=0.15)
    assert float(xt.mean()) == pytest.approx(2 * math.exp(-0.5), rel=0.02)


def test_bad_inputs():
    x = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="step_size must be"):
        langevin(lambda z: z, x, 0.0, 3)
    with pytest.raises(ValueError, match="must return the shape of x"):
        langevin(lambda z: z[:, :1], x, 0.1, 3)
    with pytest.raises(ValueError, match="non-finite"):
        langevin(lambda z: z + math.inf, x, 0.1, 3)
    with pytest.raises(ValueError, match="lr must be"):
        gradient_descent(x, -0.1, 3, f=lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="exactly one of"):
        gradient_descent(x, 0.1, 3)
    with pytest.raises(ValueError, match="gradient must have the shape"):
        gradient_flow(x, 1.0, 3, grad=lambda z: z[:, :1])
    with pytest.raises(ValueError, match="steps must be"):
        gradient_flow(x, 1.0, 0, grad=lambda z: z)
