"""EMO: an earth-mover (optimal-transport) classification loss with a cost from fixed embeddings.

The transport cost of moving the model distribution ``p`` onto a one-hot target ``e_t`` is exact and
closed-form (the only coupling sends all mass to ``t``): ``EMO = sum_i p_i c_{i,t}``. With the cosine cost
``c_ij = 1 - cos(e_i, e_j)`` of fixed embeddings and unit rows ``u_i = e_i / |e_i|``,

    EMO(p, t) = 1 - < sum_i p_i u_i , u_t >,

one ``[N, V] x [V, d]`` product per batch; the ``V x V`` cost is never built. For a soft target ``tau`` the
product coupling gives the upper bound ``sum_ij p_i tau_j c_ij = 1 - <p U, tau U>`` (tight when ``tau`` is
one-hot). With ``c = 1 - delta`` it is ``1 - p_t``. The gradient w.r.t. the logits is
``d EMO / d z_j = p_j (c_{j,t} - EMO)``. Because EMO alone cannot separate near-synonyms (and converges
slowly from scratch), the official code trains with ``0.5 * (mle + stopgrad(mle / EMO) * EMO)``, whose
value equals the NLL ``mle`` but whose gradient mixes both (log ``emo_distance`` separately).

Post: "EMO:基于最优传输思想设计的分类损失函数" (2023-10-13, kexue.fm/archives/9797); paper: "EMO: Earth
Mover Distance Optimization for Auto-Regressive Language Modeling" (Ren, Wu, Zhu; ICLR 2024,
arXiv 2310.04691).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .tvd import _compute_dtype, _flatten_inputs, _reduce

__all__ = ["EMOLoss", "emo_distance", "emo_loss", "unit_rows"]

_COMBINES = ("none", "official", "official_mode1", "official_mode2")
_GUARD = 1e-10


def unit_rows(cost_embedding: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norms (detached); zero rows are an error (their cosine is undefined)."""
    if not isinstance(cost_embedding, torch.Tensor) or cost_embedding.dim() != 2:
        raise ValueError(
            f"cost_embedding must be a 2-D tensor [V, d], got {getattr(cost_embedding, 'shape', cost_embedding)}"
        )
    if not cost_embedding.is_floating_point():
        raise TypeError(f"cost_embedding must be floating point, got {cost_embedding.dtype}")
    e = cost_embedding.detach()
    norms = torch.linalg.vector_norm(e, dim=1, keepdim=True)
    zero = norms.squeeze(1) == 0
    if bool(zero.any()):
        raise ValueError(
            f"cost_embedding has zero-norm rows (e.g. row {int(zero.nonzero()[0])}); cosine cost is undefined"
        )
    if not bool(torch.isfinite(e).all()):
        raise ValueError("cost_embedding has non-finite entries")
    return e / norms


class _EMOFunction(torch.autograd.Function):
    """Per-row ``a * mle + b * emo`` with ``a, b`` detached functions of (mle, emo) chosen by ``combine``."""

    @staticmethod
    def forward(ctx: Any, z, t, tau, mask, U, C, combine):  # type: ignore[override]
        ct = _compute_dtype(z.dtype)
        zc = z if z.dtype == ct else z.to(ct)
        lse = torch.logsumexp(zc, dim=-1)
        p = torch.sub(zc, lse[:, None]).exp_()
        v = None
        if tau is None:
            mle = lse - zc.gather(1, t[:, None]).squeeze(1)
        else:
            tau = tau.to(ct)
            mle = lse * tau.sum(-1) - (tau * zc).sum(-1)
        if U is not None:
            Uc = U.to(ct)
            v = Uc[t] if tau is None else tau @ Uc  # the target's (mean) unit embedding, [N, d]
            emo = 1.0 - ((p @ Uc) * v).sum(-1)
        else:
            Cc = C.to(ct)
            crow = Cc.T[t] if tau is None else tau @ Cc.T  # crow[n, j] = cost of moving class j onto row n
            emo = (p * crow).sum(-1)
        del p
        if combine == "none":
            a, b = torch.zeros_like(mle), torch.ones_like(emo)
        elif combine == "official":
            a, b = torch.full_like(mle, 0.5), 0.5 * mle / (emo + _GUARD)
        elif combine == "official_mode1":
            a, b = torch.full_like(mle, 0.5), 0.5 * torch.clamp(mle / (emo + _GUARD), max=3.0)
        else:
            a, b = emo / (mle + _GUARD), torch.ones_like(emo)
        maskc = mask.to(ct)
        rows = (a * mle + b * emo) * maskc
        ctx.save_for_backward(z, t, tau, lse, v, U, C, a * maskc, b * maskc, emo)
        return rows.to(z.dtype)

    @staticmethod
    def backward(ctx: Any, g):  # type: ignore[override]
        z, t, tau, lse, v, U, C, a, b, emo = ctx.saved_tensors
        ct = lse.dtype
        g = g.to(ct)
        a, b = a * g, b * g
        zc = z if z.dtype == ct else z.to(ct)
        p = torch.sub(zc, lse[:, None]).exp_()
        # grad = a (p - target) + b p (c_row - emo)
        if U is not None:
            grad = v @ U.to(ct).T  # c_row = 1 - grad
            grad.mul_(-b[:, None]).add_((a + b * (1.0 - emo))[:, None])
        else:
            Cc = C.to(ct)
            grad = Cc.T[t] if tau is None else tau.to(ct) @ Cc.T
            grad.sub_(emo[:, None]).mul_(b[:, None]).add_(a[:, None])
        grad.mul_(p)
        if tau is None:
            grad.scatter_add_(1, t[:, None], -a[:, None])
        else:
            grad.sub_(a[:, None] * tau.to(ct))
        return grad.to(z.dtype), None, None, None, None, None, None


