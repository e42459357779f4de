"""Rotary position embedding (RoPE).

RoPE rotates each pair of query/key features by an angle proportional to the position:
for position m and frequency index i (0 <= i < d/2), theta_i = base^(-2i/d) and the pair
(x_i, x_{i+d/2}) becomes (x_i cos(m theta_i) - x_{i+d/2} sin(m theta_i),
x_i sin(m theta_i) + x_{i+d/2} cos(m theta_i)) — the "rotate half" layout used by GPT-NeoX / LLaMA.
Then <R_m q, R_n k> depends only on m - n.

Post: "Transformer升级之路：2、博采众长的旋转式位置编码" (2021-03-23, kexue.fm/archives/8265); the
extrapolation variants are in "Transformer升级之路：10、RoPE是一种β进制编码" (2023-07-06,
kexue.fm/archives/9675).
"""

from __future__ import annotations

import torch

__all__ = ["apply_rope", "rope_angles", "rope_inv_freq", "rotate_half"]


def rope_inv_freq(dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frequencies ``theta_i = base^(-2i/dim)`` for ``i = 0 .. dim/2 - 1`` (``dim`` must be even)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"rope dim must be an even int >= 2, got {dim!r}")
    if not base > 1:
        raise ValueError(f"rope base must be > 1, got {base}")
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return (float(base) ** -exponent).to(dtype)


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of ``positions[..., None] * inv_freq``, repeated to full width ``dim``."""
    ang = positions.to(inv_freq.dtype)[..., None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(..., L, dim)`` by the angles of ``positions`` (shape ``(L,)`` or
    broadcastable to ``x.shape[:-1]``)."""
    if x.shape[-1] != 2 * inv_freq.shape[-1]:
        raise ValueError(
            f"last dim of x ({x.shape[-1]}) must be twice the number of frequencies ({inv_freq.shape[-1]})"
        )
    cos, sin = rope_angles(positions, inv_freq.to(torch.float32 if x.dtype != torch.float64 else x.dtype))
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin
