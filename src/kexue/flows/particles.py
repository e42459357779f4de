"""Particle realisations of Wasserstein gradient flows, and the 1-D Fokker-Planck equation they solve.

Posts: "梯度流:探索通向最小值之路" (2023-06-16, kexue.fm/archives/9660) and
"生成扩散模型漫谈(十九):作为扩散ODE的GAN" (2023-06-24, kexue.fm/archives/9662).

* Reverse KL ``KL(q || p)`` flows by ``dq/dt = -div(q grad log p) + Laplacian q`` (Fokker-Planck), realised by
  overdamped Langevin ``x <- x + h grad log p(x) + sqrt(2 h) xi`` (:func:`langevin`) or by the deterministic
  particle ODE ``dx/dt = grad log p - grad log q_t`` with a Gaussian-KDE score for ``q_t``
  (:func:`probability_flow_particles`).
* :func:`fokker_planck_1d` solves the same PDE on a 1-D grid in conservative form
  ``dq/dt = d/dx ( p d/dx (q / p) )`` (finite volumes, no-flux walls): mass is conserved and ``p`` itself is
  an exact fixed point.
* :func:`monoflow_particles`: the flow of ``KL(q || p)`` with the log density ratio estimated by a logistic
  discriminator ``D ~ log p/q``; particles move by ``eps h'(D) grad D`` (MonoFlow with monotone ``h``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from kexue.losses.gan import logistic_discriminator_loss, monoflow_h

__all__ = [
    "fokker_planck_1d",
    "kde_log_density",
    "kde_score",
    "langevin",
    "monoflow_particles",
    "probability_flow_particles",
]

Score = Callable[[torch.Tensor], torch.Tensor]


def _points(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (n, dim), got {tuple(x.shape)}")
    return x.detach()


def _positive(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _count(name: str, v: object, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")
    return v


def _score(score_fn: Score, x: torch.Tensor) -> torch.Tensor:
    s = score_fn(x)
    if not isinstance(s, torch.Tensor) or s.shape != x.shape:
        got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
        raise ValueError(f"score must return the shape of x {tuple(x.shape)}, got {got}")
    if not torch.isfinite(s).all():
        raise ValueError("score returned non-finite values")
    return s


def langevin(
    score_fn: Score,
    x0: torch.Tensor,
    step_size: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    record_every: int | None = None,
):
    """Euler-Maruyama for ``dx = grad log p(x) dt + sqrt(2) dW``: ``x <- x + h s(x) + sqrt(2 h) xi``.

    ``score_fn(x)`` returns ``grad log p`` with the shape of ``x`` (``(n, dim)``). Returns the final
    particles, or ``(x, snapshots)`` with ``snapshots[k]`` the state after ``k * record_every`` steps.
    """
    x = _points("x0", x0)
    h = _positive("step_size", step_size)
    n_steps = _count("n_steps", n_steps)
    if record_every is not None:
        _count("record_every", record_every)
    noise = math.sqrt(2 * h)
    snaps = [x] if record_every else None
    for k in range(1, n_steps + 1):
        xi = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + h * _score(score_fn, x) + noise * xi
        if snaps is not None and k % record_every == 0:
            snaps.append(x)
    if snaps is not None:
        return x, torch.stack(snaps)
    return x


def _bandwidth(x: torch.Tensor, bandwidth: float | None) -> float:
    if bandwidth is not None:
        return _positive("bandwidth", bandwidth)
    n, d = x.shape
    sigma = float(x.std(dim=0).mean()) if n > 1 else 1.0
    return max(sigma, 1e-12) * n ** (-1.0 / (d + 4))


def kde_log_density(x: torch.Tensor, centres: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """``log (1/n) sum_j N(x; centres_j, h^2 I)`` at each row of ``x`` (differentiable in ``x``)."""
    h = _positive("bandwidth", bandwidth)
    d = x.shape[1]
    sq = torch.cdist(x, centres.detach()).pow(2)
    return (
        torch.logsumexp(-sq / (2 * h * h), dim=1)
        - math.log(centres.shape[0])
        - 0.5 * d * math.log(2 * math.pi * h * h)
    )


def kde_score(x: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """``grad log q_hat`` of the Gaussian KDE of the particles ``x`` at the particles themselves.

    ``q_hat = (1/n) sum_j N(., x_j, h^2 I)``; the score is ``(sum_j w_ij x_j - x_i) / h^2`` with softmax
    weights ``w_ij``. Default bandwidth: Scott's rule ``mean std * n^(-1/(d+4))``.
    """
    x = _points("x", x)
    h = _bandwidth(x, bandwidth)
    w = torch.softmax(-torch.cdist(x, x).pow(2) / (2 * h * h), dim=1)
    return (w @ x - x) / (h * h)


def probability_flow_particles(
    score_p: Score,
    x0: torch.Tensor,
    step_size: float,
    n_steps: int,
    bandwidth: float | None = None,
    record_every: int | None = None,
):
    """Deterministic particles for the reverse-KL flow: ``dx/dt = grad log p(x) - grad log q_hat_t(x)``.

    ``q_hat_t`` is the Gaussian KDE of the current particles (:func:`kde_score`); keep the particle count
    small (cost ``O(n^2)`` per step). Explicit Euler; returns like :func:`langevin`.
    """
    x = _points("x0", x0)
    h = _positive("step_size", step_size)
    n_steps = _count("n_steps", n_steps)
    if record_every is not None:
        _count("record_every", record_every)
    bw = _bandwidth(x, bandwidth) if bandwidth is None else _positive("bandwidth", bandwidth)
    snaps = [x] if record_every else None
    for k in range(1, n_steps + 1):
        x = x + h * (_score(score_p, x) - kde_score(x, bw))
        if snaps is not None and k % record_every == 0:
            snaps.append(x)
    if snaps is not None:
        return x, torch.stack(snaps)
    return x


def _grid(x_grid: object) -> tuple[torch.Tensor, float]:
    if not isinstance(x_grid, torch.Tensor) or x_grid.ndim != 1 or x_grid.shape[0] < 3:
        raise ValueError("x_grid must be a 1-D tensor of at least 3 cell centres")
    x_grid = x_grid.to(torch.float64)
    dx = x_grid.diff()
    if not (dx > 0).all() or float((dx - dx.mean()).abs().max()) > 1e-9 * float(dx.mean()):
        raise ValueError("x_grid must be uniformly spaced and increasing")
    return x_grid, float(dx.mean())


def fokker_planck_1d(
    log_p: torch.Tensor | Callable[[torch.Tensor], torch.Tensor],
    q0: torch.Tensor,
    x_grid: torch.Tensor,
    dt: float,
    n_steps: int,
    method: str = "implicit",
    record_every: int | None = None,
):
    """Solve ``dq/dt = d/dx( q d/dx log(q/p) ) = d/dx( p d/dx (q/p) )`` on a uniform 1-D grid.

    Finite volumes with face density ``sqrt(p_i p_{i+1})`` and no-flux walls, so total mass ``sum q dx``
    is conserved exactly (up to round-off) and ``q = p`` is a fixed point. ``log_p`` is the target's
    (unnormalised) log density, as values on the grid or a callable. ``method="implicit"`` (backward Euler,
    unconditionally stable) or ``"explicit"`` (forward Euler; raises if ``dt`` exceeds its stability limit).
    Returns ``q`` after ``n_steps`` steps (float64), or ``(q, snapshots)`` every ``record_every`` steps.
    """
    x_grid, dx = _grid(x_grid)
    n = x_grid.shape[0]
    lp = log_p(x_grid) if callable(log_p) else log_p
    if not isinstance(lp, torch.Tensor) or lp.shape != (n,):
        raise ValueError(f"log_p must give {n} values on the grid")
    lp = lp.to(torch.float64)
    if not torch.isfinite(lp).all():
        raise ValueError("log_p must be finite on the grid")
    if not isinstance(q0, torch.Tensor) or q0.shape != (n,):
        raise ValueError(f"q0 must have shape ({n},), got {getattr(q0, 'shape', type(q0).__name__)}")
    q = q0.detach().to(torch.float64)
    if (q < 0).any() or not torch.isfinite(q).all():
        raise ValueError("q0 must be finite and >= 0")
    dt = _positive("dt", dt)
    n_steps = _count("n_steps", n_steps)
    if record_every is not None:
        _count("record_every", record_every)
    if method not in ("implicit", "explicit"):
        raise ValueError(f"method must be 'implicit' or 'explicit', got {method!r}")

    # dq_i/dt = sum over faces of c_f (rho_nb - rho_i), rho = q / p, c_f = sqrt(p_i p_{i+1}) / dx^2.
    # Coefficient of q_j in that sum: c_f / p_j = exp(+-(lp_{i+1} - lp_i) / 2) / dx^2 (no overflow).
    half = 0.5 * (lp[1:] - lp[:-1])
    to_left = torch.exp(-half) / dx**2  # effect of q_{i+1} on q_i: c_f / p_{i+1} = sqrt(p_i / p_{i+1}) / dx^2
    to_right = torch.exp(half) / dx**2  # effect of q_i on q_{i+1}: c_f / p_i = sqrt(p_{i+1} / p_i) / dx^2
    op = torch.zeros(n, n, dtype=torch.float64)
    idx = torch.arange(n - 1)
    op[idx, idx + 1] += to_left
    op[idx + 1, idx + 1] -= to_left
    op[idx + 1, idx] += to_right
    op[idx, idx] -= to_right
    if method == "implicit":
        step_matrix = torch.linalg.inv(torch.eye(n, dtype=torch.float64) - dt * op)
    else:
        limit = 1.0 / float(op.diagonal().abs().max())
        if dt > limit:
            raise ValueError(
                f"explicit scheme unstable: dt={dt} exceeds the limit {limit:.3g}; use a smaller dt"
            )
        step_matrix = torch.eye(n, dtype=torch.float64) + dt * op
    snaps = [q] if record_every else None
    for k in range(1, n_steps + 1):
        q = step_matrix @ q
        if snaps is not None and k % record_every == 0:
            snaps.append(q)
    if snaps is not None:
        return q, torch.stack(snaps)
    return q


def monoflow_particles(
    x: torch.Tensor,
    discriminator: nn.Module,
    data: torch.Tensor | Callable[[int, torch.Generator | None], torch.Tensor],
    rounds: int,
    d_steps: int = 25,
    eps: float = 0.01,
    h: str | Callable[[torch.Tensor], torch.Tensor] = "logit",
    shift: float = 5.0,
    lr: float = 1e-3,
    data_batch: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """MonoFlow on particles (no generator): each round trains the logistic discriminator ``D ~ log p/q``
    for ``d_steps`` Adam steps (particles vs fresh data; ``D`` and its optimiser persist across rounds),
    then moves every particle by ``x <- x + eps h'(D(x)) grad_x D(x)``.

    ``data`` is a tensor of target samples (a random batch of ``data_batch`` rows is drawn per step, default
    the particle count) or a callable ``(n, generator) -> samples``. ``callback(round, x)`` is called after
    every round (and with round 0 before the first). Returns the final particles.
    """
    x = _points("x", x).clone()
    rounds = _count("rounds", rounds)
    d_steps = _count("d_steps", d_steps)
    eps = _positive("eps", eps)
    hfn = monoflow_h(h, shift)
    n = x.shape[0]
    batch = n if data_batch is None else _count("data_batch", data_batch)
    if isinstance(data, torch.Tensor):
        pool = _points("data", data)
        if pool.shape[1] != x.shape[1]:
            raise ValueError(f"data has dimension {pool.shape[1]} but particles have {x.shape[1]}")

        def draw(m: int) -> torch.Tensor:
            return pool[torch.randint(0, pool.shape[0], (m,), generator=generator)]
    elif callable(data):

        def draw(m: int) -> torch.Tensor:
            return _points("data(n)", data(m, generator))
    else:
        raise TypeError("data must be a tensor of samples or a callable (n, generator) -> samples")
    opt = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=(0.5, 0.9))
    if callback is not None:
        callback(0, x)
    for r in range(1, rounds + 1):
        for _ in range(d_steps):
            loss = logistic_discriminator_loss(discriminator(draw(batch)), discriminator(x))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        xr = x.requires_grad_(True)
        hd = hfn(discriminator(xr).reshape(n))
        (v,) = torch.autograd.grad(hd.sum(), xr)
        x = (xr + eps * v).detach()
        if callback is not None:
            callback(r, x)
    return x