def _prepare(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    target_probs: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    shift_for_causal_lm: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, tuple[int, ...]]:
    if shift_for_causal_lm:
        if logits.dim() < 3:
            raise ValueError(f"shift_for_causal_lm needs logits [B, T, V], got {tuple(logits.shape)}")
        logits = logits[..., :-1, :]
        target = None if target is None else target[..., 1:]
        target_probs = None if target_probs is None else target_probs[..., 1:, :]
    if target_probs is None:
        if target is None:
            raise ValueError("give target (class indices) or target_probs")
        z, t, mask, lead = _flatten_inputs(logits, target, ignore_index, reduction)
        return z, t, None, mask, lead
    if not isinstance(target_probs, torch.Tensor) or tuple(target_probs.shape) != tuple(logits.shape):
        raise ValueError(
            f"target_probs must have the logits' shape {tuple(logits.shape)}, "
            f"got {tuple(getattr(target_probs, 'shape', ()))}"
        )
    if not target_probs.is_floating_point():
        raise TypeError(f"target_probs must be floating point, got {target_probs.dtype}")
    if target is None:
        target = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    z, t, mask, lead = _flatten_inputs(logits, target, ignore_index, reduction)
    tau = target_probs.reshape(-1, logits.shape[-1]).detach()
    return z, t, tau, mask, lead


def _emo(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    U: torch.Tensor | None,
    C: torch.Tensor | None,
    combine: str,
    ignore_index: int,
    reduction: str,
    target_probs: torch.Tensor | None,
    shift_for_causal_lm: bool,
) -> torch.Tensor:
    if combine not in _COMBINES:
        raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
    if isinstance(logits, torch.Tensor) and not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got {logits.dtype}")
    z, t, tau, mask, lead = _prepare(
        logits, target, target_probs, ignore_index, reduction, shift_for_causal_lm
    )
    V = z.shape[-1]
    if U is not None and U.shape[0] != V:
        raise ValueError(
            f"cost_embedding has {U.shape[0]} rows but logits have V={V} classes (shape {tuple(logits.shape)})"
        )
    if C is not None and tuple(C.shape) != (V, V):
        raise ValueError(
            f"cost_matrix must have shape ({V}, {V}) for logits {tuple(logits.shape)}, got {tuple(C.shape)}"
        )
    rows = _EMOFunction.apply(z, t, tau, mask, U, C, combine)
    return _reduce(rows, mask, reduction, lead)


