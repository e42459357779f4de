"""Codebook usage statistics: utilisation, usage perplexity and dead codes.

For ``N`` tokens assigned to a codebook of ``K`` codes with counts ``n_k`` (``sum_k n_k = N``) and empirical
frequencies ``p_k = n_k / N``:

* utilisation ``= #{k : n_k > 0} / K`` (fraction of codes hit at least once);
* perplexity ``= exp(-sum_k p_k log p_k)`` (``1`` for a single code, ``K`` for a uniform code distribution);
  ``perplexity / K`` is reported as ``normalised_perplexity``;
* dead codes ``= #{k : n_k == 0}``.

Utilisation is biased low when ``N`` is not much larger than ``K``: even a uniform code distribution hits
only about ``1 - exp(-N / K)`` of the codes, so :class:`UsageStats` carries ``n_tokens`` with the numbers.

Used by every quantiser of :mod:`kexue.quantizers` (FSQ, "Embarrassingly simple FSQ", 2023-10-31,
kexue.fm/archives/9826; VQ with the rotation trick, 2024-10-24, kexue.fm/archives/10489; SimVQ,
2024-11-06, kexue.fm/archives/10519): :class:`UsageTracker` keeps a per-code counter on the module that
is updated in training mode and read with ``module.usage()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["UsageStats", "UsageTracker", "code_counts", "code_usage", "usage_from_counts"]


@dataclass(frozen=True)
class UsageStats:
    """How a codebook of ``codebook_size`` codes was used by ``n_tokens`` tokens."""

    codebook_size: int
    n_tokens: int
    used_codes: int
    utilisation: float
    perplexity: float
    normalised_perplexity: float
    dead_codes: int

    def as_dict(self) -> dict[str, float]:
        return {
            "codebook_size": float(self.codebook_size),
            "n_tokens": float(self.n_tokens),
            "used_codes": float(self.used_codes),
            "utilisation": self.utilisation,
            "perplexity": self.perplexity,
            "normalised_perplexity": self.normalised_perplexity,
            "dead_codes": float(self.dead_codes),
        }


def usage_from_counts(counts: torch.Tensor) -> UsageStats:
    """:class:`UsageStats` from a 1-D tensor of per-code counts (length = codebook size)."""
    if not isinstance(counts, torch.Tensor):
        raise TypeError(f"counts must be a torch.Tensor, got {type(counts).__name__}")
    if counts.ndim != 1 or counts.numel() < 1:
        raise ValueError(f"counts must be a non-empty 1-D tensor, got shape {tuple(counts.shape)}")
    c = counts.detach().to(device="cpu", dtype=torch.float64)
    if bool((c < 0).any()) or not bool(torch.isfinite(c).all()):
        raise ValueError("counts must be finite and non-negative")
    k = c.numel()
    total = float(c.sum())
    used = int((c > 0).sum())
    if total > 0:
        p = c[c > 0] / total
        perplexity = math.exp(float(-(p * p.log()).sum()))
    else:
        perplexity = 0.0
    return UsageStats(
        codebook_size=k,
        n_tokens=int(round(total)),
        used_codes=used,
        utilisation=used / k,
        perplexity=perplexity,
        normalised_perplexity=perplexity / k,
        dead_codes=k - used,
    )


def code_counts(indices: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Per-code counts (``int64``, length ``codebook_size``) of an integer tensor of code indices."""
    if not isinstance(indices, torch.Tensor):
        raise TypeError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.dtype.is_floating_point or indices.dtype.is_complex or indices.dtype == torch.bool:
        raise TypeError(f"indices must be an integer tensor, got dtype {indices.dtype}")
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be an int >= 1, got {codebook_size!r}")
    flat = indices.detach().reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise ValueError(
            f"indices must lie in [0, {codebook_size}), got range [{int(flat.min())}, {int(flat.max())}]"
        )
    return torch.bincount(flat.cpu(), minlength=codebook_size)


def code_usage(indices: torch.Tensor, codebook_size: int) -> UsageStats:
    """:class:`UsageStats` of the code indices ``indices`` (any shape) for a codebook of ``codebook_size``."""
    return usage_from_counts(code_counts(indices, codebook_size))


class UsageTracker(nn.Module):
    """Mixin for quantisers: a per-code counter filled in training mode, read with :meth:`usage`.

    Subclasses call :meth:`_init_usage` in ``__init__`` and :meth:`_record_usage` in ``forward``.
    Counting happens only while ``self.training`` and ``self.track_usage`` are true; it is an
    ``index_add_`` into a buffer (no host synchronisation, works under ``torch.compile``).
    """

    code_counts: torch.Tensor | None

    def _init_usage(self, codebook_size: int, track_usage: bool) -> None:
        self.track_usage = bool(track_usage)
        if self.track_usage:
            if codebook_size > 2**26:
                raise ValueError(
                    f"track_usage needs a counter per code; codebook_size {codebook_size} is too large "
                    "(> 2**26) - pass track_usage=False"
                )
            self.register_buffer("code_counts", torch.zeros(codebook_size, dtype=torch.int64))
        else:
            self.code_counts = None

    def _record_usage(self, indices: torch.Tensor) -> None:
        if self.training and self.track_usage and self.code_counts is not None:
            flat = indices.detach().reshape(-1)
            self.code_counts.index_add_(0, flat, torch.ones_like(flat))

    def usage(self, reset: bool = False) -> UsageStats:
        """Usage of the codes seen in training mode since construction or the last reset."""
        if self.code_counts is None:
            raise RuntimeError(
                "usage tracking is off for this quantiser (constructed with track_usage=False)"
            )
        stats = usage_from_counts(self.code_counts)
        if reset:
            self.reset_usage()
        return stats

    def reset_usage(self) -> None:
        """Zero the per-code counter."""
        if self.code_counts is not None:
            self.code_counts.zero_()
