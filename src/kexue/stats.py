"""Robust power-law (scaling-law) fits with bootstrap uncertainty.

:func:`fit_power_law` fits ``L(x) = E + A x^{-alpha}`` (``E >= 0``, ``A > 0``; ``offset=False`` fixes
``E = 0``) and :func:`fit_power_law_2d` fits ``L(N, D) = E + A N^{-alpha} + B D^{-beta}``.

Algorithm (variable projection, then refinement):

1. For a fixed exponent the model is linear in ``(E, A[, B])``. On a grid of exponents solve the
   non-negative least squares problem with weights ``1 / y`` (relative errors, a first-order proxy of
   log-space residuals) and keep the exponent whose solution has the smallest log-space objective.
2. Refine all parameters with :func:`scipy.optimize.least_squares` (bounded trust region) on the
   log-space residuals ``log(model) - log(y)``, either squared (``loss="log_squares"``, the default) or
   Huber (``loss="huber"``, scale ``huber_delta``, as in Hoffmann et al. 2022, "Chinchilla").
3. Bootstrap: resample the points with replacement, refit from the full-data estimate, and report
   percentile confidence intervals.

``x`` is rescaled by its geometric mean internally, so multiplying ``x`` by a constant changes ``A`` only.
Used by the reproduction of "基于量子化假设推导模型的尺度定律(Scaling Law)" (2023-05-18,
kexue.fm/archives/9607) and by any post that fits a scaling curve.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["PowerLaw2DFit", "PowerLawFit", "fit_power_law", "fit_power_law_2d"]

_LOSSES = ("log_squares", "huber")


@dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`: ``L(x) = E + A x^{-alpha}``.

    ``residuals`` are log-space residuals ``log(prediction) - log(y)``; ``ci`` maps ``"alpha"``, ``"A"``,
    ``"E"`` to ``(low, high)`` bootstrap percentile intervals at level ``level`` and ``stderr`` to the
    bootstrap standard deviations (empty when ``n_bootstrap == 0``).
    """

    alpha: float
    A: float
    E: float
    residuals: np.ndarray
    loss: str
    level: float = 0.95
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    n_bootstrap: int = 0

    def predict(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return self.E + self.A * x ** (-self.alpha)


@dataclass(frozen=True)
class PowerLaw2DFit:
    """Result of :func:`fit_power_law_2d`: ``L(N, D) = E + A N^{-alpha} + B D^{-beta}``."""

    alpha: float
    beta: float
    A: float
    B: float
    E: float
    residuals: np.ndarray
    loss: str
    level: float = 0.95
    ci: dict[str, tuple[float, float]] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    n_bootstrap: int = 0

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        n = np.asarray(n, dtype=np.float64)
        d = np.asarray(d, dtype=np.float64)
        return self.E + self.A * n ** (-self.alpha) + self.B * d ** (-self.beta)


# --- validation -----------------------------------------------------------------------------


def _as_points(name: str, v: object) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    if (arr <= 0).any():
        raise ValueError(
            f"{name} must be positive (a power law needs x > 0 and losses > 0), got min {arr.min()}"
        )
    return arr


def _check_common(n: int, loss: str, huber_delta: float, n_bootstrap: int, level: float) -> None:
    if n < 4:
        raise ValueError(f"a power-law fit needs at least 4 points, got {n}")
    if loss not in _LOSSES:
        raise ValueError(f"loss must be one of {_LOSSES}, got {loss!r}")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, int) or n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be a non-negative int, got {n_bootstrap!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _check_bounds(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in bounds)
    if not (0 < lo < hi and np.isfinite(hi)):
        raise ValueError(f"{name} must be (low, high) with 0 < low < high < inf, got {bounds}")
    return lo, hi


# --- core -----------------------------------------------------------------------------------


def _grid_nonneg_ls(design: np.ndarray, y: np.ndarray, offset: bool) -> tuple[np.ndarray, np.ndarray]:
    """Weighted (``1/y``) least squares for a stack of designs ``(G, n, k)`` with non-negative coefficients.

    The last column is the offset ``E`` when ``offset``: where the unconstrained solution has ``E < 0`` it is
    re-solved with ``E = 0`` (the exact non-negative solution for this active set). Returns ``(coef (G, k),
    feasible (G,))`` where feasible means every power-law amplitude is > 0.
    """
    w = 1.0 / y
    wd = design * w[None, :, None]
    target = np.ones_like(y)
    coef = np.linalg.pinv(wd) @ target
    if offset:
        neg = coef[:, -1] < 0
        if neg.any():
            coef[neg, :-1] = np.linalg.pinv(wd[neg, :, :-1]) @ target
            coef[neg, -1] = 0.0
        amps = coef[:, :-1]
    else:
        amps = coef
    return coef, (amps > 0).all(axis=1)


def _objective_rows(r: np.ndarray, loss: str, delta: float) -> np.ndarray:
    if loss == "log_squares":
        return np.sum(r**2, axis=-1)
    a = np.abs(r)
    return np.sum(np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta)), axis=-1)