def _costs(
    cost_embedding: torch.Tensor | None, cost_matrix: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if (cost_embedding is None) == (cost_matrix is None):
        raise ValueError("give exactly one of cost_embedding ([V, d], cosine cost) or cost_matrix ([V, V])")
    if cost_embedding is not None:
        return unit_rows(cost_embedding), None
    if not isinstance(cost_matrix, torch.Tensor) or cost_matrix.dim() != 2:
        raise ValueError(
            f"cost_matrix must be a 2-D tensor [V, V], got {getattr(cost_matrix, 'shape', cost_matrix)}"
        )
    if not cost_matrix.is_floating_point():
        raise TypeError(f"cost_matrix must be floating point, got {cost_matrix.dtype}")
    return None, cost_matrix.detach()


def emo_loss(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    cost_embedding: torch.Tensor | None = None,
    combine: str = "official",
    ignore_index: int = -100,
    reduction: str = "mean",
    target_probs: torch.Tensor | None = None,
    *,
    cost_matrix: torch.Tensor | None = None,
    shift_for_causal_lm: bool = False,
) -> torch.Tensor:
    """EMO training loss, a drop-in for ``F.cross_entropy`` with classes in the LAST dimension.

    Args:
        logits: ``[..., V]``; target: class indices of shape ``logits.shape[:-1]`` (``ignore_index`` skipped).
        cost_embedding: ``[V, d]`` fixed embeddings (e.g. a frozen copy of the pre-trained LM head); the
            cost is ``1 - cos(e_i, e_j)``. Alternatively ``cost_matrix`` ``[V, V]`` with ``c[i, j]`` the cost
            of moving mass from class ``i`` to class ``j``. Neither receives gradients.
        combine: ``"none"`` (EMO alone), ``"official"`` (``0.5 (mle + sg(mle/emo) emo)``, the paper's LM
            code), ``"official_mode1"`` (ratio clipped at 3, PyPI ``EMOLoss`` mode 1) or ``"official_mode2"``
            (``sg(emo/mle) mle + emo``).
        target_probs: optional soft targets ``[..., V]`` (product-coupling upper bound; soft NLL); then
            ``target`` is only used to mark ignored positions and may be ``None``.
        shift_for_causal_lm: compare ``logits[..., :-1, :]`` with ``target[..., 1:]`` (do not also shift
            outside).
        reduction: ``"mean"`` over non-ignored positions (0 if none), ``"sum"`` or ``"none"``.
    """
    U, C = _costs(cost_embedding, cost_matrix)
    return _emo(logits, target, U, C, combine, ignore_index, reduction, target_probs, shift_for_causal_lm)


def emo_distance(
    logits: torch.Tensor,
    target: torch.Tensor | None,
    cost_embedding: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    target_probs: torch.Tensor | None = None,
    *,
    cost_matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """The transport cost itself, ``sum_i p_i c_{i,t}`` (``emo_loss(..., combine="none")``)."""
    return emo_loss(
        logits,
        target,
        cost_embedding,
        "none",
        ignore_index,
        reduction,
        target_probs,
        cost_matrix=cost_matrix,
    )


class EMOLoss(nn.Module):
    """Module form of :func:`emo_loss` that owns the (unit-normalised, frozen) cost embedding as a buffer."""

    def __init__(
        self,
        cost_embedding: torch.Tensor,
        combine: str = "official",
        ignore_index: int = -100,
        reduction: str = "mean",
        shift_for_causal_lm: bool = False,
    ) -> None:
        super().__init__()
        if combine not in _COMBINES:
            raise ValueError(f"combine must be one of {_COMBINES}, got {combine!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.register_buffer("unit_embedding", unit_rows(cost_embedding).clone())
        self.combine = combine
        self.ignore_index = int(ignore_index)
        self.reduction = reduction
        self.shift_for_causal_lm = bool(shift_for_causal_lm)

    @classmethod
    def from_lm_head(cls, head: nn.Module | torch.Tensor, **kwargs: Any) -> EMOLoss:
        """Build from a frozen copy of an output layer's weight (``nn.Linear`` / ``nn.Embedding`` / a model
        with ``lm_head`` / a ``[V, d]`` tensor)."""
        if isinstance(head, torch.Tensor):
            weight = head
        elif hasattr(head, "lm_head"):
            weight = head.lm_head.weight
        elif isinstance(head, nn.Linear | nn.Embedding):
            weight = head.weight
        else:
            raise TypeError(
                f"expected an nn.Linear, nn.Embedding, a model with lm_head or a tensor, got {type(head).__name__}"
            )
        return cls(weight.detach().clone(), **kwargs)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor | None, target_probs: torch.Tensor | None = None
    ) -> torch.Tensor:
        return _emo(
            logits,
            target,
            self.unit_embedding,
            None,
            self.combine,
            self.ignore_index,
            self.reduction,
            target_probs,
            self.shift_for_causal_lm,
        )

    def extra_repr(self) -> str:
        V, d = self.unit_embedding.shape
        return f"V={V}, d={d}, combine={self.combine!r}"
