"""Adaptive learning rates as Hessian approximations: diagnostics for Adam's second moment.

Post: "从Hessian近似看自适应学习率优化器" (2024-11-29, kexue.fm/archives/10588), following Molybog et al.,
"A Theory on Adam Instability in Large-Scale Machine Learning" (arXiv 2304.09871).

Newton steps θ - H⁻¹g; Adam steps θ - η m̂/(sqrt(v̂) + ε), i.e. it uses Ĥ = diag(sqrt(v̂) + ε)/η.
Near a minimum g ≈ H(θ - θ*); if the iterate fluctuates isotropically, δ = θ - θ* ~ N(0, σ²I), then

    E[g ⊙ g] = σ² diag(H Hᵀ) = σ² Σ_j H_ij²        (= σ² H_ii² for diagonal H),

so sqrt(v̂) ∝ |H_ii| ("Hessian-like", log-log slope p = 1), whereas minibatch noise with Fisher-like
covariance ∝ H gives sqrt(v̂) ∝ sqrt(H_ii) (p = 1/2, the Gauss-Newton view) and isotropic gradient noise
p = 0. Around a non-stationary point the centred moment E[(g - E g)²] (AdaBelief) still estimates
σ² H², the uncentred one does not.

:func:`hessian_alignment` fits p and the Spearman correlation; :class:`SecondMomentAverager` averages
Adam's bias-corrected v̂ over steps by reading ``torch.optim.Adam`` state (``exp_avg_sq``, ``step``)
without copying the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = [
    "HessianAlignment",
    "SecondMomentAverager",
    "adam_v_hat",
    "ema_moments",
    "hessian_alignment",
    "monte_carlo_second_moment",
    "second_moment_identity",
    "spearman",
]


@dataclass(frozen=True)
class HessianAlignment:
    """sqrt(v̄) ≈ exp(intercept) · h^slope over ``n`` coordinates, and their Spearman correlation."""

    slope: float
    intercept: float
    spearman: float
    n: int


def _square(name: str, H: Any) -> torch.Tensor:
    if not isinstance(H, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(H).__name__}")
    if H.ndim != 2 or H.shape[0] != H.shape[1]:
        raise ValueError(f"{name} must be a square matrix, got shape {tuple(H.shape)}")
    return H


def second_moment_identity(H: torch.Tensor, sigma: float) -> torch.Tensor:
    """σ² · rowsum(H ∘ H) = E[g ⊙ g] for g = H δ, δ ~ N(0, σ² I)."""
    H = _square("H", H)
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    return sigma**2 * (H * H).sum(dim=1)


def monte_carlo_second_moment(
    H: torch.Tensor, sigma: float, n_samples: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample mean of g ⊙ g with g = H δ, δ ~ N(0, σ² I) (``n_samples`` draws)."""
    H = _square("H", H)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    delta = sigma * torch.randn(n_samples, H.shape[0], generator=generator, dtype=H.dtype)
    g = delta @ H.mT
    return (g * g).mean(dim=0)


