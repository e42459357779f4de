import math

import pytest
import torch

from kexue.data import eight_gaussian_centres
from kexue.metrics import mmd_rbf, mode_stats, sliced_wasserstein

D64 = torch.float64


def test_sliced_wasserstein_exact_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 2, generator=g, dtype=D64)
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(500, generator=g)]) == pytest.approx(0.0, abs=1e-12)
    # a shift by c: every projection moves by <c, u>; mean over directions of <c,u>^2 = ||c||^2 / 2 in 2-D
    c = torch.tensor([3.0, -4.0], dtype=D64)
    val = sliced_wasserstein(x, x + c, n_projections=4000)
    assert val == pytest.approx(math.sqrt(25 / 2), rel=0.03)
    assert sliced_wasserstein(x, x + c, seed=3) == sliced_wasserstein(x, x + c, seed=3)


def test_mmd_zero_for_same_distribution_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    same = mmd_rbf(a, b)
    diff = mmd_rbf(a, b + 1.0)
    assert abs(same) < 0.01 < diff


def test_mode_stats_counts_modes_and_quality():
    centres = eight_gaussian_centres(2.0)
    g = torch.Generator().manual_seed(2)
    x = centres[torch.arange(800) % 8] + 0.05 * torch.randn(800, 2, generator=g)
    s = mode_stats(x, centres, 0.05)
    assert s["modes"] == 8 and s["high_quality"] > 0.95
    only_two = torch.cat([x[torch.arange(800) % 8 < 2], torch.zeros(600, 2)])
    s2 = mode_stats(only_two, centres, 0.05)
    assert s2["modes"] == 2 and s2["high_quality"] == pytest.approx(200 / 800, abs=0.02)


def test_metric_bad_inputs():
    x = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="same shape"):
        sliced_wasserstein(x, torch.zeros(9, 2))
    with pytest.raises(ValueError, match="non-finite"):
        sliced_wasserstein(x, x + float("nan"))
    with pytest.raises(ValueError, match=r"shape \(n, dim\)"):
        mmd_rbf(torch.zeros(10), x)
    with pytest.raises(ValueError, match="std"):
        mode_stats(x, eight_gaussian_centres(), 0.0)
