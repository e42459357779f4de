"""Self-consuming (autophagous) generative loops: models refitted on their own samples.

Generation ``t`` fits a model ``G_t`` to data ``D_t``; the loops differ in ``D_t`` (``t >= 1``):

* ``"full"`` (fully synthetic): ``n_real + n_synth`` samples of ``G_{t-1}`` (same total size as the others);
* ``"augment"`` (synthetic augmentation): a fixed real set of ``n_real`` points + ``n_synth`` samples of
  ``G_{t-1}``;
* ``"fresh"`` (fresh data): ``n_real`` new real points + ``n_synth`` samples of ``G_{t-1}``.

``G_0`` is fitted on ``n_real + n_synth`` real points (the fixed real set of ``"augment"`` is their first
``n_real``). Sampling bias ``lam`` in ``(0, 1]`` acts on sampling only: a Gaussian model ``N(mu, Sigma)`` is
sampled as ``N(mu, lam Sigma)`` (for a GMM every component covariance is scaled by ``lam``), mimicking
truncation / temperature / guidance. Gaussian fits use the unbiased ``1/(n-1)`` covariance, for which::

    E[Sigma_t] = lam^t Sigma_0,     Cov(mu_t) = (Sigma_0 / n) sum_{s=1..t} lam^s,
    E[log sigma_t^2] = log sigma_0^2 + t (log lam + digamma((n-1)/2) - log((n-1)/2))     (1-D),

so the variance collapses almost surely (its log drifts down) even at ``lam = 1`` where its mean is kept.
Quality is measured by the closed-form Wasserstein-2 distance to the truth and, for learned models, by the
k-NN precision/recall of Kynkaanniemi et al. (2019).

Post: "当生成模型肆虐:互联网将有'疯牛病'之忧?" (Self-consuming generative models go MAD), 2023-07-14,
kexue.fm/archives/9687. Paper: Alemohammad et al., "Self-Consuming Generative Models Go MAD", ICLR 2024
(arXiv 2307.01850).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOOPS",
    "GaussianLoop",
    "gaussian_chains_1d",
    "gaussian_loop",
    "gaussian_w2_squared",
    "fit_gaussian",
    "gmm_loop",
    "moments_1d",
    "precision_recall",
]

LOOPS = ("full", "augment", "fresh")


def _check_lam(lam: float) -> float:
    lam = float(lam)
    if not (0.0 < lam <= 1.0):
        raise ValueError(f"sampling bias lam must be in (0, 1], got {lam}")
    return lam


def _check_int(name: str, v: object, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
    return int(v)


def _check_loop(loop: str) -> str:
    if loop not in LOOPS:
        raise ValueError(f"unknown loop {loop!r}; choose one of {LOOPS}")
    return loop


def _psd_sqrt(S: np.ndarray) -> np.ndarray:
    """Symmetric square root of (a stack of) PSD matrices ``(..., d, d)``."""
    w, V = np.linalg.eigh((S + np.swapaxes(S, -1, -2)) / 2)
    return (V * np.sqrt(np.clip(w, 0.0, None))[..., None, :]) @ np.swapaxes(V, -1, -2)


def _w2_batch(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> np.ndarray:
    r2 = _psd_sqrt(S2)
    cross = _psd_sqrt(r2 @ S1 @ r2)
    tr = (
        np.trace(S1, axis1=-2, axis2=-1)
        + np.trace(S2, axis1=-2, axis2=-1)
        - 2 * np.trace(cross, axis1=-2, axis2=-1)
    )
    return np.maximum(np.sum((mu1 - mu2) ** 2, -1) + tr, 0.0)


def gaussian_w2_squared(mu1: np.ndarray, S1: np.ndarray, mu2: np.ndarray, S2: np.ndarray) -> float:
    """``W2^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S2^{1/2} S1 S2^{1/2})^{1/2})`` between two Gaussians."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, float)), np.atleast_1d(np.asarray(mu2, float))
    S1, S2 = np.atleast_2d(np.asarray(S1, float)), np.atleast_2d(np.asarray(S2, float))
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,) or S1.shape != (d, d) or S2.shape != (d, d):
        raise ValueError(
            f"shapes must be mu (d,), S (d, d) with one d; got {mu1.shape}, {S1.shape}, {mu2.shape}, {S2.shape}"
        )
    return float(_w2_batch(mu1, S1, mu2, S2))


