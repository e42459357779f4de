"""Minimisation over the probability simplex ``{p >= 0, sum p = 1}``.

Post: "通向最优分布之路:概率空间的最小化" (2024-08-06, kexue.fm/archives/10289).

* Convex-set search (Frank-Wolfe / conditional gradient): ``p <- (1 - eta) p + eta onehot(argmin grad F(p))``,
  with ``eta_k = 2 / (k + 2)``, a constant, or exact line search; optional away steps
  ``p <- p + gamma (p - e_j)``, ``j = argmax_{p_j > 0} grad_j``, ``gamma <= p_j / (1 - p_j)`` (linear
  convergence for strongly convex ``F``).
* Optimality certificate (the post's condition ``p . grad F = min_i grad_i``): the Frank-Wolfe gap
  ``gap(p) = p . grad F(p) - min_i grad F(p)_i >= 0``; for convex ``F``, ``F(p) - F* <= gap(p)``
  (:func:`fw_gap`).
* Projected gradient descent with the sort-based Euclidean projection (:func:`project_to_simplex`, which is
  sparsemax: ``argmin_{p in simplex} ||p - y||^2 = relu(y - lambda(y))``).
* KKT bisection for separable ``F``: ``dF/dp_i = nu`` on the support, ``p_i = 0`` off it; ``sum p(nu) = 1``
  fixes the multiplier ``nu`` (monotone), found by bisection.

Everything is batched over leading dims (the simplex is the last dim) and works in the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["fw_gap", "minimize_on_simplex", "project_to_simplex", "sparsemax"]

Fn = Callable[[torch.Tensor], torch.Tensor]


def project_to_simplex(y: torch.Tensor, dim: int = -1, return_threshold: bool = False):
    """Euclidean projection onto the simplex along ``dim``: ``relu(y - lambda)`` with ``sum = 1`` (sparsemax).

    Sort-based: with ``u`` sorted decreasingly, the support size is
    ``k* = max{k : u_k > (sum_{i<=k} u_i - 1)/k}``
    and ``lambda = (sum_{i<=k*} u_i - 1) / k*``. With ``return_threshold=True`` returns ``(p, lambda)``.
    """
    if not isinstance(y, torch.Tensor) or not y.is_floating_point():
        raise TypeError(f"y must be a floating-point torch.Tensor, got {type(y).__name__}")
    if y.ndim == 0 or y.shape[dim] < 1:
        raise ValueError(f"y must have a non-empty dimension {dim}, got shape {tuple(y.shape)}")
    if not torch.isfinite(y).all():
        raise ValueError("y contains non-finite values")
    z = y.movedim(dim, -1)
    u = torch.sort(z, dim=-1, descending=True).values
    css = u.cumsum(dim=-1) - 1
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    support = (u - css / k > 0).sum(dim=-1, keepdim=True)
    lam = css.gather(-1, support - 1) / support.to(z.dtype)
    p = torch.clamp(z - lam, min=0).movedim(-1, dim)
    if return_threshold:
        return p, lam.squeeze(-1)
    return p


sparsemax = project_to_simplex


def fw_gap(p: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Frank-Wolfe gap ``p . g - min_i g_i`` (>= 0 on the simplex; 0 iff ``supp p`` lies in ``argmin g``)."""
    if not isinstance(p, torch.Tensor) or not isinstance(grad, torch.Tensor):
        raise TypeError("p and grad must be tensors")
    if p.shape != grad.shape:
        raise ValueError(f"p and grad must have the same shape, got {tuple(p.shape)} and {tuple(grad.shape)}")
    return (p * grad).sum(dim=-1) - grad.min(dim=-1).values


