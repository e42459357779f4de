"""Finite scalar quantisation (FSQ): bounded rounding per channel, an implicit grid codebook.

Each of the ``d = len(levels)`` channels is squashed into a bounded range and rounded to one of ``L_i``
levels with a straight-through gradient ``round_ste(x) = x + sg(round(x) - x)``. The codebook is the grid
of all level combinations (``prod L_i`` codes), has no parameters and needs no auxiliary loss.

``bound="tanh"`` (the paper's bounded variant, default), per channel with ``L_i`` levels::

    h_i = (L_i - 1)(1 - eps)/2,   o_i = 0.5 if L_i even else 0,   s_i = atanh(o_i / h_i)
    f_i(z) = tanh(z_i + s_i) h_i - o_i,        z_hat_i = round_ste(f_i(z)) / floor(L_i / 2)

Odd ``L`` gives the symmetric levels ``{-1, ..., 1}``; even ``L`` gives ``{-L/2, ..., L/2 - 1} / (L/2)`` (one
extra level on the negative side); ``f_i(0) = 0`` for every ``L``. The paper writes ``(1 - eps)`` with
``eps = 1e-3``; the peer library ``vector-quantize-pytorch`` uses ``(1 + eps)``, i.e. ``eps=-1e-3`` here
(the two disagree on about 0.2% of vectors). ``L_i = 2`` is rejected for this bound (degenerate shift).

``bound="sigmoid"`` (the post's symmetric variant): ``k_i = round_ste((L_i - 1) sigmoid(z_i))`` in
``{0, ..., L_i - 1}``, rescaled to ``z_hat_i = 2 k_i / (L_i - 1) - 1`` in ``[-1, 1]``; allows ``L_i = 2``.
It equals the peer's ``preserve_symmetry=True`` applied to ``z / 2``.

Indices use mixed radix with the first channel least significant (as the paper and the peer):
``index = sum_i k_i prod_{j<i} L_j`` with level indices ``k_i in {0..L_i-1}``, a bijection onto
``range(prod L_i)``, computed in ``int64``. Quantisation runs in float32 (at least) so indices are exact.

Post: "简单得令人尴尬的FSQ：“四舍五入”超越了VQ-VAE" (Embarrassingly simple FSQ: "rounding" beats
VQ-VAE), 2023-10-31, kexue.fm/archives/9826. Paper: Mentzer et al., "Finite Scalar Quantization: VQ-VAE
Made Simple", arXiv 2309.15505 (Table 1 gives :data:`RECOMMENDED_LEVELS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from kexue.quantizers.stats import UsageTracker

__all__ = ["APPENDIX_LEVELS", "FSQ", "RECOMMENDED_LEVELS", "recommended_levels"]

RECOMMENDED_LEVELS: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}
"""Paper Table 1: target codebook size -> levels (every ``L_i >= 5``)."""

APPENDIX_LEVELS: dict[int, tuple[int, ...]] = {
    2**4: (5, 3),
    2**6: (8, 8),
    2**9: (8, 8, 8),
    2**11: (8, 8, 6, 5),
}
"""Extra sizes from the paper's appendix A.4.1 (its 2^12 entry is a typo; Table 1's is used)."""


def recommended_levels(codebook_size: int, include_appendix: bool = False) -> tuple[int, ...]:
    """Levels the paper recommends for a target codebook size (a key of :data:`RECOMMENDED_LEVELS`)."""
    table = dict(RECOMMENDED_LEVELS)
    if include_appendix:
        table.update(APPENDIX_LEVELS)
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int):
        raise TypeError(f"codebook_size must be an int, got {type(codebook_size).__name__}")
    if codebook_size not in table:
        sizes = ", ".join(f"2**{int(math.log2(k))}" for k in sorted(table))
        raise ValueError(f"no recommended levels for codebook_size {codebook_size}; available: {sizes}")
    return table[codebook_size]


def _validate_levels(levels: object, bound: str) -> tuple[int, ...]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence):
        raise TypeError(f"levels must be a sequence of ints, got {type(levels).__name__}")
    if len(levels) == 0:
        raise ValueError("levels must not be empty")
    out = []
    for level in levels:
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"every level must be an int, got {level!r} in {list(levels)}")
        if level < 2:
            raise ValueError(f"every level must be >= 2, got {level} in {list(levels)}")
        if level == 2 and bound == "tanh":
            raise ValueError(
                "a level of 2 gives a degenerate shift with bound='tanh'; use bound='sigmoid' or levels >= 3, "
                f"got {list(levels)}"
            )
        out.append(level)
    return tuple(out)


class FSQ(UsageTracker):
    """Finite scalar quantiser ``FSQ(levels)``; ``forward(z) -> (z_hat, indices)``.

    Args:
        levels: levels per channel, e.g. ``(8, 5, 5, 5)`` (1000 codes); see :func:`recommended_levels`.
        dim: input/output width; when it differs from ``len(levels)`` a linear ``project_in`` /
            ``project_out`` pair is added (a wider input is never silently sliced).
        bound: ``"tanh"`` (paper, default) or ``"sigmoid"`` (the post's symmetric variant).
        eps: shrink of the tanh bound, ``h = (L-1)(1-eps)/2``; ``-1e-3`` reproduces the peer library.
        channel_first: where the channel axis is: ``None`` (default) means axis 1 for inputs with 4 or more
            dimensions (images ``(b, d, h, w)``, video) and the last axis otherwise.
        projection_bias: bias in the projections.
        track_usage: count code usage in training mode (read with :meth:`usage`).

    ``forward`` accepts ``(..., dim)`` (or channel-first) floating-point input and returns the quantised
    tensor of the same shape (values on the grid when there is no projection) and ``int64`` indices of
    the input shape without the channel axis.
    """

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        *,
        bound: str = "tanh",
        eps: float = 1e-3,
        channel_first: bool | None = None,
        projection_bias: bool = True,
        track_usage: bool = True,
    ) -> None:
        super().__init__()
        if bound not in ("tanh", "sigmoid"):
            raise ValueError(f"bound must be 'tanh' or 'sigmoid', got {bound!r}")
        self.levels = _validate_levels(levels, bound)
        self.bound = bound
        if not isinstance(eps, (int, float)) or not -0.5 < float(eps) < 0.5:
            raise ValueError(f"eps must be a float in (-0.5, 0.5), got {eps!r}")
        self.eps = float(eps)
        self.codebook_dim = len(self.levels)
        if dim is None:
            dim = self.codebook_dim
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        self.dim = dim
        self.channel_first = channel_first
        self.codebook_size = math.prod(self.levels)

        lv = torch.tensor(self.levels, dtype=torch.int64)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.int64), dim=0)
        self.register_buffer("_levels", lv, persistent=False)
        self.register_buffer("_basis", basis, persistent=False)
        self._refresh_constants()

        self.has_projections = dim != self.codebook_dim
        if self.has_projections:
            self.project_in: nn.Module = nn.Linear(dim, self.codebook_dim, bias=projection_bias)
            self.project_out: nn.Module = nn.Linear(self.codebook_dim, dim, bias=projection_bias)
        else:
            self.project_in = nn.Identity()
            self.project_out = nn.Identity()
        self._init_usage(self.codebook_size, track_usage)

    def _refresh_constants(self) -> None:
        """Float32 constants derived from the integer levels (never cast by ``.half()`` / ``.double()``)."""
        lv = self._levels
        lf = lv.to(torch.float64)
        half = (lf - 1) * (1 - self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0).to(torch.float64)
        self._half = half.float()
        self._offset = offset.float()
        self._shift = torch.atanh(offset / half).float()
        self._half_width = (lv // 2).float()
        self._levels_m1 = (lv - 1).float()
        self._two_over_levels_m1 = (2.0 / (lf - 1)).float()

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._refresh_constants()  # follow the device of the integer buffers, keep float32 precision
        return out

    def extra_repr(self) -> str:
        return f"levels={list(self.levels)}, dim={self.dim}, bound={self.bound!r}, eps={self.eps}"

    # --- the scalar quantiser --------------------------------------------------------------------

    def bounded(self, z: torch.Tensor) -> torch.Tensor:
        """The continuous bounded value before rounding (``f(z)`` for tanh, ``(L-1) sigmoid(z)`` for sigmoid)."""
        if self.bound == "tanh":
            # tanh saves its output for backward; the product is a fresh tensor, so subtract in place
            return torch.tanh(z + self._shift).mul(self._half).sub_(self._offset)
        return torch.sigmoid(z).mul(self._levels_m1)

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Grid codes (straight-through) and the per-channel level indices as floats."""
        b = self.bounded(z)
        r = torch.round(b.detach())
        # value round(b) exactly, gradient of b (straight-through); in place on fresh tensors
        codes = (b - b.detach()).add_(r)
        if self.bound == "tanh":
            return codes.div_(self._half_width), r.add_(self._half_width)
        return codes.mul_(self._two_over_levels_m1).sub_(1.0), r

    def _level_indices_to_indices(self, level_idx: torch.Tensor) -> torch.Tensor:
        if self.codebook_size <= 2**24:
            # every partial sum is an integer below 2**24, exact in float32; no (N, d) int64 temporary
            return (level_idx @ self._basis.to(level_idx.dtype)).to(torch.int64)
        return (level_idx.to(torch.int64) * self._basis).sum(dim=-1)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Grid codes of ``z`` (shape ``(..., len(levels))``, no projection), straight-through gradient."""
        return self._quantize(z)[0]

    # --- index <-> code bijection ----------------------------------------------------------------

    def codes_to_level_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Per-channel level indices ``k_i in {0..L_i-1}`` (int64) of grid codes ``(..., len(levels))``."""
        self._check_last_dim(codes, self.codebook_dim, "codes")
        c = codes.detach().to(torch.float64)
        if self.bound == "tanh":
            k = torch.round(c * self._half_width.double() + self._half_width.double())
        else:
            k = torch.round((c + 1.0) * (self._levels - 1).double() / 2.0)
        k = k.to(torch.int64)
        if not torch.compiler.is_compiling() and k.numel():
            if bool(((k < 0) | (k >= self._levels)).any()):
                raise ValueError(f"codes are not on the FSQ grid of levels {list(self.levels)}")
        return k

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook indices (int64, shape ``codes.shape[:-1]``) of grid codes, first channel least significant."""
        return (self.codes_to_level_indices(codes) * self._basis).sum(dim=-1)

    def indices_to_level_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """Per-channel level indices ``(..., len(levels))`` of codebook indices."""
        if not isinstance(indices, torch.Tensor):
            raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
        if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
        idx = indices.to(torch.int64)
        if not torch.compiler.is_compiling() and idx.numel():
            if bool(((idx < 0) | (idx >= self.codebook_size)).any()):
                raise ValueError(f"indices must lie in [0, {self.codebook_size})")
        return torch.div(idx[..., None], self._basis, rounding_mode="floor") % self._levels

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        """Grid codes ``(..., len(levels))`` (float32, no projection) of codebook indices."""
        k = self.indices_to_level_indices(indices).to(torch.float32)
        if self.bound == "tanh":
            return (k - self._half_width) / self._half_width
        return k * self._two_over_levels_m1 - 1.0

    def indices_to_output(self, indices: torch.Tensor) -> torch.Tensor:
        """What ``forward`` outputs for these indices: grid codes through ``project_out``, channel axis restored."""
        out = self.project_out(self.indices_to_codes(indices))
        if self._is_channel_first(indices.ndim + 1):
            out = out.movedim(-1, 1)
        return out

    @property
    def implicit_codebook(self) -> torch.Tensor:
        """All ``prod(levels)`` grid codes in index order, shape ``(codebook_size, len(levels))``."""
        return self.indices_to_codes(torch.arange(self.codebook_size, device=self._levels.device))

    # --- forward ---------------------------------------------------------------------------------

    def _is_channel_first(self, ndim: int) -> bool:
        return self.channel_first if self.channel_first is not None else ndim >= 4

    @staticmethod
    def _check_last_dim(x: torch.Tensor, dim: int, name: str) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 1 or x.shape[-1] != dim:
            raise ValueError(f"{name} must have last dimension {dim}, got shape {tuple(x.shape)}")

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(z).__name__}")
        channel_first = self._is_channel_first(z.ndim)
        if channel_first:
            if z.ndim < 2:
                raise ValueError(f"channel-first input needs >= 2 dimensions, got shape {tuple(z.shape)}")
            z = z.movedim(1, -1)
        self._check_last_dim(z, self.dim, "input (channel axis)")
        if not torch.compiler.is_compiling() and bool(torch.isnan(z).any()):
            raise ValueError("FSQ input contains NaN")
        h = self.project_in(z)
        orig_dtype = h.dtype
        if orig_dtype not in (torch.float32, torch.float64):
            h = h.float()
        codes, level_idx = self._quantize(h)
        indices = self._level_indices_to_indices(level_idx)
        self._record_usage(indices)
        out = self.project_out(codes.to(orig_dtype))
        if channel_first:
            out = out.movedim(-1, 1)
        return out, indices