def fit_gaussian(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sample mean and unbiased covariance ``1/(n-1) sum (x - mean)(x - mean)^T`` of ``x (..., n, d)``, n >= 2."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"x must have shape (n, d), got {x.shape}")
    if x.shape[-2] < 2:
        raise ValueError(f"fitting a covariance needs n >= 2 samples, got {x.shape[-2]}")
    mu = x.mean(-2)
    xc = x - mu[..., None, :]
    return mu, np.swapaxes(xc, -1, -2) @ xc / (x.shape[-2] - 1)


def _sample(mu: np.ndarray, cov: np.ndarray, n: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    root = _psd_sqrt(lam * cov)
    return mu + rng.standard_normal((n, mu.shape[0])) @ root


@dataclass(frozen=True)
class GaussianLoop:
    """Trajectories of a Gaussian loop: index ``t = 0..generations`` (0 = fitted on real data).

    ``w2`` has shape ``(seeds, generations + 1)``, ``mean`` ``(seeds, generations + 1, d)``, ``cov``
    ``(seeds, generations + 1, d, d)``; ``seeds`` lists the seeds in order.
    """

    loop: str
    seeds: tuple[int, ...]
    w2: np.ndarray
    mean: np.ndarray
    cov: np.ndarray


def gaussian_loop(
    loop: str,
    *,
    n_real: int = 50,
    n_synth: int = 50,
    generations: int = 200,
    lam: float = 1.0,
    dim: int = 2,
    seeds: int | tuple[int, ...] | list[int] = 0,
) -> GaussianLoop:
    """Run a self-consuming loop of a Gaussian model against the truth ``N(0, I_dim)``, once per seed.

    For each seed, real data come from ``default_rng([seed, 0])`` (shared by all loops: same ``G_0``) and
    synthetic samples from ``default_rng([seed, 1])``; a seed's trajectory does not depend on the other seeds
    (the linear algebra is batched over seeds). Returns W2^2 to the truth, means and covariances.
    """
    _check_loop(loop)
    lam = _check_lam(lam)
    n_real = _check_int("n_real", n_real, 0)
    n_synth = _check_int("n_synth", n_synth, 0)
    generations = _check_int("generations", generations, 0)
    dim = _check_int("dim", dim, 1)
    seed_list = (seeds,) if isinstance(seeds, int | np.integer) else tuple(seeds)
    if not seed_list:
        raise ValueError("seeds must not be empty")
    for s in seed_list:
        _check_int("seed", s, 0)
    if n_real + n_synth < 2:
        raise ValueError(f"each generation needs n_real + n_synth >= 2 points, got {n_real + n_synth}")
    if loop == "augment" and n_real < 1:
        raise ValueError("the augmentation loop needs a fixed real set: n_real >= 1")
    rng_real = [np.random.default_rng([int(s), 0]) for s in seed_list]
    rng_syn = [np.random.default_rng([int(s), 1]) for s in seed_list]
    n_seeds = len(seed_list)
    zero, eye = np.zeros((n_seeds, dim)), np.broadcast_to(np.eye(dim), (n_seeds, dim, dim))

    def draw(rngs: list[np.random.Generator], n: int) -> np.ndarray:
        return np.stack([r.standard_normal((n, dim)) for r in rngs])

    first = draw(rng_real, n_real + n_synth)
    fixed = first[:, :n_real]
    mu, cov = fit_gaussian(first)
    means, covs = [mu], [cov]
    n_gen_synth = n_real + n_synth if loop == "full" else n_synth
    for _ in range(generations):
        root = _psd_sqrt(lam * cov)
        synth = mu[:, None, :] + draw(rng_syn, n_gen_synth) @ root if n_gen_synth else None
        if loop == "full":
            data = synth
        else:
            real = fixed if loop == "augment" else draw(rng_real, n_real)
            data = real if synth is None else np.concatenate([real, synth], axis=1)
        mu, cov = fit_gaussian(data)
        means.append(mu)
        covs.append(cov)
    mean_arr = np.stack(means, 1)
    cov_arr = np.stack(covs, 1)
    w2 = _w2_batch(mean_arr, cov_arr, zero[:, None], eye[:, None])
    return GaussianLoop(loop=loop, seeds=seed_list, w2=w2, mean=mean_arr, cov=cov_arr)


def gaussian_chains_1d(
    n: int, generations: int, lam: float = 1.0, *, chains: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``chains`` independent 1-D fully synthetic chains from ``N(0, 1)``: returns ``(mu_T, sigma2_T)``."""
    n = _check_int("n", n, 2)
    generations = _check_int("generations", generations, 0)
    chains = _check_int("chains", chains, 1)
    lam = _check_lam(lam)
    rng = np.random.default_rng(seed)
    mu = np.zeros(chains)
    var = np.ones(chains)
    for _ in range(generations):
        x = mu[:, None] + np.sqrt(lam * var)[:, None] * rng.standard_normal((chains, n))
        mu = x.mean(1)
        var = x.var(1, ddof=1)
    return mu, var


def moments_1d(n: int, t: int, lam: float = 1.0, sigma0_sq: float = 1.0) -> dict[str, float]:
    """Closed forms for a 1-D chain started at ``N(0, sigma0_sq)``: ``E[sigma_t^2]``, ``E[mu_t^2]``,
    ``E[log sigma_t^2]``."""
    from scipy.special import digamma

    n = _check_int("n", n, 2)
    t = _check_int("t", t, 0)
    lam = _check_lam(lam)
    if not sigma0_sq > 0:
        raise ValueError(f"sigma0_sq must be > 0, got {sigma0_sq}")
    h = (n - 1) / 2
    return {
        "E_var": sigma0_sq * lam**t,
        "E_mu2": sigma0_sq / n * sum(lam**s for s in range(1, t + 1)),
        "E_logvar": math.log(sigma0_sq) + t * (math.log(lam) + float(digamma(h)) - math.log(h)),
    }


# --- learned models: GMM on a 2-D ring ------------------------------------------------------


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k + 1).fit(x)
    dist, _ = nn.kneighbors(x)
    return dist[:, k]


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024) -> np.ndarray:
    out = np.zeros(len(points), dtype=bool)
    r2 = radii**2
    c2 = np.sum(centres**2, 1)
    for i in range(0, len(points), chunk):
        p = points[i : i + chunk]
        d2 = np.sum(p**2, 1)[:, None] + c2[None, :] - 2.0 * p @ centres.T
        out[i : i + chunk] = (d2 <= r2[None, :] + 1e-12).any(1)
    return out


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> tuple[float, float]:
    """k-NN precision and recall (Kynkaanniemi et al. 2019).

    Precision: fraction of ``fake`` points inside the k-NN ball of some ``real`` point; recall: the fraction of
    ``real`` points inside the k-NN ball of some ``fake`` point. Exact, chunked over points.
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake must be (n, d) with the same d, got {real.shape} and {fake.shape}")
    k = _check_int("k", k, 1)
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"need more than k={k} points in each set, got {len(real)} and {len(fake)}")
    precision = float(_covered(fake, real, _knn_radii(real, k)).mean())
    recall = float(_covered(real, fake, _knn_radii(fake, k)).mean())
    return precision, recall


def _sample_gmm(gmm, n: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    comp = rng.choice(len(gmm.weights_), size=n, p=gmm.weights_ / gmm.weights_.sum())
    out = np.empty((n, gmm.means_.shape[1]))
    for c in range(len(gmm.weights_)):
        idx = np.flatnonzero(comp == c)
        if len(idx):
            out[idx] = _sample(gmm.means_[c], gmm.covariances_[c], len(idx), lam, rng)
    return out


def _ring(n: int, rng: np.random.Generator, radius: float, std: float, modes: int) -> np.ndarray:
    angle = 2 * math.pi * rng.integers(0, modes, n) / modes
    centres = radius * np.stack([np.cos(angle), np.sin(angle)], 1)
    return centres + std * rng.standard_normal((n, 2))


def gmm_loop(
    loop: str,
    *,
    lam: float = 1.0,
    generations: int = 20,
    n_per_generation: int = 1000,
    real_fraction: float = 0.5,
    n_eval: int = 2000,
    components: int = 8,
    k: int = 5,
    reg_covar: float = 1e-6,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Self-consuming loop of a ``GaussianMixture(components, 'full')`` on an 8-mode ring (radius 2, std 0.1).

    ``"augment"``/``"fresh"`` use ``real_fraction * n_per_generation`` real points per generation. Returns per
    generation (index 0 = fitted on real data) the k-NN ``precision`` and ``recall`` of ``n_eval`` samples
    (drawn with bias ``lam``) against ``n_eval`` fresh real points, and the number of convergence warnings.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    _check_loop(loop)
    lam = _check_lam(lam)
    generations = _check_int("generations", generations, 0)
    n_per_generation = _check_int("n_per_generation", n_per_generation, 2 * components)
    if not 0.0 < real_fraction < 1.0:
        raise ValueError(f"real_fraction must be in (0, 1), got {real_fraction}")
    rng_real = np.random.default_rng([seed, 0])
    rng_syn = np.random.default_rng([seed, 1])
    rng_eval = np.random.default_rng([seed, 2])
    n_real = int(round(real_fraction * n_per_generation))

    def real(n: int) -> np.ndarray:
        return _ring(n, rng_real, 2.0, 0.1, 8)

    first = real(n_per_generation)
    fixed = first[:n_real]
    precision, recall, warned = [], [], 0
    data = first
    for t in range(generations + 1):
        gmm = GaussianMixture(
            components, covariance_type="full", reg_covar=reg_covar, random_state=seed * 1000 + t
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            gmm.fit(data)
        warned += sum(issubclass(w.category, ConvergenceWarning) for w in caught)
        p, r = precision_recall(
            _ring(n_eval, rng_eval, 2.0, 0.1, 8), _sample_gmm(gmm, n_eval, lam, rng_syn), k
        )
        precision.append(p)
        recall.append(r)
        if loop == "full":
            data = _sample_gmm(gmm, n_per_generation, lam, rng_syn)
        else:
            base = fixed if loop == "augment" else real(n_real)
            data = np.concatenate([base, _sample_gmm(gmm, n_per_generation - n_real, lam, rng_syn)])
    return {
        "precision": np.array(precision),
        "recall": np.array(recall),
        "convergence_warnings": np.array(warned),
    }
