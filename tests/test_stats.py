"""fit_power_law / fit_power_law_2d: exact and noisy recovery of known laws, invariances, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.stats import fit_power_law, fit_power_law_2d

N = np.geomspace(1e3, 1e7, 12)


def _law(x: np.ndarray, E: float = 1.5, A: float = 50.0, alpha: float = 0.35) -> np.ndarray:
    return E + A * x ** (-alpha)


def test_noise_free_exact_recovery() -> None:
    for E, A, alpha in [(1.5, 50.0, 0.35), (0.2, 3.0, 0.9), (2.0, 1e4, 0.15)]:
        fit = fit_power_law(N, _law(N, E, A, alpha), n_bootstrap=0)
        assert fit.alpha == pytest.approx(alpha, rel=1e-6)
        assert fit.A == pytest.approx(A, rel=1e-6)
        assert fit.E == pytest.approx(E, rel=1e-6)
        assert np.abs(fit.residuals).max() < 1e-9
    pure = fit_power_law(N, 7.0 * N**-0.5, offset=False, n_bootstrap=0)
    assert (pure.alpha, pure.A, pure.E) == (pytest.approx(0.5, rel=1e-9), pytest.approx(7.0, rel=1e-9), 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_noisy_recovery_within_stated_tolerance(seed: int) -> None:
    # 1% log-normal noise on 12 points: alpha within 0.03 and E within 0.05 (the spec's tolerance)
    rng = np.random.default_rng(seed)
    y = _law(N) * np.exp(0.01 * rng.standard_normal(len(N)))
    fit = fit_power_law(N, y, n_bootstrap=0)
    assert abs(fit.alpha - 0.35) <= 0.03
    assert abs(fit.E - 1.5) <= 0.05


def test_bootstrap_intervals_cover_truth_and_are_seeded() -> None:
    covered = 0
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        y = _law(N) * np.exp(0.01 * rng.standard_normal(len(N)))
        fit = fit_power_law(N, y, n_bootstrap=40, seed=seed)
        lo, hi = fit.ci["alpha"]
        assert lo <= fit.alpha <= hi
        assert fit.stderr["alpha"] > 0
        covered += lo <= 0.35 <= hi
    assert covered >= 4
    again = fit_power_law(N, y, n_bootstrap=40, seed=5)
    assert again.ci == fit.ci


def test_rescaling_x_changes_only_A() -> None:
    rng = np.random.default_rng(1)
    y = _law(N) * np.exp(0.01 * rng.standard_normal(len(N)))
    f1 = fit_power_law(N, y, n_bootstrap=0)
    f2 = fit_power_law(N * 1000.0, y, n_bootstrap=0)
    assert f2.alpha == pytest.approx(f1.alpha, abs=1e-7)
    assert f2.E == pytest.approx(f1.E, abs=1e-7)
    assert f2.A == pytest.approx(f1.A * 1000.0**f1.alpha, rel=1e-6)


def test_decreasing_data_without_offset_gives_positive_alpha() -> None:
    y = np.array([5.0, 4.0, 3.5, 3.2, 3.1, 3.05])
    fit = fit_power_law(np.arange(1.0, 7.0), y, offset=False, n_bootstrap=0)
    assert fit.alpha > 0
    assert fit.E == 0.0


def test_huber_resists_an_outlier() -> None:
    y = _law(N)
    y[4] *= 1.3
    plain = fit_power_law(N, y, n_bootstrap=0)
    robust = fit_power_law(N, y, loss="huber", huber_delta=1e-3, n_bootstrap=0)
    assert abs(robust.alpha - 0.35) < abs(plain.alpha - 0.35)
    assert abs(robust.alpha - 0.35) < 0.01


def test_predict_matches_parameters() -> None:
    fit = fit_power_law(N, _law(N), n_bootstrap=0)
    np.testing.assert_allclose(fit.predict(N), _law(N), rtol=1e-8)


def test_two_variable_recovery() -> None:
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    y = 1.69 + 406.4 * n**-0.34 + 410.7 * d**-0.28
    fit = fit_power_law_2d(n, d, y)
    assert fit.alpha == pytest.approx(0.34, abs=1e-6)
    assert fit.beta == pytest.approx(0.28, abs=1e-6)
    assert fit.E == pytest.approx(1.69, rel=1e-5)
    rng = np.random.default_rng(0)
    noisy = fit_power_law_2d(n, d, y * np.exp(0.002 * rng.standard_normal(36)), n_bootstrap=10)
    assert abs(noisy.alpha - 0.34) <= 0.01 and abs(noisy.beta - 0.28) <= 0.01
    assert set(noisy.ci) == {"alpha", "beta", "A", "B", "E"}


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="at least 4 points"):
        fit_power_law(N[:3], _law(N[:3]))
    with pytest.raises(ValueError, match="positive"):
        fit_power_law(N, -_law(N))
    bad = _law(N)
    bad[2] = 0.0
    with pytest.raises(ValueError, match="positive"):
        fit_power_law(N, bad)
    with pytest.raises(ValueError, match="positive"):
        fit_power_law(-N, _law(N))
    bad[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_power_law(N, bad)
    with pytest.raises(ValueError, match="same length"):
        fit_power_law(N, _law(N)[:-1])
    with pytest.raises(ValueError, match="loss"):
        fit_power_law(N, _law(N), loss="l1")
    with pytest.raises(ValueError, match="1-D"):
        fit_power_law(N.reshape(3, 4), _law(N).reshape(3, 4))
    with pytest.raises(ValueError, match="distinct"):
        fit_power_law(np.array([1.0, 1.0, 2.0, 2.0]), np.array([3.0, 3.0, 2.0, 2.0]))
    with pytest.raises(ValueError, match="at least 6 points"):
        fit_power_law_2d(N[:5], N[:5], _law(N[:5]))