def _least_squares(residual, jacobian, theta0, lower, upper, loss: str, delta: float) -> np.ndarray:
    from scipy.optimize import least_squares

    theta0 = np.clip(theta0, lower, upper)
    sol = least_squares(
        residual,
        theta0,
        jac=jacobian,
        bounds=(lower, upper),
        method="trf",
        loss="linear" if loss == "log_squares" else "huber",
        f_scale=1.0 if loss == "log_squares" else delta,
        xtol=1e-13,
        ftol=1e-13,
        gtol=1e-13,
        max_nfev=2000,
        x_scale="jac",
    )
    return sol.x


def _percentiles(samples: dict[str, list[float]], level: float) -> tuple[dict, dict]:
    ci, se = {}, {}
    q = 100 * (1 - level) / 2
    for k, v in samples.items():
        arr = np.asarray(v)
        if len(arr):
            ci[k] = (float(np.percentile(arr, q)), float(np.percentile(arr, 100 - q)))
            se[k] = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return ci, se


_LOG_A_FLOOR = -700.0


class _OneVar:
    def __init__(self, x: np.ndarray, y: np.ndarray, offset: bool, loss: str, delta: float, bounds) -> None:
        self.ref = float(np.exp(np.mean(np.log(x))))
        self.xs = x / self.ref
        self.logy = np.log(y)
        self.y = y
        self.offset, self.loss, self.delta = offset, loss, delta
        lo, hi = bounds
        self.lower = np.array([lo, _LOG_A_FLOOR] + ([0.0] if offset else []))
        self.upper = np.array([hi, 700.0] + ([np.inf] if offset else []))

    def model(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        xs = self.xs if idx is None else self.xs[idx]
        val = np.exp(theta[1] - theta[0] * np.log(xs))
        return val + theta[2] if self.offset else val

    def residual(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        logy = self.logy if idx is None else self.logy[idx]
        return np.log(self.model(theta, idx)) - logy

    def jacobian(self, theta: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        ln_x = np.log(self.xs if idx is None else self.xs[idx])
        power = np.exp(theta[1] - theta[0] * ln_x)
        m = power + theta[2] if self.offset else power
        cols = [-ln_x * power / m, power / m] + ([1.0 / m] if self.offset else [])
        return np.stack(cols, axis=1)

    def grid_start(self, grid: np.ndarray) -> np.ndarray:
        if not self.offset:  # log-space linear regression: the exact least-squares solution
            slope, intercept = np.polyfit(np.log(self.xs), self.logy, 1)
            return np.array([np.clip(-slope, self.lower[0], self.upper[0]), intercept])
        cols = self.xs[None, :] ** (-grid[:, None])
        design = np.stack([cols, np.ones_like(cols)], axis=-1)
        coef, ok = _grid_nonneg_ls(design, self.y, True)
        if not ok.any():
            raise ValueError("no decreasing power law fits these points (every grid exponent gave A <= 0)")
        model = np.einsum("gnk,gk->gn", design[ok], coef[ok])
        obj = _objective_rows(np.log(model) - self.logy, self.loss, self.delta)
        i = int(np.argmin(obj))
        alpha, (amp, e) = grid[ok][i], coef[ok][i]
        return np.array([alpha, np.log(amp), e])

    def refine(self, theta0: np.ndarray, idx: np.ndarray | None = None) -> np.ndarray:
        return _least_squares(
            lambda t: self.residual(t, idx),
            lambda t: self.jacobian(t, idx),
            theta0,
            self.lower,
            self.upper,
            self.loss,
            self.delta,
        )

    def unpack(self, theta: np.ndarray) -> tuple[float, float, float]:
        alpha = float(theta[0])
        A = float(np.exp(theta[1]) * self.ref**alpha)
        E = float(theta[2]) if self.offset else 0.0
        return alpha, A, E


def fit_power_law(
    x: np.ndarray,
    y: np.ndarray,
    *,
    offset: bool = True,
    loss: str = "log_squares",
    huber_delta: float = 1e-3,
    alpha_bounds: tuple[float, float] = (1e-3, 5.0),
    grid_size: int = 120,
    n_bootstrap: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> PowerLawFit:
    """Fit ``y = E + A x^{-alpha}`` to positive points ``(x, y)`` (at least 4).

    Args:
        offset: fit the irreducible term ``E >= 0``; ``False`` fixes ``E = 0`` (a pure power law).
        loss: ``"log_squares"`` (sum of squared log residuals) or ``"huber"`` (Huber on log residuals with
            scale ``huber_delta``).
        alpha_bounds: search interval for the exponent (the grid is geometric on it).
        n_bootstrap: number of bootstrap refits for the confidence intervals (0 to skip).
        level: confidence level of the percentile intervals.
        seed: seed of the bootstrap resampling.

    Raises ``ValueError`` for fewer than 4 points, mismatched lengths, NaN/inf, non-positive ``x`` or ``y``.
    """
    x = _as_points("x", x)
    y = _as_points("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length, got {len(x)} and {len(y)}")
    _check_common(len(x), loss, huber_delta, n_bootstrap, level)
    bounds = _check_bounds("alpha_bounds", alpha_bounds)
    if len(np.unique(x)) < (3 if offset else 2):
        raise ValueError("x must take at least 3 distinct values to identify E, A and alpha")
    prob = _OneVar(x, y, offset, loss, huber_delta, bounds)
    grid = np.geomspace(bounds[0], bounds[1], max(int(grid_size), 8))
    theta = prob.refine(prob.grid_start(grid))
    alpha, A, E = prob.unpack(theta)
    residuals = prob.residual(theta)

    samples: dict[str, list[float]] = {"alpha": [], "A": [], "E": []}
    rng = np.random.default_rng(seed)
    n = len(x)
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, n)
        if len(np.unique(x[idx])) < (3 if offset else 2):
            continue
        t = prob.refine(theta, idx)
        a_b, A_b, E_b = prob.unpack(t)
        samples["alpha"].append(a_b)
        samples["A"].append(A_b)
        samples["E"].append(E_b)
    ci, se = _percentiles(samples, level) if n_bootstrap else ({}, {})
    return PowerLawFit(
        alpha=alpha,
        A=A,
        E=E,
        residuals=residuals,
        loss=loss,
        level=level,
        ci=ci,
        stderr=se,
        n_bootstrap=len(samples["alpha"]),
    )


def fit_power_law_2d(
    n: np.ndarray,
    d: np.ndarray,
    y: np.ndarray,
    *,
    loss: str = "log_squares",
    huber_delta: float = 1e-3,
    exponent_bounds: tuple[float, float] = (1e-2, 3.0),
    grid_size: int = 40,
    n_bootstrap: int = 0,
    level: float = 0.95,
    seed: int = 0,
) -> PowerLaw2DFit:
    """Fit ``y = E + A n^{-alpha} + B d^{-beta}`` (the Chinchilla form) to positive points (at least 6).

    Same algorithm as :func:`fit_power_law`, with a 2-D exponent grid for the start.
    """
    n = _as_points("n", n)
    d = _as_points("d", d)
    y = _as_points("y", y)
    if not (n.shape == d.shape == y.shape):
        raise ValueError(f"n, d and y must have the same length, got {len(n)}, {len(d)}, {len(y)}")
    _check_common(len(y), loss, huber_delta, n_bootstrap, level)
    if len(y) < 6:
        raise ValueError(f"the two-variable fit needs at least 6 points, got {len(y)}")
    lo, hi = _check_bounds("exponent_bounds", exponent_bounds)
    ref_n = float(np.exp(np.mean(np.log(n))))
    ref_d = float(np.exp(np.mean(np.log(d))))
    ln_n, ln_d, logy = np.log(n / ref_n), np.log(d / ref_d), np.log(y)

    def model(t: np.ndarray, idx=slice(None)) -> np.ndarray:
        return np.exp(t[2] - t[0] * ln_n[idx]) + np.exp(t[3] - t[1] * ln_d[idx]) + t[4]

    def residual(t: np.ndarray, idx=slice(None)) -> np.ndarray:
        return np.log(model(t, idx)) - logy[idx]

    def jacobian(t: np.ndarray, idx=slice(None)) -> np.ndarray:
        pn = np.exp(t[2] - t[0] * ln_n[idx])
        pd = np.exp(t[3] - t[1] * ln_d[idx])
        m = pn + pd + t[4]
        return np.stack([-ln_n[idx] * pn / m, -ln_d[idx] * pd / m, pn / m, pd / m, 1.0 / m], axis=1)

    grid = np.geomspace(lo, hi, max(int(grid_size), 8))
    ga, gb = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    design = np.stack(
        [np.exp(-ga[:, None] * ln_n[None]), np.exp(-gb[:, None] * ln_d[None]), np.ones((len(ga), len(y)))],
        axis=-1,
    )
    coef, ok = _grid_nonneg_ls(design, y, True)
    if not ok.any():
        raise ValueError("no decreasing two-variable power law fits these points")
    fitted = np.einsum("gnk,gk->gn", design[ok], coef[ok])
    i = int(np.argmin(_objective_rows(np.log(fitted) - logy, loss, huber_delta)))
    c = coef[ok][i]
    best = np.array([ga[ok][i], gb[ok][i], np.log(c[0]), np.log(c[1]), c[2]])
    lower = np.array([lo, lo, _LOG_A_FLOOR, _LOG_A_FLOOR, 0.0])
    upper = np.array([hi, hi, 700.0, 700.0, np.inf])
    theta = _least_squares(residual, jacobian, best, lower, upper, loss, huber_delta)

    def unpack(t: np.ndarray) -> dict[str, float]:
        return {
            "alpha": float(t[0]),
            "beta": float(t[1]),
            "A": float(np.exp(t[2]) * ref_n ** t[0]),
            "B": float(np.exp(t[3]) * ref_d ** t[1]),
            "E": float(t[4]),
        }

    est = unpack(theta)
    samples: dict[str, list[float]] = {k: [] for k in est}
    rng = np.random.default_rng(seed)
    for _ in range(n_bootstrap):
        idx = rng.integers(0, len(y), len(y))
        t = _least_squares(
            lambda t, idx=idx: residual(t, idx),
            lambda t, idx=idx: jacobian(t, idx),
            theta,
            lower,
            upper,
            loss,
            huber_delta,
        )
        for k, v in unpack(t).items():
            samples[k].append(v)
    ci, se = _percentiles(samples, level) if n_bootstrap else ({}, {})
    return PowerLaw2DFit(
        **est,
        residuals=residual(theta),
        loss=loss,
        level=level,
        ci=ci,
        stderr=se,
        n_bootstrap=n_bootstrap,
    )