def ema_moments(
    grads: torch.Tensor, beta1: float = 0.9, beta2: float = 0.999
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bias-corrected EMAs of g² (Adam's v̂) and of (g - m)² (AdaBelief's centred s) over a sequence.

    ``grads`` is (steps, ...); the centred term uses the bias-corrected EMA m̂ of g with β1, updated
    before it (so the first step contributes 0 instead of g², which would dominate a long transient).
    """
    if not isinstance(grads, torch.Tensor) or grads.ndim < 1 or grads.shape[0] < 1:
        raise ValueError("grads must be a tensor of shape (steps, ...) with steps >= 1")
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b}")
    m = torch.zeros_like(grads[0])
    v = torch.zeros_like(grads[0])
    s = torch.zeros_like(grads[0])
    for t, g in enumerate(grads, 1):
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        d = g - m / (1 - beta1**t)
        s.mul_(beta2).addcmul_(d, d, value=1 - beta2)
    bc = 1 - beta2 ** grads.shape[0]
    return v / bc, s / bc


def adam_v_hat(optimizer: Optimizer, param: torch.Tensor) -> torch.Tensor:
    """Adam's bias-corrected second moment v / (1 - β2^step) for ``param`` (a new tensor)."""
    state = optimizer.state.get(param)
    if not state or "exp_avg_sq" not in state or "step" not in state:
        raise ValueError("param has no Adam state (exp_avg_sq, step) in this optimizer: step it first")
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if group is None or "betas" not in group:
        raise ValueError("param is not in an Adam-like param group (with 'betas') of this optimizer")
    step = float(state["step"])
    return state["exp_avg_sq"] / (1.0 - group["betas"][1] ** step)


class SecondMomentAverager:
    """Running mean of Adam's v̂ for some parameters; call :meth:`update` after ``optimizer.step()``.

    Start calling it once the run has reached its stationary regime (e.g. the second half): the
    transient otherwise dominates the fit.
    """

    def __init__(self, optimizer: Optimizer, params: list[torch.Tensor] | None = None) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.params = (
            params if params is not None else [p for g in optimizer.param_groups for p in g["params"]]
        )
        self.count = 0
        self._sums: list[torch.Tensor] | None = None

    def update(self) -> None:
        with torch.no_grad():
            v = [adam_v_hat(self.optimizer, p).to(torch.float64) for p in self.params]
            if self._sums is None:
                self._sums = v
            else:
                for s, x in zip(self._sums, v):
                    s.add_(x)
        self.count += 1

    def mean(self) -> torch.Tensor:
        """The time-averaged v̂, flattened and concatenated over the parameters."""
        if self._sums is None:
            raise ValueError("no v̂ recorded yet: call update() after optimizer steps")
        return torch.cat([s.reshape(-1) for s in self._sums]) / self.count


def _ranks(x: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(x)
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(x.numel(), dtype=x.dtype)
    # average the ranks of ties
    uniq, inv, counts = torch.unique(x, return_inverse=True, return_counts=True)
    if uniq.numel() < x.numel():
        sums = torch.zeros(uniq.numel(), dtype=x.dtype).index_add_(0, inv, ranks)
        ranks = (sums / counts.to(x.dtype))[inv]
    return ranks


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    if x.numel() != y.numel() or x.numel() < 3:
        raise ValueError(f"need two vectors of equal length >= 3, got {x.numel()} and {y.numel()}")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = float(torch.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return float("nan") if denom == 0 else float((rx * ry).sum()) / denom


def hessian_alignment(
    second_moment: torch.Tensor | SecondMomentAverager | Optimizer,
    hessian_diag: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> HessianAlignment:
    """Fit log sqrt(v̄_i) = p · log h_i + c and the Spearman correlation of sqrt(v̄) with h.

    ``second_moment`` is v̄ itself, a :class:`SecondMomentAverager`, or an Adam optimizer (its current
    v̂, all parameters flattened in group order). p = 1: Hessian-like; p = 1/2: sqrt-Hessian (Fisher /
    Gauss-Newton-like); p = 0: unrelated. ``mask`` selects the coordinates to use (exclude dead ones).
    """
    if isinstance(second_moment, SecondMomentAverager):
        v = second_moment.mean()
    elif isinstance(second_moment, Optimizer):
        v = torch.cat(
            [
                adam_v_hat(second_moment, p).reshape(-1)
                for g in second_moment.param_groups
                for p in g["params"]
            ]
        )
    elif isinstance(second_moment, torch.Tensor):
        v = second_moment
    else:
        raise TypeError(
            f"second_moment must be a tensor, SecondMomentAverager or Optimizer, got {type(second_moment).__name__}"
        )
    if not isinstance(hessian_diag, torch.Tensor):
        raise TypeError(f"hessian_diag must be a torch.Tensor, got {type(hessian_diag).__name__}")
    v = v.detach().reshape(-1).to(torch.float64)
    h = hessian_diag.detach().reshape(-1).to(torch.float64)
    if v.numel() != h.numel():
        raise ValueError(f"second moment has {v.numel()} entries but hessian_diag has {h.numel()}")
    if mask is not None:
        mask = mask.reshape(-1).to(torch.bool)
        if mask.numel() != h.numel():
            raise ValueError(f"mask has {mask.numel()} entries, expected {h.numel()}")
        v, h = v[mask], h[mask]
    if v.numel() < 3:
        raise ValueError(f"need at least 3 coordinates for a fit, got {v.numel()}")
    if (h <= 0).any():
        raise ValueError(
            "hessian_diag must be > 0 on the fitted coordinates (mask out zero/negative curvature)"
        )
    if (v <= 0).any():
        raise ValueError("second moment must be > 0 on the fitted coordinates (mask out dead coordinates)")
    x = torch.log(h)
    y = 0.5 * torch.log(v)
    xc = x - x.mean()
    sxx = float((xc * xc).sum())
    if sxx == 0.0:
        raise ValueError("hessian_diag is constant on the fitted coordinates: the slope is undefined")
    slope = float((xc * (y - y.mean())).sum()) / sxx
    intercept = float(y.mean()) - slope * float(x.mean())
    return HessianAlignment(slope, intercept, spearman(torch.sqrt(v), h), int(v.numel()))
