"""Shared pieces of the kexue optimizers: argument checks, the micro-step counter of built-in
gradient accumulation, lazy embedding rows and a scratch buffer for sign updates.

Nothing here is public API; the optimizers re-export what users need.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

ACCUMULATION_MODES = ("exact", "beta_tilde", "chi_only")
LAZY_MODES = (None, "param", "state")


# --- argument checks ------------------------------------------------------------------------


def check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def check_lr(value: object, name: str = "lr") -> float:
    lr = check_number(name, value)
    if lr <= 0.0:
        raise ValueError(f"{name} must be > 0, got {lr}")
    return lr


def check_beta(name: str, value: object) -> float:
    beta = check_number(name, value)
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {beta}")
    return beta


def check_betas(value: object, name: str = "betas") -> tuple[float, float]:
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {value!r}")
    return check_beta(f"{name}[0]", value[0]), check_beta(f"{name}[1]", value[1])


def check_nonnegative(name: str, value: object) -> float:
    v = check_number(name, value)
    if v < 0.0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def check_positive(name: str, value: object) -> float:
    v = check_number(name, value)
    if v <= 0.0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return v


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_choice(name: str, value: object, choices: Iterable[object]) -> Any:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def beta_tilde(beta: float, k: int) -> float:
    """The post's per-micro-step coefficient 1 - (1 - beta) / k, whose k-th power is close to beta."""
    check_beta("beta", beta)
    check_positive_int("k", k)
    return 1.0 - (1.0 - beta) / k


# --- micro-step counter ---------------------------------------------------------------------


