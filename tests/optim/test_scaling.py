import math

import numpy as np
import pytest
import torch

from kexue.optim.scaling import estimate_noise_scale, optimal_lr, simulate_one_step, softsign_moments

D = torch.float64


def _problem(d=20, rho=0.1, seed=0):
    rng = np.random.default_rng(seed)
    g = torch.tensor(0.01 * np.abs(rng.normal(1.0, 0.3, d)))
    H = (1 - rho) * torch.eye(d, dtype=D) + rho * torch.ones(d, d, dtype=D)
    return g, H, torch.full((d,), 0.01, dtype=D)


def test_sgd_exact_is_argmin_of_quadratic_expectation():
    g, H, s2 = _problem()
    B = torch.tensor([1.0, 7.0, 100.0])
    res = optimal_lr(g, H, s2, B, "sgd")
    for b, eta in zip(B, res.eta_opt):
        # E[L(θ - ηũ)] - L = -η gᵀg + ½η²(gᵀHg + Tr(ΣH)/B): minimise in closed form independently
        a = float(g @ g)
        c = float(g @ H @ g + (s2 * torch.diagonal(H)).sum() / b)
        assert float(eta) == pytest.approx(a / c, rel=1e-12)
        assert float(res.delta_loss[B == b][0]) == pytest.approx(a * a / (2 * c), rel=1e-12)
    assert res.summary["eta_max"] == pytest.approx(float(g @ g / (g @ H @ g)), rel=1e-12)
    assert (res.eta_opt[1:] > res.eta_opt[:-1]).all()


def test_sign_moments_match_monte_carlo_and_limit():
    g, H, s2 = _problem()
    gen = torch.Generator().manual_seed(0)
    n = 20000
    b = 4.0
    gt = g + torch.randn(n, g.numel(), generator=gen, dtype=D) * torch.sqrt(s2 / b)
    mc = torch.sign(gt).mean(0)
    mu, _ = softsign_moments(g, torch.sqrt(s2 / b), 0.0)
    se = torch.sqrt((1 - mc**2) / n)
    assert ((mc - mu).abs() <= 4 * se + 1e-12).all()
    big = optimal_lr(g, H, s2, [1e12], "sign").eta_opt[0]
    sg = torch.sign(g)
    assert float(big) == pytest.approx(float(g.abs().sum() / (sg @ H @ sg)), rel=1e-9)


def test_softsign_limits():
    g, H, s2 = _problem()
    B = [1.0, 16.0, 1024.0]
    sgd = optimal_lr(g, H, s2, B, "sgd").eta_opt
    eps = 1e4 * float(g.abs().max())
    soft = optimal_lr(g, H, s2, B, "softsign", eps=eps).eta_opt
    torch.testing.assert_close(soft / eps, sgd, rtol=1e-3, atol=0)
    sign = optimal_lr(g, H, s2, B, "sign").eta_opt
    tiny = optimal_lr(g, H, s2, B, "softsign", eps=1e-9).eta_opt
    torch.testing.assert_close(tiny, sign, rtol=1e-4, atol=0)
    # approx, ε -> ∞: η*/ε -> Σg² / (gᵀHg + π mean(σ²) Tr H / (2B))
    approx = optimal_lr(g, H, s2, B, "softsign", eps=eps, method="approx").eta_opt
    Bt = torch.tensor(B, dtype=D)
    limit = (g @ g) / (g @ H @ g + math.pi * s2.mean() * torch.trace(H) / (2 * Bt))
    torch.testing.assert_close(approx / eps, limit, rtol=1e-3, atol=0)


def test_softsign_quadrature_against_fine_grid():
    g = torch.tensor([0.01, 0.003, 0.0, -0.02], dtype=D)
    s = torch.tensor([0.1 / 64, 0.1, 0.05, 0.001], dtype=D)
    z = torch.linspace(-12, 12, 400001, dtype=D)
    w = torch.exp(-z * z / 2) / math.sqrt(2 * math.pi) * (z[1] - z[0])
    for eps in (1e-4, 1e-2, 1.0):
        m1, m2 = softsign_moments(g, s, eps)
        x = g[:, None] + s[:, None] * z
        f = x / torch.sqrt(x * x + eps * eps)
        torch.testing.assert_close(m1, (f * w).sum(1), rtol=0, atol=1e-6)
        torch.testing.assert_close(m2, (f * f * w).sum(1), rtol=0, atol=1e-6)


def test_approx_identities_and_scaling():
    g, H, s2 = _problem(d=100)
    res = optimal_lr(g, H, s2, [1, 16, 256], "sign", method="approx")
    sm = res.summary
    assert sm["has_surge"]
    assert 1 / sm["B_noise2"] - 1 / sm["B_noise"] == pytest.approx(4 / (math.pi * sm["kappa2"]), rel=1e-10)
    # ΔL formula consistent with the ΔL_max / (1 + B_noise2 / B) form
    B = res.batch_sizes
    torch.testing.assert_close(
        res.delta_loss, sm["delta_loss_max"] / (1 + sm["B_noise2"] / B), rtol=1e-10, atol=0
    )
    # scaling: g, σ -> c g, c σ: SGD η* unchanged, sign η* times c; H -> cH divides both by c
    c = 3.0
    for rule, factor in (("sgd", 1.0), ("sign", c)):
        base = optimal_lr(g, H, s2, [4, 64], rule).eta_opt
        scaled = optimal_lr(c * g, H, c * c * s2, [4, 64], rule).eta_opt
        torch.testing.assert_close(scaled, factor * base, rtol=1e-9, atol=0)
        torch.testing.assert_close(
            optimal_lr(g, c * H, s2, [4, 64], rule).eta_opt, base / c, rtol=1e-9, atol=0
        )


def test_monte_carlo_one_step_argmin():
    g, H, s2 = _problem()
    etas = torch.logspace(-4, 0, 200, dtype=D)
    for rule in ("sgd", "sign"):
        exact = float(optimal_lr(g, H, s2, [16], rule).eta_opt[0])
        loss = simulate_one_step(
            g, H, s2, 16, etas, rule, n_draws=4000, generator=torch.Generator().manual_seed(1)
        )
        best = float(etas[int(torch.argmin(loss))])
        assert abs(math.log(best / exact)) <= math.log(float(etas[1] / etas[0])) * 1.01


def test_noise_scale_estimate():
    gen = torch.Generator().manual_seed(0)
    G = torch.tensor([1.0, 2.0], dtype=D)
    x = G + 3.0 * torch.randn(20000, 2, generator=gen, dtype=D)
    assert estimate_noise_scale(x) == pytest.approx(18.0 / 5.0, rel=0.05)


def test_bad_inputs():
    g, H, s2 = _problem(d=4)
    with pytest.raises(ValueError, match="square"):
        optimal_lr(g, H[:, :3], s2, [1])
    with pytest.raises(ValueError, match="symmetric"):
        optimal_lr(g, H + torch.triu(torch.ones(4, 4, dtype=D), 1), s2, [1])
    with pytest.raises(ValueError, match="sigma2"):
        optimal_lr(g, H, -s2, [1])
    with pytest.raises(ValueError, match="batch"):
        optimal_lr(g, H, s2, [0, 4])
    with pytest.raises(ValueError, match="rule"):
        optimal_lr(g, H, s2, [1], rule="adam")
    with pytest.raises(ValueError, match="positive definite"):
        optimal_lr(g, -H, s2, [1])
    with pytest.raises(ValueError, match="sigma2"):
        optimal_lr(g, H, s2[:3], [1])
