"""Quanta model of scaling: Zipf identities, exact tails, Euler-Maclaurin expectation, Monte Carlo, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kexue.sim.quanta import (
    expected_loss_data,
    expected_loss_data_truncated,
    expected_loss_steps,
    learned_probability,
    loss_vs_quanta,
    loss_vs_quanta_asymptotic,
    simulate_loss_data,
    tail_mass,
    zipf_probabilities,
)


def test_zipf_probabilities_sum_to_one_and_decrease() -> None:
    for gamma in (0.2, 0.4, 1.5):
        p = zipf_probabilities(gamma, 10_000)
        assert np.all(np.diff(p) < 0)
        assert p.sum() + tail_mass(gamma, 10_000) == pytest.approx(1.0, abs=1e-12)
    assert zipf_probabilities(1.0, [1])[0] == pytest.approx(6 / math.pi**2, rel=1e-14)


def test_tail_mass_matches_brute_force_sum() -> None:
    k = np.arange(11, 2_000_001, dtype=np.float64)
    brute = np.sum(k**-2.0) / (math.pi**2 / 6)
    # the part beyond 2e6 is ~ 1/2e6 / zeta(2)
    assert tail_mass(1.0, 10) == pytest.approx(brute + 1 / 2e6 / (math.pi**2 / 6), rel=1e-6)
    assert tail_mass(1.0, 0) == pytest.approx(1.0, rel=1e-14)


def test_loss_vs_quanta_properties() -> None:
    n = np.arange(0, 200)
    loss = loss_vs_quanta(n, 0.4, a=0.1, b=2.0)
    assert loss[0] == pytest.approx(2.0)
    assert np.all(np.diff(loss) < 0)
    big = np.array([1e4, 1e5])
    np.testing.assert_allclose(loss_vs_quanta(big, 0.4), loss_vs_quanta_asymptotic(big, 0.4), rtol=2e-2)


def test_expected_loss_tail_summation_is_exact() -> None:
    for gamma in (0.1, 0.4, 2.0):
        for tau in (1, 5):
            for D in (1.0, 1e3, 1e6, 1e10):
                ref = expected_loss_data(D, gamma, tau, head=200_000)
                assert expected_loss_data(D, gamma, tau) == pytest.approx(ref, rel=1e-12)
    # where quanta beyond 2e6 are never learned, the truncated reference agrees
    assert expected_loss_data(1e5, 0.4, 5) == pytest.approx(
        expected_loss_data_truncated(1e5, 0.4, 5), rel=1e-12
    )


def test_data_and_step_exponents() -> None:
    D = np.logspace(4, 7, 8)
    for gamma in (0.4, 1.0):
        loss = expected_loss_data(D, gamma, 3)
        assert np.all(np.diff(loss) < 0)
        local = np.diff(np.log(loss)) / np.diff(np.log(D))
        np.testing.assert_allclose(local, -gamma / (gamma + 1), atol=2e-3)
    np.testing.assert_allclose(expected_loss_steps(D / 256, 0.4, 3, batch=256), expected_loss_data(D, 0.4, 3))


def test_learned_probability_orders_quanta() -> None:
    ks = np.arange(1, 50)
    p = learned_probability(1e4, ks, 0.4, 5)
    assert np.all(np.diff(p) <= 0)
    assert np.all(learned_probability(1e5, ks, 0.4, 5) >= p)


def test_monte_carlo_is_seeded_and_matches_expectation() -> None:
    a = simulate_loss_data(20_000, 0.4, 5, seed=3)
    assert a == simulate_loss_data(20_000, 0.4, 5, seed=3)
    assert a != simulate_loss_data(20_000, 0.4, 5, seed=4)
    mc = np.mean([simulate_loss_data(20_000, 0.4, 5, seed=s) for s in range(10)])
    assert mc == pytest.approx(expected_loss_data(2e4, 0.4, 5), rel=0.02)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="gamma"):
        zipf_probabilities(0.0, 10)
    with pytest.raises(ValueError, match="tau"):
        expected_loss_data(1e3, 0.4, 0)
    with pytest.raises(ValueError, match="positive"):
        expected_loss_data(-5.0, 0.4, 1)
    with pytest.raises(ValueError, match="positive"):
        expected_loss_data(0.0, 0.4, 1)
    with pytest.raises(ValueError, match="D \\(number of samples\\)"):
        simulate_loss_data(0, 0.4, 1)
    with pytest.raises(ValueError, match="n must be"):
        tail_mass(0.4, -1)