class AccumulatingOptimizer(Optimizer):
    """Base class: an optimizer that is called every micro-batch and updates every k-th call.

    Every param group carries ``accumulate_steps`` (k, the same for all groups), ``accumulation``
    (mode) and ``micro_step`` (calls to :meth:`step` so far). Keeping the counter in the groups makes
    ``state_dict()`` / ``load_state_dict()`` resume mid-group.
    """

    def _init_accumulation(self) -> None:
        ks = {g["accumulate_steps"] for g in self.param_groups}
        modes = {g["accumulation"] for g in self.param_groups}
        if len(ks) != 1 or len(modes) != 1:
            raise ValueError(
                "accumulate_steps and accumulation must be the same for every param group, "
                f"got {sorted(ks)} and {sorted(modes)}"
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for key in ("accumulate_steps", "accumulation"):
            if key in param_group and param_group[key] != self.defaults[key]:
                raise ValueError(
                    f"{key} is optimizer-wide; a param group cannot override it "
                    f"({param_group[key]!r} != {self.defaults[key]!r})"
                )
        if self.param_groups:
            param_group.setdefault("micro_step", self.param_groups[0]["micro_step"])
        super().add_param_group(param_group)

    @property
    def accumulate_steps(self) -> int:
        return int(self.param_groups[0]["accumulate_steps"])

    @property
    def micro_step(self) -> int:
        """Number of :meth:`step` calls so far (micro-batches)."""
        return int(self.param_groups[0]["micro_step"])

    @property
    def is_update_step(self) -> bool:
        """True iff the *next* call to :meth:`step` applies a parameter update (closes a group)."""
        return (self.micro_step + 1) % self.accumulate_steps == 0

    @staticmethod
    def _phase(group: Mapping[str, Any]) -> tuple[int, bool]:
        k = int(group["accumulate_steps"])
        phase = int(group["micro_step"]) % k
        return phase, phase == k - 1


def accumulate_momentum_(
    m: torch.Tensor, g: torch.Tensor | None, beta: float, k: int, phase: int, mode: str
) -> None:
    """One micro-step of the accumulated EMA ``m`` (in place).

    * ``exact``: m <- beta*m on the first micro-step of a group, then m += (1 - beta)/k * g;
    * ``beta_tilde``: m <- lerp(m, g, (1 - beta)/k) every micro-step;
    * ``chi_only``: m <- lerp(m, g, 1 - beta) every micro-step.
    With k == 1 every mode is the ordinary ``m.lerp_(g, 1 - beta)``. ``g=None`` means a zero gradient.
    """
    if k == 1 or mode != "exact":
        w = (1.0 - beta) / k if mode == "beta_tilde" else 1.0 - beta
        if g is None:
            m.mul_(1.0 - w)
        else:
            m.lerp_(g, w)
        return
    if phase == 0:
        m.mul_(beta)
    if g is not None:
        m.add_(g, alpha=(1.0 - beta) / k)


def accumulate_square_(
    v: torch.Tensor, g: torch.Tensor | None, beta: float, k: int, phase: int, mode: str
) -> None:
    """The same accumulation for a second moment: ``g`` enters as ``g * g``.

    With k == 1 this is torch's ``v.mul_(beta).addcmul_(g, g, value=1 - beta)``.
    """
    if k == 1 or mode == "chi_only":
        decay, w = beta, 1.0 - beta
    elif mode == "beta_tilde":
        w = (1.0 - beta) / k
        decay = 1.0 - w
    else:
        decay = beta if phase == 0 else 1.0
        w = (1.0 - beta) / k
    if decay != 1.0:
        v.mul_(decay)
    if g is not None:
        v.addcmul_(g, g, value=w)


# --- lazy rows ------------------------------------------------------------------------------


def check_present_rows(
    present_rows: Mapping[torch.Tensor, torch.Tensor] | None, params: Iterable[torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Validate ``{param: row ids}`` and key it by ``id(param)``."""
    if present_rows is None:
        return {}
    if not isinstance(present_rows, Mapping):
        raise TypeError(
            f"present_rows must map parameters to row-id tensors, got {type(present_rows).__name__}"
        )
    known = {id(p): p for p in params}
    out: dict[int, torch.Tensor] = {}
    for p, ids in present_rows.items():
        if id(p) not in known:
            raise ValueError("present_rows has a key that is not a parameter of this optimizer")
        if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"present_rows values must be integer tensors of row ids, got {ids!r:.60}")
        ids = ids.reshape(-1).to(device=p.device, dtype=torch.int64)
        if ids.numel() and bool(((ids < 0) | (ids >= p.shape[0])).any()):
            raise ValueError(
                f"present_rows ids must lie in [0, {p.shape[0]}), got min {int(ids.min())}, max {int(ids.max())}"
            )
        out[id(p)] = ids
    return out


def present_row_mask(p: torch.Tensor, g: torch.Tensor | None, ids: torch.Tensor | None) -> torch.Tensor:
    """Boolean mask over the rows (dim 0) of ``p`` that occur in the current batch.

    Uses ``ids`` when given, the indices of a sparse gradient, or else the rows whose dense gradient is
    not identically zero (this fallback misses a used row whose gradient is exactly zero).
    """
    mask = torch.zeros(p.shape[0], dtype=torch.bool, device=p.device)
    if ids is not None:
        mask[ids] = True
    elif g is None:
        pass
    elif g.is_sparse:
        mask[g.coalesce().indices()[0]] = True
    else:
        mask = (g != 0).reshape(g.shape[0], -1).any(dim=1)
    return mask


# --- scratch --------------------------------------------------------------------------------


class Scratch:
    """A reusable flat buffer so that sign(m) does not allocate a new tensor per parameter per step."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def like(self, t: torch.Tensor) -> torch.Tensor:
        if not t.is_contiguous():
            return torch.empty_like(t)
        key = (t.device, t.dtype)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < t.numel():
            buf = torch.empty(t.numel(), device=t.device, dtype=t.dtype)
            self._bufs[key] = buf
        return buf[: t.numel()].view(t.shape)

    def clear(self) -> None:
        self._bufs.clear()


def default_foreach(params: Iterable[torch.Tensor]) -> bool:
    """foreach kernels pay off on accelerators; on CPU the per-tensor loop measured faster."""
    return any(p.device.type != "cpu" for p in params)


def dense_grad(p: torch.Tensor, what: str) -> torch.Tensor | None:
    g = p.grad
    if g is not None and g.is_sparse:
        raise TypeError(
            f"{what} got a sparse gradient for a parameter of shape {tuple(p.shape)}; "
            "sparse gradients are supported only in lazy embedding mode (lazy='param' or 'state')"
        )
    return g
