"""Gradient estimators through a vector quantiser: straight-through (STE) and the rotation trick.

Both are instances of the generalised STE ``z_q = sg(G) z + sg(q - G z)`` (forward value ``q``, the gradient
reaching ``z`` is ``G^T dL/dz_q``). STE takes ``G = I``. The rotation trick takes ``G = lambda R`` with
``lambda = ||q|| / ||z||`` and ``R`` the rotation in the plane of ``z`` and ``q`` that turns ``u = z/||z||``
into ``v = q/||q||``::

    R = I - 2 r r^T + 2 v u^T,     r = (u + v) / ||u + v||

(two Householder reflections, ``R u = v``, ``R^T R = I``, ``det R = 1``). It is applied per vector in O(d),
never forming ``R``: with ``u, v, r, lambda`` detached,

    G z = lambda * (z - 2 r (r . z) + 2 v (u . z)),

and the forward value is made exactly ``q`` with ``q + (G z - sg(G z))``. The gradient reaching ``z`` is
``lambda R^T g``: the angle between gradient and vector is preserved across the quantiser and its norm is
scaled by ``lambda``.

Degenerate rows (documented behaviour): if ``||z||`` or ``||q||`` is zero (below ``eps``) the row falls back
to STE; if ``z`` and ``q`` point in opposite directions (``||u + v|| <= eps``) ``r`` is set to 0, so ``R`` is
the reflection ``I - 2 v v^T`` (still sends ``u`` to ``v`` and is orthogonal, but ``det R = -1``).

Post: "VQ的旋转技巧：梯度直通估计的一般推广" (The rotation trick for VQ: a generalisation of the
straight-through estimator), 2024-10-24, kexue.fm/archives/10489. Paper: Fifty et al., "Restructuring
Vector Quantization with the Rotation Trick", arXiv 2410.06424.
"""

from __future__ import annotations

import torch

__all__ = ["rotation_matrix", "rotation_trick", "straight_through"]


def _check_pair(z: torch.Tensor, q: torch.Tensor) -> None:
    for name, t in (("z", z), ("q", q)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if z.shape != q.shape:
        raise ValueError(f"z and q must have the same shape, got {tuple(z.shape)} and {tuple(q.shape)}")
    if z.ndim < 1 or z.shape[-1] < 1:
        raise ValueError(f"z and q need a last (vector) dimension of size >= 1, got shape {tuple(z.shape)}")


def straight_through(z: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """STE: forward value exactly ``q``, gradient to ``z`` the identity (none reaches ``q``)."""
    _check_pair(z, q)
    return q.detach() + (z - z.detach())


def rotation_trick(
    z: torch.Tensor, q: torch.Tensor, *, rescale: bool = True, eps: float = 1e-12
) -> torch.Tensor:
    """Rotation-trick quantiser output: value exactly ``q``, gradient to ``z`` equal to ``lambda R^T g``.

    ``z`` and ``q`` have shape ``(..., d)``; the rotation is per vector (per row of the flattened leading
    dimensions). ``rescale=False`` drops ``lambda`` (the paper's no-rescale variant, ``G = R``). No gradient
    reaches ``q`` through this path. Half-precision inputs are computed in float32.
    """
    _check_pair(z, q)
    out_dtype = z.dtype
    work = z if z.dtype in (torch.float32, torch.float64) else z.float()
    qd = q.detach().to(work.dtype)
    zd = work.detach()
    z_norm = zd.norm(dim=-1, keepdim=True)
    q_norm = qd.norm(dim=-1, keepdim=True)
    ok = (z_norm > eps) & (q_norm > eps)
    u = zd / z_norm.clamp_min(eps)
    v = qd / q_norm.clamp_min(eps)
    w = u + v
    w_norm = w.norm(dim=-1, keepdim=True)
    r = torch.where(w_norm > eps, w / w_norm.clamp_min(eps), torch.zeros_like(w))
    rz = work - 2.0 * r * (r * work).sum(-1, keepdim=True) + 2.0 * v * (u * work).sum(-1, keepdim=True)
    if rescale:
        lam = torch.where(ok, q_norm / z_norm.clamp_min(eps), torch.ones_like(q_norm))
        rz = lam * rz
    gz = torch.where(ok, rz, work)
    # exact forward value q, gradient of G z
    return (qd + (gz - gz.detach())).to(out_dtype)


def rotation_matrix(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The explicit ``d x d`` rotation ``R = I - 2 r r^T + 2 v u^T`` taking unit ``u`` to unit ``v``.

    Reference for tests (the quantiser never forms it). ``u`` and ``v`` have shape ``(..., d)`` and are
    normalised here; returns shape ``(..., d, d)``.
    """
    _check_pair(u, v)
    u = u / u.norm(dim=-1, keepdim=True)
    v = v / v.norm(dim=-1, keepdim=True)
    r = (u + v) / (u + v).norm(dim=-1, keepdim=True)
    eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
    return eye - 2.0 * r[..., :, None] * r[..., None, :] + 2.0 * v[..., :, None] * u[..., None, :]
