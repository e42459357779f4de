"""The quantization model of neural scaling: Zipf-distributed quanta give power-law losses.

Quanta (discrete skills) are used with frequencies ``p_k = k^{-(gamma+1)} / zeta(gamma+1)``, ``gamma > 0``.
A sample whose quantum is learned has loss ``a``, otherwise ``b``. With the first ``n`` quanta learned::

    L(n) = a + (b - a) sum_{k>n} p_k = a + (b - a) zeta(gamma+1, n+1) / zeta(gamma+1)
         ~ a + (b - a) / (gamma zeta(gamma+1)) n^{-gamma}                      (Hurwitz zeta tail)

so ``L ~ N^{-gamma}`` when ``n = N / C`` parameters' worth of quanta fit. With ``D`` training samples a
quantum is learned when it was seen at least ``tau`` times; with Poisson counts ``c_k ~ Poisson(D p_k)``::

    E[L(D)] = a + (b - a) sum_k p_k P(c_k < tau)  ~  D^{-gamma/(gamma+1)},

and the same for ``S`` single-epoch steps of batch ``B`` (``D = S B``). :func:`expected_loss_data` sums the
first ``head`` quanta exactly and the rest by the Euler-Maclaurin formula around a closed-form integral
(incomplete gamma functions), so no truncation of the Zipf support is needed.

Post: "基于量子化假设推导模型的尺度定律(Scaling Law)" (Scaling laws from the quantization hypothesis),
2023-05-18, kexue.fm/archives/9607. Paper: Michaud et al., "The Quantization Model of Neural Scaling",
NeurIPS 2023 (arXiv 2303.13506).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "expected_loss_data",
    "expected_loss_data_truncated",
    "expected_loss_steps",
    "learned_probability",
    "loss_vs_quanta",
    "loss_vs_quanta_asymptotic",
    "simulate_loss_data",
    "tail_mass",
    "zipf_probabilities",
]


def _check_gamma(gamma: float) -> float:
    gamma = float(gamma)
    if not (math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma (the scaling exponent) must be > 0, got {gamma}")
    return gamma


def _check_tau(tau: int) -> int:
    if isinstance(tau, bool) or not isinstance(tau, int | np.integer) or tau < 1:
        raise ValueError(f"tau (samples needed to learn a quantum) must be an int >= 1, got {tau!r}")
    return int(tau)


def _positive(name: str, v: object) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise ValueError(f"{name} must be positive and finite, got {v!r}")
    return arr


def _zeta(gamma: float) -> float:
    from scipy.special import zeta

    return float(zeta(gamma + 1.0))


def zipf_probabilities(gamma: float, k: np.ndarray | int) -> np.ndarray:
    """``p_k = k^{-(gamma+1)} / zeta(gamma+1)`` for quanta indices ``k >= 1`` (an int ``K`` means ``1..K``)."""
    gamma = _check_gamma(gamma)
    ks = np.arange(1, int(k) + 1, dtype=np.float64) if np.ndim(k) == 0 else np.asarray(k, dtype=np.float64)
    if (ks < 1).any():
        raise ValueError("quanta indices start at 1")
    return ks ** (-(gamma + 1.0)) / _zeta(gamma)


def tail_mass(gamma: float, n: np.ndarray | float) -> np.ndarray:
    """``sum_{k>n} p_k = zeta(gamma+1, n+1) / zeta(gamma+1)`` (exact; ``n >= 0``)."""
    from scipy.special import zeta

    gamma = _check_gamma(gamma)
    n = np.asarray(n, dtype=np.float64)
    if (n < 0).any() or not np.isfinite(n).all():
        raise ValueError(f"n must be finite and >= 0, got {n}")
    return zeta(gamma + 1.0, n + 1.0) / _zeta(gamma)


def loss_vs_quanta(n: np.ndarray | float, gamma: float, a: float = 0.0, b: float = 1.0) -> np.ndarray:
    """Loss with the ``n`` most frequent quanta learned: ``a + (b - a) tail_mass(gamma, n)``."""
    return a + (b - a) * tail_mass(gamma, n)


def loss_vs_quanta_asymptotic(
    n: np.ndarray | float, gamma: float, a: float = 0.0, b: float = 1.0
) -> np.ndarray:
    """Large-``n`` form ``a + (b - a) n^{-gamma} / (gamma zeta(gamma+1))``."""
    gamma = _check_gamma(gamma)
    n = _positive("n", n)
    return a + (b - a) * n ** (-gamma) / (gamma * _zeta(gamma))


def _poisson_cdf_below(tau: int, lam: np.ndarray) -> np.ndarray:
    """``P(Poisson(lam) < tau) = Q(tau, lam)`` (regularised upper incomplete gamma)."""
    from scipy.special import gammaincc

    return gammaincc(tau, lam)


def learned_probability(D: float, k: np.ndarray | int, gamma: float, tau: int) -> np.ndarray:
    """``P(c_k >= tau)`` with ``c_k ~ Poisson(D p_k)``: the chance that quantum ``k`` is learned from ``D``
    samples (sharp in ``D``: each quantum "emerges" at ``D ~ tau / p_k``)."""
    tau = _check_tau(tau)
    D = float(_positive("D", D))
    return 1.0 - _poisson_cdf_below(tau, D * zipf_probabilities(gamma, k))


def _tail_integral_terms(c: float, s: float, tau: int, k0: float) -> float:
    """``sum_{k>=k0} k^{-s} Q(tau, c k^{-s})`` by Euler-Maclaurin (integral + f/2 - f'/12)."""
    from scipy.special import gammainc
    from scipy.special import gammaln as lgam

    lam0 = c * k0 ** (-s)
    integral = 0.0
    for j in range(tau):
        shape = j + 1.0 - 1.0 / s
        # int_{k0}^inf k^-s e^{-c k^-s} (c k^-s)^j / j! dk = c^{1/s-1} / (s j!) * lower_gamma(shape, lam0)
        integral += math.exp(
            (1.0 / s - 1.0) * math.log(c) - math.log(s) - lgam(j + 1.0) + lgam(shape)
        ) * float(gammainc(shape, lam0))
    q0 = float(_poisson_cdf_below(tau, np.array(lam0)))
    f0 = k0 ** (-s) * q0
    pmf = math.exp(-lam0 + (tau - 1) * math.log(lam0) - lgam(tau)) if lam0 > 0 else 0.0
    df0 = s / k0 * k0 ** (-s) * (-q0 + lam0 * pmf)
    return integral + 0.5 * f0 - df0 / 12.0


def expected_loss_data(
    D: np.ndarray | float, gamma: float, tau: int = 1, *, a: float = 0.0, b: float = 1.0, head: int = 2_000
) -> np.ndarray:
    """``E[L(D)] = a + (b - a) sum_k p_k P(Poisson(D p_k) < tau)`` over the whole (infinite) Zipf support.

    The first ``head`` quanta are summed exactly; the rest by Euler-Maclaurin around the closed-form integral
    ``c^{1/s-1}/(s j!) gamma_lower(j + 1 - 1/s, lambda_0)`` (``s = gamma + 1``, ``c = D / zeta(s)``), whose
    error is far below double precision for ``head >= 10^3``.
    """
    gamma = _check_gamma(gamma)
    tau = _check_tau(tau)
    Ds = _positive("D", D)
    if isinstance(head, bool) or not isinstance(head, int) or head < 100:
        raise ValueError(f"head must be an int >= 100, got {head!r}")
    s = gamma + 1.0
    z = _zeta(gamma)
    p = zipf_probabilities(gamma, head)
    out = np.empty(Ds.shape, dtype=np.float64)
    for i, d in np.ndenumerate(Ds):
        exact = float(np.sum(p * _poisson_cdf_below(tau, d * p)))
        out[i] = exact + _tail_integral_terms(d / z, s, tau, head + 1.0) / z
    return a + (b - a) * (out if Ds.ndim else out[()])


def expected_loss_data_truncated(D: float, gamma: float, tau: int = 1, *, k_max: int = 2_000_000) -> float:
    """Reference: explicit sum over ``k <= k_max`` plus the exact tail ``zeta(s, k_max+1)/zeta(s)`` counted as
    unlearned (slow, ``O(k_max)``; its only approximation is that quanta beyond ``k_max`` are never learned)."""
    gamma = _check_gamma(gamma)
    tau = _check_tau(tau)
    d = float(_positive("D", D))
    p = zipf_probabilities(gamma, k_max)
    return float(np.sum(p * _poisson_cdf_below(tau, d * p)) + tail_mass(gamma, k_max))


def expected_loss_steps(
    S: np.ndarray | float, gamma: float, tau: int = 1, *, batch: int = 256, a: float = 0.0, b: float = 1.0
) -> np.ndarray:
    """Single-epoch training for ``S`` steps of ``batch`` fresh samples: ``E[L(D = S * batch)]``."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    return expected_loss_data(_positive("S", S) * batch, gamma, tau, a=a, b=b)


def simulate_loss_data(D: int, gamma: float, tau: int = 1, *, seed: int | np.random.Generator = 0) -> float:
    """Monte Carlo: draw ``D`` samples' quanta from ``Generator.zipf(gamma + 1)`` (infinite support), learn the
    quanta seen at least ``tau`` times, return ``1 - sum of p_k over learned quanta`` (``a = 0, b = 1``)."""
    gamma = _check_gamma(gamma)
    tau = _check_tau(tau)
    if isinstance(D, bool) or not isinstance(D, int | np.integer) or D < 1:
        raise ValueError(f"D (number of samples) must be an int >= 1, got {D!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    draws = rng.zipf(gamma + 1.0, size=int(D))
    values, counts = np.unique(draws, return_counts=True)
    learned = values[counts >= tau]
    return float(1.0 - zipf_probabilities(gamma, learned).sum())
