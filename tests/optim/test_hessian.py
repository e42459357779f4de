import math

import pytest
import torch
from torch import nn

from kexue.optim.hessian import (
    SecondMomentAverager,
    adam_v_hat,
    ema_moments,
    hessian_alignment,
    monte_carlo_second_moment,
    second_moment_identity,
    spearman,
)

D = torch.float64


def test_alignment_slopes_exact():
    h = torch.logspace(-2, 2, 30, dtype=D)
    a = hessian_alignment((3.0 * h) ** 2, h)
    assert a.slope == pytest.approx(1.0, abs=1e-12) and a.intercept == pytest.approx(math.log(3.0), abs=1e-12)
    assert a.spearman == pytest.approx(1.0)
    b = hessian_alignment((0.5 * h.sqrt()) ** 2, h)
    assert b.slope == pytest.approx(0.5, abs=1e-12) and b.n == 30


def test_identity_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(16, 16, generator=gen, dtype=D)
    H = (M + M.T) / 2
    sigma = 0.3
    n = 20000
    exact = second_moment_identity(H, sigma)
    mc = monte_carlo_second_moment(H, sigma, n, generator=gen)
    # g_i² has variance 2 E[g_i²]² for a Gaussian g_i: standard error sqrt(2/n) relative
    rel = (mc - exact).abs() / exact
    assert (rel < 5 * math.sqrt(2.0 / n)).all()
    assert not torch.allclose(exact, sigma**2 * torch.diagonal(H) ** 2)  # off-diagonal mass counts


def test_averager_reads_torch_adam_state():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5, dtype=D))
    opt = torch.optim.Adam([p], lr=0.01, betas=(0.9, 0.99))
    avg = SecondMomentAverager(opt)
    v = torch.zeros(5, dtype=D)
    manual = torch.zeros(5, dtype=D)
    for t in range(1, 11):
        g = torch.randn(5, dtype=D)
        p.grad = g
        opt.step()
        v = 0.99 * v + 0.01 * g * g
        manual += v / (1 - 0.99**t)
        avg.update()
    torch.testing.assert_close(adam_v_hat(opt, p), v / (1 - 0.99**10))
    torch.testing.assert_close(avg.mean(), manual / 10)
    assert hessian_alignment(opt, torch.arange(1.0, 6.0, dtype=D)).n == 5


def test_adam_noise_free_quadratic_is_scale_invariant():
    ratios = []
    for h in (0.1, 1.0, 10.0):
        x = nn.Parameter(torch.tensor([1.0], dtype=D))
        opt = torch.optim.Adam([x], lr=1e-2, eps=1e-14)
        avg = SecondMomentAverager(opt)
        for t in range(600):
            opt.zero_grad()
            (0.5 * h * x**2).sum().backward()
            opt.step()
            if t >= 300:
                avg.update()
        v = avg.mean()
        assert torch.isfinite(v).all()
        ratios.append(float(v.sqrt()) / h)
    assert ratios[0] == pytest.approx(ratios[1], rel=1e-6) and ratios[2] == pytest.approx(ratios[1], rel=1e-6)


def test_centred_moment_tracks_h_squared_at_shifted_point():
    gen = torch.Generator().manual_seed(1)
    h = torch.logspace(-1, 1, 12, dtype=D)
    shift = 5.0  # constant gradient offset: not a stationary point
    delta = 0.1 * torch.randn(4000, 12, generator=gen, dtype=D)
    grads = shift + h * delta
    v, s = ema_moments(grads, 0.9, 0.999)
    centred = hessian_alignment(s, h)
    uncentred = hessian_alignment(v, h)
    assert centred.slope == pytest.approx(1.0, abs=0.1)
    assert abs(uncentred.slope) < 0.1


def test_spearman_ties():
    assert spearman(torch.tensor([1.0, 2.0, 2.0, 3.0]), torch.tensor([1.0, 2.0, 2.0, 3.0])) == pytest.approx(
        1.0
    )
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_bad_inputs():
    h = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="> 0"):
        hessian_alignment(torch.ones(3), torch.tensor([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="> 0"):
        hessian_alignment(torch.ones(3), torch.tensor([1.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="entries"):
        hessian_alignment(torch.ones(4), h)
    with pytest.raises(ValueError, match="at least 3"):
        hessian_alignment(torch.ones(2), h[:2])
    assert hessian_alignment(
        torch.tensor([1.0, 4.0, 9.0, 0.0]),
        torch.tensor([1.0, 2.0, 3.0, 0.0]),
        mask=torch.tensor([1, 1, 1, 0]),
    ).slope == pytest.approx(1.0)
    with pytest.raises(ValueError, match="square"):
        second_moment_identity(torch.ones(2, 3), 1.0)
