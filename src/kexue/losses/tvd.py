"""TaiLr / TVD-style loss: cross-entropy that stops chasing low-probability (dirty) targets.

With ``p = softmax(z)[y]`` the post's one-parameter family is

    L_gamma(p) = -log(gamma + (1 - gamma) p) / (1 - gamma),   0 <= gamma < 1,      L_1(p) = 1 - p,

so ``gamma = 0`` is cross-entropy and ``gamma -> 1`` the smooth accuracy. Its gradient is a re-weighted
cross-entropy gradient, ``dL/dz = w (softmax(z) - onehot(y))`` with ``w = p / (gamma + (1 - gamma) p)`` in
``(0, 1]``: low-probability targets (often mislabelled) get small weights, and the loss is bounded,
``0 <= L_gamma <= -log(gamma) / (1 - gamma)``. The paper's (official code's) form is the weighted NLL
``-stopgrad(clamp(w, min_weight, 1)) * log p`` (``form="weighted"``), whose gradient equals the closed
form's when ``min_weight = 0`` (values differ). Label smoothing ``eps`` adds ``eps * mean_v(-log p_v)``,
not re-weighted, and scales the main term by ``1 - eps`` (as ``F.cross_entropy`` does).

Post: "缓解交叉熵过度自信的一个简明方案" (2023-03-14, kexue.fm/archives/9526); paper: "Tailoring Language
Generation Models under Total Variation Distance" (Ji et al., ICLR 2023, arXiv 2302.13344).

Implementation: ``log(gamma + (1 - gamma) p)`` is ``logaddexp(log gamma, log(1 - gamma) + log p)`` with
``log p = z_y - logsumexp(z)`` (never ``log(softmax)``); a custom backward writes the gradient into one
``[N, V]`` tensor, so nothing of size ``[N, V]`` is kept between forward and backward.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["TVDLoss", "TaiLrLoss", "gamma_schedule", "tailr_loss", "tvd_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _flatten_inputs(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """Validate ``(logits [..., V], target [...])``; return ``(z [N, V], safe target [N], mask [N], lead)``."""
    if not isinstance(logits, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError(
            f"logits and target must be tensors, got {type(logits).__name__} and {type(target).__name__}"
        )
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"target must hold integer class indices, got {target.dtype}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    if tuple(target.shape) != tuple(logits.shape[:-1]):
        raise ValueError(
            f"target shape {tuple(target.shape)} must equal logits shape {tuple(logits.shape)} without the "
            f"last (class) dimension, i.e. {tuple(logits.shape[:-1])}"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    t = target.reshape(-1).long()
    mask = t != ignore_index
    bad = mask & ((t < 0) | (t >= V))
    if bool(bad.any()):
        raise ValueError(
            f"target values must be in [0, {V - 1}] or ignore_index={ignore_index}, got {int(t[bad][0])}"
        )
    safe = torch.where(mask, t, torch.zeros_like(t))
    return z, safe, mask, tuple(target.shape)


def _reduce(rows: torch.Tensor, mask: torch.Tensor, reduction: str, lead: tuple[int, ...]) -> torch.Tensor:
    if reduction == "none":
        return rows.reshape(lead)
    total = rows.sum()
    if reduction == "sum":
        return total
    # mean over non-ignored rows; an all-ignored batch gives 0 (torch gives NaN)
    return total / mask.sum().clamp_min(1).to(total.dtype)


def _check_unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return float(value)


class _TVDFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z, t, mask, gamma, min_weight, weighted, eps):  # type: ignore[override]
        ct = _compute_dtype(z.dtype)
        zc = z if z.dtype == ct else z.to(ct)
        lse = torch.logsumexp(zc, dim=-1)
        logp = zc.gather(1, t[:, None]).squeeze(1) - lse
        if gamma == 0.0:
            log_q = logp
        elif gamma == 1.0:
            log_q = torch.zeros_like(logp)
        else:
            log_q = torch.logaddexp(torch.full_like(logp, math.log(gamma)), math.log1p(-gamma) + logp)
        w = torch.exp(logp - log_q)  # p / (gamma + (1 - gamma) p)
        if weighted:
            w = w.clamp(min=min_weight, max=1.0)
            main = -w * logp
        elif gamma == 1.0:
            main = -torch.expm1(logp)  # 1 - p
        else:
            main = -log_q / (1.0 - gamma)
        V = z.shape[-1]
        rows = (1.0 - eps) * main
        if eps > 0:
            rows = rows + eps * (lse - zc.mean(dim=-1))
        maskc = mask.to(ct)
        rows = rows * maskc
        coef = (1.0 - eps) * w * maskc  # weight on (softmax - onehot)
        ctx.save_for_backward(z, t, lse, coef, maskc)
        ctx.eps, ctx.V = eps, V
        return rows.to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g):  # type: ignore[override]
        z, t, lse, coef, maskc = ctx.saved_tensors
        ct = lse.dtype
        g = g.to(ct) * maskc
        c = coef * g
        e = ctx.eps * g
        grad = torch.sub(z.to(ct) if z.dtype != ct else z, lse[:, None]).exp_()
        grad.mul_((c + e)[:, None])
        if ctx.eps > 0:
            grad.sub_((e / ctx.V)[:, None])
        grad.scatter_add_(1, t[:, None], -c[:, None])
        return grad.to(z.dtype), None, None, None, None, None, None


def tvd_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    min_weight: float = 0.0,
    form: str = "closed",
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> torch.Tensor:
    """TaiLr / TVD loss, a drop-in for ``F.cross_entropy(logits, target)`` with classes in the LAST dimension.

    Args:
        logits: ``[..., V]`` (e.g. ``[N, V]`` or ``[B, T, V]``); unlike ``F.cross_entropy`` the class
            dimension is the last one, as LM logits are laid out.
        target: integer class indices of shape ``logits.shape[:-1]``; ``ignore_index`` entries are skipped.
        gamma: in ``[0, 1]``; 0 is cross-entropy, 1 is ``1 - p``.
        min_weight: floor ``b`` of the weight (``form="weighted"`` only).
        form: ``"closed"`` (the post's ``L_gamma``) or ``"weighted"`` (the paper's
            ``-stopgrad(clamp(w, b, 1)) log p``).
        label_smoothing: ``eps`` in ``[0, 1]`` as in ``F.cross_entropy``.
        reduction: ``"mean"`` (over non-ignored targets; 0 if all are ignored), ``"sum"`` or ``"none"``
            (shape ``logits.shape[:-1]``, 0 at ignored positions).
    """
    g = _check_unit("gamma", gamma)
    b = _check_unit("min_weight", min_weight)
    eps = _check_unit("label_smoothing", label_smoothing)
    if form not in ("closed", "weighted"):
        raise ValueError(f"form must be 'closed' or 'weighted', got {form!r}")
    if form == "closed" and b > 0:
        raise ValueError("min_weight only applies to form='weighted' (the closed form has no weight floor)")
    z, t, mask, lead = _flatten_inputs(logits, target, ignore_index, reduction)
    rows = _TVDFunction.apply(z, t, mask, g, b, form == "weighted", eps)
    return _reduce(rows, mask, reduction, lead)


tailr_loss = tvd_loss
"""Alias of :func:`tvd_loss` (the paper's name, TaiLr)."""


class TVDLoss(nn.Module):
    """Module form of :func:`tvd_loss`; ``gamma`` is a plain attribute so a schedule can change it."""

    def __init__(
        self,
        gamma: float,
        min_weight: float = 0.0,
        form: str = "closed",
        label_smoothing: float = 0.0,
        ignore_index: int = -100,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_unit("gamma", gamma)
        _check_unit("min_weight", min_weight)
        _check_unit("label_smoothing", label_smoothing)
        if form not in ("closed", "weighted"):
            raise ValueError(f"form must be 'closed' or 'weighted', got {form!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma = float(gamma)
        self.min_weight = float(min_weight)
        self.form = form
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return tvd_loss(
            logits,
            target,
            self.gamma,
            self.min_weight,
            self.form,
            self.label_smoothing,
            self.ignore_index,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, min_weight={self.min_weight:g}, form={self.form!r}"


TaiLrLoss = TVDLoss


def gamma_schedule(
    step: int, total_steps: int, start: float = 0.0, end: float = 0.8, kind: str = "linear"
) -> float:
    """``gamma`` moving from ``start`` to ``end`` over ``total_steps`` (the post's suggestion for training
    from scratch: start near cross-entropy, move towards 1). ``kind`` is ``"linear"`` or ``"cosine"``."""
    _check_unit("start", start)
    _check_unit("end", end)
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    frac = min(step, total_steps) / total_steps
    if kind == "linear":
        u = frac
    elif kind == "cosine":
        u = 0.5 * (1.0 - math.cos(math.pi * frac))
    else:
        raise ValueError(f"kind must be 'linear' or 'cosine', got {kind!r}")
    return float(start + (end - start) * u)
