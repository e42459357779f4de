"""Descent of density functionals: ``dp/dt = div( p grad dF/dp )`` (Eulerian) and its particles (Lagrangian).

Post: "通向最优分布之路:概率空间的最小化" (2024-08-06, kexue.fm/archives/10289). Perturbing a density by the
change of variables ``x -> x + eta mu(x)`` changes ``F[p] = int F(p(x), x) dx`` by
``-eta int p grad(dF/dp) . mu dx`` to first order; ``mu = grad dF/dp`` gives the iteration
``p <- p + eta div(p grad dF/dp)`` (the Wasserstein gradient flow), and particles ``x ~ p_t`` move with
velocity ``-grad (dF/dp)(p_t(x), x)``.

* :func:`density_flow_1d`: explicit finite volumes on a uniform grid with no-flux walls; the flux through
  the face between cells ``i`` and ``i+1`` is ``p_face (phi_{i+1} - phi_i) / dx``, ``phi = dF/dp``, so total
  mass is conserved exactly and any density with constant ``phi`` is a fixed point.
* :func:`density_flow_particles`: particles with velocity ``-grad_x phi(p_hat(x), x)``, the density
  estimated by a Gaussian KDE (any dimension, autograd) or, in 1-D, from the spacing of equal-mass particles.

Examples: ``F = p log p + p V`` gives ``phi = log p + 1 + V`` (Fokker-Planck, stationary ``exp(-V)/Z``);
``F = p^2 / 2`` gives ``phi = p`` (porous-medium equation ``dp/dt = div(p grad p)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from kexue.flows.particles import kde_log_density

__all__ = ["density_flow_1d", "density_flow_particles", "functional_value_1d"]

Phi = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _grid(grid: object) -> tuple[torch.Tensor, float]:
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.shape[0] < 3:
        raise ValueError("grid must be a 1-D tensor of at least 3 cell centres")
    grid = grid.to(torch.float64)
    dx = grid.diff()
    if not (dx > 0).all() or float((dx - dx.mean()).abs().max()) > 1e-9 * float(dx.mean()):
        raise ValueError("grid must be uniformly spaced and increasing")
    return grid, float(dx.mean())


def _phi(dF_dp: Phi, p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    v = dF_dp(p, x)
    if not isinstance(v, torch.Tensor) or v.shape != p.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"dF_dp must return the shape of p {tuple(p.shape)}, got {got}")
    if not torch.isfinite(v).all():
        raise ValueError("dF_dp returned non-finite values (log of a zero density? clamp p away from 0)")
    return v


def _face(p: torch.Tensor, kind: str) -> torch.Tensor:
    a, b = p[..., :-1], p[..., 1:]
    if kind == "arithmetic":
        return (a + b) / 2
    if kind == "geometric":
        return (a * b).sqrt()
    # logarithmic mean (a - b) / (log a - log b), = a when a == b, 0 when either is 0
    la, lb = a.clamp_min(1e-300).log(), b.clamp_min(1e-300).log()
    diff = la - lb
    safe = diff.abs() > 1e-10
    lm = torch.where(safe, (a - b) / torch.where(safe, diff, torch.ones_like(diff)), (a + b) / 2)
    return torch.where((a > 0) & (b > 0), lm, torch.zeros_like(lm))


def density_flow_1d(
    dF_dp: Phi,
    p0: torch.Tensor,
    grid: torch.Tensor,
    dt: float,
    steps: int,
    face: str = "arithmetic",
    record_every: int | None = None,
):
    """Explicit finite-volume solution of ``dp/dt = d/dx( p d/dx phi )``, ``phi = dF_dp(p, x)``.

    ``p0`` are cell averages on the uniform ``grid`` (float64 is used throughout). ``face`` chooses the
    face density: ``"arithmetic"`` (exact flux for ``phi = p``), ``"logarithmic"`` (exact flux
    ``(p_{i+1} - p_i)/dx`` for ``phi = log p``) or ``"geometric"``. Raises ``ValueError`` when a step makes
    the density negative or non-finite (``dt`` too large: explicit stability needs about
    ``dt <= dx^2 / (2 max p dphi/dp)``). Returns ``p`` or ``(p, snapshots)`` every ``record_every`` steps.
    """
    grid, dx = _grid(grid)
    n = grid.shape[0]
    if not isinstance(p0, torch.Tensor) or p0.shape != (n,):
        raise ValueError(f"p0 must have shape ({n},), got {getattr(p0, 'shape', type(p0).__name__)}")
    p = p0.detach().to(torch.float64)
    if (p < 0).any() or not torch.isfinite(p).all():
        raise ValueError("p0 must be finite and >= 0")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise ValueError(f"dt must be a number > 0, got {dt!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if face not in ("arithmetic", "geometric", "logarithmic"):
        raise ValueError(f"face must be 'arithmetic', 'geometric' or 'logarithmic', got {face!r}")
    if record_every is not None and (
        isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1
    ):
        raise ValueError(f"record_every must be an int >= 1, got {record_every!r}")
    scale = float(p.max()) if float(p.max()) > 0 else 1.0
    snaps = [p] if record_every else None
    zero = torch.zeros(1, dtype=torch.float64)
    for k in range(1, steps + 1):
        phi = _phi(dF_dp, p, grid)
        flux = _face(p, face) * (phi[1:] - phi[:-1]) / dx
        full = torch.cat([zero, flux, zero])
        p = p + dt * (full[1:] - full[:-1]) / dx
        if not torch.isfinite(p).all() or float(p.min()) < -1e-12 * scale:
            raise ValueError(f"density became negative or non-finite at step {k}: dt={dt} is too large")
        p = p.clamp_min(0.0)
        if snaps is not None and k % record_every == 0:
            snaps.append(p)
    if snaps is not None:
        return p, torch.stack(snaps)
    return p


def functional_value_1d(
    F: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], p: torch.Tensor, grid: torch.Tensor
):
    """``int F(p(x), x) dx`` by the midpoint rule on a uniform grid (``F`` maps elementwise)."""
    grid, dx = _grid(grid)
    return F(p.to(torch.float64), grid).sum(dim=-1) * dx


def _spacing_velocity(dF_dp: Phi, x: torch.Tensor) -> torch.Tensor:
    """1-D equal-mass particles: density from neighbour spacing, ``-d phi/dx`` by finite differences."""
    xs, order = torch.sort(x[:, 0])
    n = xs.shape[0]
    gaps = xs.diff()
    if bool((gaps <= 0).any()):
        raise ValueError("particles collided (equal positions): reduce dt")
    width = torch.empty_like(xs)
    width[1:-1] = (xs[2:] - xs[:-2]) / 2
    width[0], width[-1] = gaps[0], gaps[-1]
    dens = (1.0 / n) / width
    phi = _phi(dF_dp, dens, xs)
    grad = torch.empty_like(xs)
    grad[1:-1] = (phi[2:] - phi[:-2]) / (xs[2:] - xs[:-2])
    grad[0], grad[-1] = (phi[1] - phi[0]) / gaps[0], (phi[-1] - phi[-2]) / gaps[-1]
    out = torch.empty_like(xs)
    out[order] = grad
    return out[:, None]


def density_flow_particles(
    dF_dp: Phi,
    x0: torch.Tensor,
    dt: float,
    steps: int,
    bandwidth: float | None = None,
    density: str = "kde",
    record_every: int | None = None,
):
    """Particles moving with ``dx/dt = -grad_x phi(p_hat(x), x)`` (explicit Euler); ``x0`` is ``(n, dim)``.

    ``density="kde"``: ``p_hat`` is the Gaussian KDE of the particles with ``bandwidth`` (centres held fixed
    while differentiating; ``dF_dp`` gets ``x`` of shape ``(n,)`` in 1-D and ``(n, dim)`` otherwise). The KDE
    smooths the density: entropy-type ``phi`` leaves the cloud's variance biased low, and isolated tail
    particles (spacing > bandwidth) feel no diffusion. ``density="spacing"`` (1-D only): equal-mass particles,
    ``p_hat_i = (1/n) / ((x_{i+1} - x_{i-1}) / 2)`` and ``d phi/dx`` by finite differences along the sorted
    particles (the classic Lagrangian scheme; ``O(n log n)`` per step). Returns ``x`` or ``(x, snapshots)``.
    """
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim != 2 or x0.shape[0] < 3:
        raise ValueError("x0 must be a floating-point tensor of shape (n, dim) with n >= 3")
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not dt > 0:
        raise ValueError(f"dt must be a number > 0, got {dt!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if density not in ("kde", "spacing"):
        raise ValueError(f"density must be 'kde' or 'spacing', got {density!r}")
    if density == "kde" and not (
        isinstance(bandwidth, (int, float)) and bandwidth > 0 and math.isfinite(bandwidth)
    ):
        raise ValueError(f"density='kde' needs a bandwidth > 0, got {bandwidth!r}")
    if density == "spacing" and x0.shape[1] != 1:
        raise ValueError(f"density='spacing' is for 1-D particles (n, 1), got {tuple(x0.shape)}")
    if record_every is not None and (
        isinstance(record_every, bool) or not isinstance(record_every, int) or record_every < 1
    ):
        raise ValueError(f"record_every must be an int >= 1, got {record_every!r}")
    x = x0.detach()
    snaps = [x] if record_every else None
    for k in range(1, steps + 1):
        if density == "spacing":
            g = _spacing_velocity(dF_dp, x)
        else:
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                dens = kde_log_density(xr, x, bandwidth).exp()
                phi = _phi(dF_dp, dens, xr if x.shape[1] > 1 else xr[:, 0])
                (g,) = torch.autograd.grad(phi.sum(), xr)
        x = (x - dt * g).detach()
        if not torch.isfinite(x).all():
            raise ValueError(f"particles became non-finite at step {k}: dt={dt} is too large")
        if snaps is not None and k % record_every == 0:
            snaps.append(x)
    if snaps is not None:
        return x, torch.stack(snaps)
    return x
