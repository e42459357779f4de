"""Self-consuming loops: W2 identities, closed-form moments, seeded loops, precision/recall, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from kexue.sim.self_consuming import (
    fit_gaussian,
    gaussian_chains_1d,
    gaussian_loop,
    gaussian_w2_squared,
    gmm_loop,
    moments_1d,
    precision_recall,
)


def test_w2_identities() -> None:
    rng = np.random.default_rng(0)
    M = rng.standard_normal((3, 3))
    S1 = M @ M.T + 0.1 * np.eye(3)
    M = rng.standard_normal((3, 3))
    S2 = M @ M.T + 0.1 * np.eye(3)
    mu1, mu2 = rng.standard_normal(3), rng.standard_normal(3)
    assert gaussian_w2_squared(mu1, S1, mu1, S1) == pytest.approx(0.0, abs=1e-10)
    assert gaussian_w2_squared(mu1, S1, mu2, S2) == pytest.approx(
        gaussian_w2_squared(mu2, S2, mu1, S1), rel=1e-10
    )
    # 1-D: (mu1 - mu2)^2 + (s1 - s2)^2
    assert gaussian_w2_squared([0.3], [[4.0]], [-0.2], [[0.25]]) == pytest.approx(0.25 + 1.5**2, rel=1e-12)
    # commuting covariances: sum of squared differences of the square roots of the eigenvalues
    w2 = gaussian_w2_squared(np.zeros(2), np.diag([4.0, 1.0]), np.zeros(2), np.diag([1.0, 9.0]))
    assert w2 == pytest.approx(1.0 + 4.0, rel=1e-12)


def test_fit_gaussian_is_unbiased_estimator() -> None:
    x = np.random.default_rng(1).standard_normal((30, 3))
    mu, cov = fit_gaussian(x)
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x.T, ddof=1))


@pytest.mark.parametrize(("n", "t", "lam"), [(20, 30, 1.0), (20, 30, 0.9), (5, 10, 0.7)])
def test_closed_form_moments_hold_within_monte_carlo_error(n: int, t: int, lam: float) -> None:
    mu, var = gaussian_chains_1d(n, t, lam, chains=4000, seed=7)
    theory = moments_1d(n, t, lam)
    for name, sample in (("E_var", var), ("E_mu2", mu**2), ("E_logvar", np.log(var))):
        se = sample.std(ddof=1) / np.sqrt(len(sample))
        assert abs(sample.mean() - theory[name]) <= 4 * se, name


def test_log_variance_drifts_down_even_without_bias() -> None:
    assert moments_1d(20, 10, 1.0)["E_logvar"] < -0.5
    _, var = gaussian_chains_1d(20, 60, 1.0, chains=2000, seed=0)
    assert np.median(var) < 0.1  # the median collapses although the mean stays 1


def test_loops_are_seeded_and_share_the_real_data() -> None:
    a = gaussian_loop("full", generations=10, seeds=[2])
    b = gaussian_loop("full", generations=10, seeds=[5, 2])
    assert np.array_equal(a.w2[0], b.w2[1])  # a seed's trajectory ignores the other seeds
    c = gaussian_loop("full", generations=10, seeds=[2])
    assert np.array_equal(a.cov, c.cov)
    starts = {
        loop: gaussian_loop(loop, generations=3, seeds=[2]).w2[0, 0] for loop in ("full", "augment", "fresh")
    }
    assert len(set(starts.values())) == 1


def test_large_n_is_a_fixed_point_and_bias_shrinks_variance_geometrically() -> None:
    big = gaussian_loop("full", n_real=10_000, n_synth=10_000, generations=5, seeds=[0])
    assert big.w2.max() < 1e-3
    lam, gens = 0.8, 6
    run = gaussian_loop("full", n_real=50, n_synth=50, generations=gens, lam=lam, seeds=list(range(300)))
    trace = np.trace(run.cov, axis1=-2, axis2=-1)  # (seeds, gens + 1)
    ratio = trace[:, gens] / trace[:, 0]
    assert ratio.mean() == pytest.approx(lam**gens, rel=0.05)


def test_fresh_data_keeps_the_model_close() -> None:
    fresh = gaussian_loop("fresh", generations=40, seeds=list(range(5)))
    full = gaussian_loop("full", generations=40, seeds=list(range(5)))
    assert fresh.w2.mean(0).max() < 0.1
    assert full.w2.mean(0)[-1] > 5 * fresh.w2.mean(0)[-1]


def test_precision_recall_limits() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 2))
    assert precision_recall(x, x, k=5) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0, k=5) == (0.0, 0.0)
    # a sample from one corner: precise but not diverse
    p, r = precision_recall(x, 0.05 * rng.standard_normal((300, 2)), k=5)
    assert p > 0.9 and r < 0.3


def test_gmm_loop_is_seeded_and_biased_sampling_loses_recall() -> None:
    kw = {"generations": 3, "n_per_generation": 300, "n_eval": 300}
    a = gmm_loop("full", lam=0.5, seed=1, **kw)
    b = gmm_loop("full", lam=0.5, seed=1, **kw)
    assert np.array_equal(a["recall"], b["recall"]) and np.array_equal(a["precision"], b["precision"])
    assert a["recall"][-1] < a["recall"][0] - 0.2
    assert a["precision"][-1] > 0.95


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        gaussian_chains_1d(1, 5)
    with pytest.raises(ValueError, match="lam"):
        gaussian_loop("full", lam=0.0)
    with pytest.raises(ValueError, match="lam"):
        gaussian_loop("full", lam=1.5)
    with pytest.raises(ValueError, match="n_real"):
        gaussian_loop("fresh", n_real=-5)
    with pytest.raises(ValueError, match="unknown loop"):
        gaussian_loop("mixed")
    with pytest.raises(ValueError, match="n >= 2"):
        fit_gaussian(np.ones((1, 2)))
    with pytest.raises(ValueError, match="n_real \\+ n_synth >= 2"):
        gaussian_loop("full", n_real=1, n_synth=0)
    with pytest.raises(ValueError, match="same d"):
        precision_recall(np.ones((10, 2)), np.ones((10, 3)))