def _check_simplex(p: torch.Tensor, atol: float = 1e-9) -> torch.Tensor:
    if not isinstance(p, torch.Tensor) or not p.is_floating_point():
        raise TypeError(f"p0 must be a floating-point torch.Tensor, got {type(p).__name__}")
    if p.ndim == 0 or p.shape[-1] < 1:
        raise ValueError(f"p0 must have a non-empty last dimension, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or float(p.min()) < -atol:
        raise ValueError(f"p0 must be >= 0 and finite, min is {float(p.min())}")
    dev = float((p.sum(dim=-1) - 1).abs().max())
    if dev > atol:
        raise ValueError(f"p0 must sum to 1 along the last dim, max deviation {dev:.3g}")
    return p


class _Objective:
    def __init__(self, F: Fn | None, grad_F: Fn | None):
        if F is None and grad_F is None:
            raise ValueError("give F (objective) and/or grad_F (its gradient)")
        for name, fn in (("F", F), ("grad_F", grad_F)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        self.F, self.grad_F = F, grad_F

    def value(self, p: torch.Tensor) -> torch.Tensor | None:
        if self.F is None:
            return None
        v = self.F(p)
        if not isinstance(v, torch.Tensor) or v.shape != p.shape[:-1]:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"F must return one value per problem, shape {tuple(p.shape[:-1])}, got {got}")
        if not torch.isfinite(v).all():
            raise ValueError("objective F returned non-finite values")
        return v

    def grad(self, p: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        if self.grad_F is not None:
            g = self.grad_F(p)
        else:
            with torch.enable_grad():
                pr = p if p.requires_grad else p.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(self.F(pr).sum(), pr, create_graph=create_graph)
        if not isinstance(g, torch.Tensor) or g.shape != p.shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"gradient must have the shape of p {tuple(p.shape)}, got {got}")
        return g


def _line_search(obj: _Objective, p: torch.Tensor, d: torch.Tensor, gmax: torch.Tensor, iters: int = 100):
    """Minimise the convex ``phi(gamma) = F(p + gamma d)`` on ``[0, gmax]``: root of ``phi'`` by a bracketed
    secant (Illinois) iteration with bisection fallback; one gradient evaluation per iteration, exact after
    one secant step for quadratic ``F``. Non-finite slopes (e.g. entropy at a vertex) count as positive.
    """

    def slope(gamma: torch.Tensor) -> torch.Tensor:
        return (obj.grad(p + gamma.unsqueeze(-1) * d) * d).sum(dim=-1)

    lo, hi = torch.zeros_like(gmax), gmax.clone()
    g0 = obj.grad(p)
    f_lo, f_hi = (g0 * d).sum(dim=-1), slope(hi)
    if not torch.isfinite(f_lo).all():
        raise ValueError("gradient of F is non-finite at the current iterate")
    # stop when the slope is zero to 1e-13 relative, or at the round-off level of the dot product
    scale = f_lo.abs().clamp_min(1e-300)
    noise = 64 * torch.finfo(p.dtype).eps * (g0.abs() * d.abs()).sum(dim=-1)
    done = f_lo >= 0  # no descent along d
    full = torch.isfinite(f_hi) & (f_hi <= 0)  # minimum at the far end
    gamma = torch.where(full, gmax, lo)
    done = done | full
    best = gamma.clone()
    side = torch.zeros_like(gmax)  # Illinois bookkeeping: +1 if the last update moved hi, -1 if lo
    for _ in range(iters):
        if bool(done.all()):
            break
        finite_hi = torch.isfinite(f_hi)
        denom = torch.where(finite_hi, f_hi - f_lo, torch.ones_like(f_hi))
        secant = lo - f_lo * (hi - lo) / denom
        inside = finite_hi & (denom > 0) & (secant > lo) & (secant < hi)
        cand = torch.where(inside, secant, (lo + hi) / 2)
        f_c = slope(cand)
        pos = ~torch.isfinite(f_c) | (f_c > 0)
        neg = torch.isfinite(f_c) & (f_c < 0)
        active = ~done
        upd_hi = active & pos
        upd_lo = active & neg
        # Illinois: halve the stale end's slope when the same end moves twice in a row
        f_lo = torch.where(upd_hi & (side > 0), f_lo / 2, f_lo)
        f_hi = torch.where(upd_lo & (side < 0), f_hi / 2, f_hi)
        hi, f_hi = torch.where(upd_hi, cand, hi), torch.where(upd_hi, f_c, f_hi)
        lo, f_lo = torch.where(upd_lo, cand, lo), torch.where(upd_lo, f_c, f_lo)
        side = torch.where(upd_hi, 1.0, torch.where(upd_lo, -1.0, side))
        best = torch.where(active, cand, best)
        converged = (torch.isfinite(f_c) & (f_c.abs() <= torch.maximum(1e-13 * scale, noise))) | (
            (hi - lo) <= 1e-15 * gmax
        )
        done = done | converged
    return torch.where(full, gmax, torch.where(f_lo >= 0, torch.zeros_like(best), best)).clamp(0.0, None)


def minimize_on_simplex(
    F: Fn | None = None,
    grad_F: Fn | None = None,
    n: int | None = None,
    p0: torch.Tensor | None = None,
    method: str = "frank_wolfe",
    steps: int = 1000,
    step_size: str | float = "2/(k+2)",
    tol: float = 0.0,
    away_steps: bool = False,
    grad_inverse: Fn | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Minimise ``F(p)`` over the simplex (last dim of ``p``); returns ``(p, history)``.

    ``F(p)`` returns one value per leading index; ``grad_F`` its gradient (else autograd of ``F``). Start at
    ``p0`` (checked to lie on the simplex) or the uniform distribution of size ``n``.

    * ``method="frank_wolfe"``: ``step_size`` ``"2/(k+2)"``, ``"line_search"`` (needs twice-differentiable
      ``F``) or a constant in ``(0, 1]``; ``away_steps=True`` adds away steps (line search only).
    * ``method="projected"``: ``p <- project(p - step_size grad F(p))`` with a float ``step_size``.
    * ``method="kkt_bisection"``: separable ``F`` only; ``grad_inverse(nu)`` must return, per coordinate,
      ``max(0, (dF/dp_i)^{-1}(nu))`` for a multiplier ``nu`` of shape ``[..., 1]``; ``steps`` bisections.

    ``history`` holds ``"gap"`` (Frank-Wolfe gap per iterate) and ``"objective"`` (if ``F`` is given), each
    of shape ``[iterations + 1, *batch]``. Iteration stops early once every gap is ``<= tol``.
    """
    obj = _Objective(F, grad_F)
    if method not in ("frank_wolfe", "projected", "kkt_bisection"):
        raise ValueError(f"method must be 'frank_wolfe', 'projected' or 'kkt_bisection', got {method!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if p0 is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int when p0 is not given, got {n!r}")
        p = torch.full((n,), 1.0 / n, dtype=dtype)
    else:
        p = _check_simplex(p0).detach().clone()
        if n is not None and p.shape[-1] != n:
            raise ValueError(f"p0 has {p.shape[-1]} coordinates but n={n}")

    hist_gap: list[torch.Tensor] = []
    hist_obj: list[torch.Tensor] = []

    def record(q: torch.Tensor) -> torch.Tensor:
        g = obj.grad(q)
        if not torch.isfinite(g).all():
            raise ValueError("gradient of F is non-finite at the current iterate")
        hist_gap.append(fw_gap(q, g).detach())
        v = obj.value(q)
        if v is not None:
            hist_obj.append(v.detach())
        return g

    if method == "kkt_bisection":
        if grad_inverse is None:
            raise ValueError("method='kkt_bisection' needs grad_inverse (separable F)")

        def mass(nu: torch.Tensor) -> torch.Tensor:
            q = grad_inverse(nu)
            if not isinstance(q, torch.Tensor) or q.shape != p.shape:
                raise ValueError(f"grad_inverse must return shape {tuple(p.shape)}")
            return q.sum(dim=-1, keepdim=True)

        lo = torch.full(p.shape[:-1] + (1,), -1.0, dtype=p.dtype)
        hi = torch.full_like(lo, 1.0)
        for _ in range(200):  # bracket: mass(lo) < 1 <= mass(hi), mass is non-decreasing in nu
            bad_lo, bad_hi = mass(lo) >= 1, mass(hi) < 1
            if not (bad_lo.any() or bad_hi.any()):
                break
            lo = torch.where(bad_lo, 2 * lo - 1, lo)
            hi = torch.where(bad_hi, 2 * hi + 1, hi)
        else:
            raise ValueError("could not bracket the multiplier; is F separable and convex?")
        for _ in range(steps):
            mid = (lo + hi) / 2
            below = mass(mid) < 1
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        q = grad_inverse((lo + hi) / 2)
        p = q / q.sum(dim=-1, keepdim=True)
        record(p)
        return p, _history(hist_gap, hist_obj)

    if method == "projected":
        if isinstance(step_size, str) or not step_size > 0:
            raise ValueError(f"projected gradient needs a float step_size > 0, got {step_size!r}")
    elif isinstance(step_size, str):
        if step_size not in ("2/(k+2)", "line_search"):
            raise ValueError(f"step_size must be '2/(k+2)', 'line_search' or a float, got {step_size!r}")
        if step_size == "line_search" and F is None:
            raise ValueError("step_size='line_search' needs F")
    elif not 0 < step_size <= 1:
        raise ValueError(f"a constant Frank-Wolfe step_size must lie in (0, 1], got {step_size}")
    if away_steps and step_size != "line_search":
        raise ValueError("away_steps=True needs step_size='line_search'")

    g = record(p)
    for k in range(steps):
        if tol > 0 and float(hist_gap[-1].max()) <= tol:
            break
        if method == "projected":
            p = project_to_simplex(p - float(step_size) * g)
        else:
            s = g.argmin(dim=-1, keepdim=True)
            d = torch.zeros_like(p).scatter_(-1, s, 1.0) - p
            gmax = torch.ones(p.shape[:-1], dtype=p.dtype)
            if away_steps:
                masked = torch.where(p > 0, g, torch.full_like(g, -math.inf))
                j = masked.argmax(dim=-1, keepdim=True)
                pj = p.gather(-1, j).squeeze(-1)
                fw_dec = (g * p).sum(-1) - g.gather(-1, s).squeeze(-1)
                away_dec = g.gather(-1, j).squeeze(-1) - (g * p).sum(-1)
                use_away = (away_dec > fw_dec) & (pj < 1)
                d_away = p - torch.zeros_like(p).scatter_(-1, j, 1.0)
                d = torch.where(use_away.unsqueeze(-1), d_away, d)
                gmax = torch.where(use_away, pj / (1 - pj).clamp_min(1e-300), gmax)
            if step_size == "line_search":
                gamma = _line_search(obj, p, d, gmax)
            elif step_size == "2/(k+2)":
                gamma = torch.full_like(gmax, 2.0 / (k + 2))
            else:
                gamma = torch.full_like(gmax, float(step_size))
            p = p + gamma.unsqueeze(-1) * d
            # exact zero for a coordinate dropped by a full away step, and no -0 drift
            p = p.clamp_min(0.0)
        g = record(p)
    return p, _history(hist_gap, hist_obj)


def _history(gaps: list[torch.Tensor], objs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"gap": torch.stack(gaps)}
    if objs:
        out["objective"] = torch.stack(objs)
    return out
