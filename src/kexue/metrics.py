"""Sample-based distances between distributions, and mode statistics for mixtures.

* :func:`sliced_wasserstein` — sliced Wasserstein-2 distance
  ``SW2(x, y) = sqrt( mean_u  mean_i (sort(x u)_i - sort(y u)_i)^2 )`` over random unit directions ``u``
  (a fixed seed makes it a deterministic function of the two sample sets).
* :func:`mmd_rbf` — squared maximum mean discrepancy with a sum of Gaussian kernels (unbiased U-statistic).
* :func:`mode_stats` — for a mixture with known centres and isotropic std: how many centres receive at
  least ``min_share`` of their fair share of samples within ``radius_stds`` std, and the fraction of
  "high-quality" samples (within that radius of any centre).

These are the metrics of the 2-D GAN / flow reproductions (specs ``gan-qp`` and friends).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mmd_rbf", "mode_stats", "sliced_wasserstein"]


def _samples(name: str, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, dim) with n >= 1, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains non-finite values")
    return x


def sliced_wasserstein(x: torch.Tensor, y: torch.Tensor, n_projections: int = 256, seed: int = 0) -> float:
    """Sliced Wasserstein-2 distance between two equally sized sample sets of shape ``(n, dim)``.

    Directions are drawn uniformly on the unit sphere from ``torch.Generator().manual_seed(seed)``, so the
    value is deterministic. Computed in float64.
    """
    x, y = _samples("x", x), _samples("y", y)
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape (n, dim), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if isinstance(n_projections, bool) or not isinstance(n_projections, int) or n_projections < 1:
        raise ValueError(f"n_projections must be an int >= 1, got {n_projections!r}")
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(x.shape[1], n_projections, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=0, keepdim=True)
    # numpy's sort is several times faster than torch.sort on CPU for this shape
    px = np.sort((x.detach().to(torch.float64) @ u).T.numpy(), axis=1)
    py = np.sort((y.detach().to(torch.float64) @ u).T.numpy(), axis=1)
    return float(np.sqrt(np.mean((px - py) ** 2)))


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.1, 0.3, 1.0)) -> float:
    """Unbiased squared MMD with the kernel ``sum_h exp(-||a - b||^2 / (2 h^2))`` (float64)."""
    x, y = _samples("x", x), _samples("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(f"need at least 2 samples in each set, got {x.shape[0]} and {y.shape[0]}")
    if not bandwidths or any(not h > 0 for h in bandwidths):
        raise ValueError(f"bandwidths must be positive, got {bandwidths}")
    x = x.detach().to(torch.float64)
    y = y.detach().to(torch.float64)

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * kxy.mean())


def mode_stats(
    samples: torch.Tensor,
    centres: torch.Tensor,
    std: float,
    radius_stds: float = 3.0,
    min_share: float = 0.25,
) -> dict[str, float]:
    """Mode coverage of a mixture with isotropic components.

    A sample belongs to centre ``k`` if it lies within ``radius_stds * std`` of it. Centre ``k`` is
    *covered* if it holds at least ``min_share * n / K`` samples. Returns ``{"modes": covered count,
    "high_quality": fraction of samples within the radius of some centre}``.
    """
    samples = _samples("samples", samples)
    centres = _samples("centres", centres)
    if samples.shape[1] != centres.shape[1]:
        raise ValueError(
            f"samples and centres must have the same dimension, got {samples.shape[1]} and {centres.shape[1]}"
        )
    if not std > 0 or not radius_stds > 0 or not 0 < min_share:
        raise ValueError(f"std, radius_stds, min_share must be > 0, got {std}, {radius_stds}, {min_share}")
    d = torch.cdist(samples.detach().to(torch.float64), centres.to(torch.float64))
    dmin, k = d.min(dim=1)
    close = dmin <= radius_stds * std
    counts = torch.bincount(k[close], minlength=centres.shape[0])
    fair = samples.shape[0] / centres.shape[0]
    return {
        "modes": float((counts >= min_share * fair).sum()),
        "high_quality": float(close.to(torch.float64).mean()),
    }
