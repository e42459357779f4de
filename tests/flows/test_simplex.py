import math

import pytest
import torch

from kexue.flows.simplex import fw_gap, minimize_on_simplex, project_to_simplex

D64 = torch.float64


def test_projection_invariants():
    g = torch.Generator().manual_seed(0)
    y = 2 * torch.randn(50, 30, generator=g, dtype=D64)
    p, lam = project_to_simplex(y, return_threshold=True)
    assert float(p.min()) >= 0
    assert float((p.sum(-1) - 1).abs().max()) < 1e-12
    assert torch.allclose(p, torch.relu(y - lam[:, None]))
    assert torch.allclose(project_to_simplex(p), p, atol=1e-15)  # idempotent
    assert torch.allclose(project_to_simplex(y + 3.7), p, atol=1e-12)  # shift invariant
    # along another dim
    assert torch.allclose(project_to_simplex(y.T, dim=0), p.T)
    # it is the Euclidean projection: no simplex point is closer (random candidates)
    cand = torch.distributions.Dirichlet(torch.ones(30, dtype=D64)).sample((200,))
    best = (p[0] - y[0]).pow(2).sum()
    assert bool(((cand - y[0]).pow(2).sum(-1) >= best - 1e-12).all())


def test_fw_gap_properties():
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(20, 8, generator=g, dtype=D64)
    p = torch.softmax(torch.randn(20, 8, generator=g, dtype=D64), -1)
    assert bool((fw_gap(p, grad) >= 0).all())
    # support inside argmin -> zero gap
    grad2 = torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=D64)
    assert float(fw_gap(torch.tensor([0.0, 0.3, 0.7, 0.0], dtype=D64), grad2)) == 0.0
    assert float(fw_gap(torch.tensor([0.1, 0.2, 0.7, 0.0], dtype=D64), grad2)) > 0
    with pytest.raises(ValueError, match="same shape"):
        fw_gap(p, grad[:, :3])


@pytest.mark.parametrize("n", [10, 100])
def test_all_solvers_agree_on_sparsemax(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=g, dtype=D64)

    def F(p):
        return (p - x).pow(2).sum(-1)

    ref = F(project_to_simplex(x))
    p0 = torch.full((5, n), 1.0 / n, dtype=D64)
    runs = {
        "afw": minimize_on_simplex(F, p0=p0, steps=500, step_size="line_search", away_steps=True, tol=1e-12),
        "pgd": minimize_on_simplex(F, p0=p0, method="projected", steps=50, step_size=0.5),
        "kkt": minimize_on_simplex(
            F, p0=p0, method="kkt_bisection", steps=80, grad_inverse=lambda nu: torch.clamp(x + nu / 2, min=0)
        ),
    }
    for name, (p, hist) in runs.items():
        assert float((F(p) - ref).abs().max()) < 1e-9, name
        assert float(hist["gap"][-1].max()) < 1e-8, name
        assert float(p.min()) >= 0 and float((p.sum(-1) - 1).abs().max()) < 1e-12, name


def test_frank_wolfe_stays_on_simplex_and_objective_decreases_with_line_search():
    g = torch.Generator().manual_seed(3)
    n = 30
    m = torch.randn(n, n, generator=g, dtype=D64)
    q = m @ m.T / n + 0.1 * torch.eye(n, dtype=D64)
    c = torch.randn(n, generator=g, dtype=D64)

    def F(p):
        return 0.5 * (p @ q * p).sum(-1) + p @ c

    for kwargs in ({"step_size": "2/(k+2)"}, {"step_size": 0.1}, {"step_size": "line_search"}):
        p, hist = minimize_on_simplex(F, n=n, steps=200, **kwargs)
        assert float(p.min()) >= 0 and abs(float(p.sum()) - 1) < 1e-12
    obj = hist["objective"]
    assert bool((obj[1:] <= obj[:-1] + 1e-15).all())
    # optimality: p . grad == min grad up to the gap; F - F* <= gap (convex)
    pa, ha = minimize_on_simplex(F, n=n, steps=2000, step_size="line_search", away_steps=True, tol=1e-13)
    grad = pa @ q + c
    assert float(fw_gap(pa, grad)) < 1e-12
    assert float(obj[-1] - F(pa)) <= float(hist["gap"][-1]) + 1e-15


def test_entropy_regularised_linear_objective_is_softmax():
    g = torch.Generator().manual_seed(4)
    c = torch.randn(3, 20, generator=g, dtype=D64)
    tau = 0.5

    def F(p):
        return -(c * p).sum(-1) + tau * torch.xlogy(p, p).sum(-1)

    expect = torch.softmax(c / tau, -1)
    p, _ = minimize_on_simplex(
        F,
        n=20,
        p0=torch.full((3, 20), 0.05, dtype=D64),
        steps=2000,
        step_size="line_search",
        away_steps=True,
        tol=1e-11,
    )
    assert torch.allclose(p, expect, atol=1e-5)
    pk, _ = minimize_on_simplex(
        F,
        p0=torch.full((3, 20), 0.05, dtype=D64),
        method="kkt_bisection",
        steps=100,
        grad_inverse=lambda nu: torch.exp((nu + c) / tau - 1),
    )
    assert torch.allclose(pk, expect, atol=1e-12)


def test_argmin_ties_are_deterministic():
    p, hist = minimize_on_simplex(grad_F=lambda p: torch.zeros_like(p), n=4, steps=1)
    # all gradients tie: the vertex chosen is the lowest index, so p moves towards e_0
    assert torch.allclose(p, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=D64))
    assert "objective" not in hist


def test_bad_inputs():
    def F(p):
        return p.pow(2).sum(-1)

    with pytest.raises(ValueError, match="sum to 1"):
        minimize_on_simplex(F, p0=torch.tensor([0.5, 0.6], dtype=D64))
    with pytest.raises(ValueError, match=">= 0"):
        minimize_on_simplex(F, p0=torch.tensor([1.5, -0.5], dtype=D64))
    with pytest.raises(ValueError, match="n must be a positive int"):
        minimize_on_simplex(F, n=-3)
    with pytest.raises(ValueError, match="gradient must have the shape"):
        minimize_on_simplex(grad_F=lambda p: p[..., :1], n=3)
    with pytest.raises(ValueError, match="non-finite"):
        minimize_on_simplex(lambda p: p.sum(-1) * math.inf, n=3)
    with pytest.raises(ValueError, match="needs grad_inverse"):
        minimize_on_simplex(F, n=3, method="kkt_bisection")
    with pytest.raises(ValueError, match="away_steps=True needs"):
        minimize_on_simplex(F, n=3, away_steps=True)
    with pytest.raises(ValueError, match="step_size"):
        minimize_on_simplex(F, n=3, method="projected")
    with pytest.raises(ValueError, match="non-finite"):
        project_to_simplex(torch.tensor([1.0, float("nan")]))
