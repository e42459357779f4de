"""Tiger: the sign of one momentum, with per-tensor relative learning rates and built-in accumulation.

Posts: "Tiger：一个“抠”到极致的优化器" (2023-03-07, kexue.fm/archives/9512) and
"Lion/Tiger优化器训练下的Embedding异常和对策" (2023-08-28, kexue.fm/archives/9736).

Update for one tensor θ with gradient g (step t = 1, 2, ...)::

    m_t = β m_{t-1} + (1 - β) g_t                       (computed as m.lerp_(g, 1 - β))
    θ_t = θ_{t-1} - η_t [sign(m_t) + λ θ_{t-1}]         (decoupled decay, same η as the sign step)

Tiger is Lion with β1 = β2 = β (Lion paper, arXiv 2302.06675); it keeps one state tensor per
parameter where AdamW keeps two. ``sign(0) = 0``: an entry whose momentum is exactly zero does not move.

**RMS rule** (``rms_scaling=True``, the post's default): ``lr`` is a relative rate α and

* ``kind="kernel"`` (default for tensors with ndim >= 2): η = α · max(RMS(θ_{t-1}), rms_floor);
* ``kind="embedding"``: the same per row (RMS over all but the first dimension);
* ``kind="bias"`` / ``"gain"`` (default for ndim <= 1): η = α / 2 and λ = 0.

``rms_floor`` (default 1e-3, like Adafactor's eps2) keeps an all-zero tensor from being frozen at
η = 0 forever. ``rms_scaling=False`` is plain Tiger (what lion-pytorch / pytorch-optimizer give):
η = lr and λ = weight_decay for every tensor.

**Built-in accumulation** (``accumulate_steps=k``; kexue.fm/archives/8634): call :meth:`step` and
``zero_grad()`` every micro-batch. With χ = 1 on every k-th call::

    m_t = [(β - 1) χ_{(t-1)/k} + 1] m_{t-1} + (1 - β)/k · g_t,     θ_t = θ_{t-1} - χ_{t/k} η_t [...]

which equals one Tiger step on the mean of the k micro-batch gradients, with no extra buffer.
The learning rate is read on the k-th call (step a scheduler per micro-step, as the reference code
does, or per update — but keep it constant inside a group if you need exact equivalence). A trailing
partial group is not applied: its gradients stay in the momentum and join the next group.
``accumulation="beta_tilde"`` / ``"chi_only"`` are the post's no-code-change variants
(β̃ = 1 - (1 - β)/k every micro-step; β every micro-step), both updating every k-th call.

**Embedding anomaly remedies** (9736): a row absent from the batch has zero gradient but non-zero
momentum, so sign(m) keeps pushing it until the decay equilibrium -sign(m)/λ (±1/λ). Per param
group, ``lazy="param"`` updates only the rows present in the batch (the momentum of absent rows
still decays — Su's LazyOptimizer) and ``lazy="state"`` also freezes their momentum (TF LazyAdam).
Present rows come from ``step(present_rows={param: ids})`` or, failing that, from a sparse gradient's
indices or the rows whose gradient is not identically zero. The other remedies (tied embeddings,
AdamW for the table) need no optimizer support.

**NaN guard** (``nan_guard=True``, reference code): a tensor whose gradient has a NaN keeps its
momentum and is shrunk θ <- (θ - c)·shrink_ratio + c (c = 1 for ``kind="gain"``, else 0); the other
tensors update normally and the accumulation phase advances as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from kexue.optim._common import (
    ACCUMULATION_MODES,
    LAZY_MODES,
    AccumulatingOptimizer,
    Scratch,
    accumulate_momentum_,
    check_beta,
    check_choice,
    check_lr,
    check_nonnegative,
    check_number,
    check_positive,
    check_positive_int,
    check_present_rows,
    default_foreach,
    present_row_mask,
)

__all__ = ["KINDS", "Tiger", "piecewise_linear", "tiger_lr_from_adamw", "tiger_param_groups"]

KINDS = ("auto", "kernel", "embedding", "bias", "gain")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def resolve_kind(kind: str, p: torch.Tensor) -> str:
    if kind != "auto":
        return kind
    return "kernel" if p.ndim >= 2 else "bias"


def validate_sign_group(group: Mapping[str, Any], what: str) -> None:
    """Checks shared by Tiger and Lion groups."""
    check_lr(group["lr"])
    check_nonnegative("weight_decay", group["weight_decay"])
    lazy = check_choice("lazy", group["lazy"], LAZY_MODES)
    if lazy is not None:
        for p in group["params"]:
            if p.ndim < 2:
                raise ValueError(
                    f"{what}: lazy={lazy!r} updates rows of embedding tables; got a parameter with shape "
                    f"{tuple(p.shape)} — put embedding tables in their own param group"
                )
    if group["foreach"] is not None and not isinstance(group["foreach"], bool):
        raise TypeError(f"foreach must be None or a bool, got {group['foreach']!r}")


class Tiger(AccumulatingOptimizer):
    """Tiger ("tight-fisted optimizer", kexue.fm/archives/9512) as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or param groups; every option below except ``accumulate_steps`` and
            ``accumulation`` may be overridden per group.
        lr: learning rate (relative rate α when ``rms_scaling=True``).
        beta: momentum coefficient (post: 0.965 for NLP, 0.945 for CV).
        weight_decay: decoupled decay λ, multiplied by the same η as the sign step.
        rms_scaling: apply the post's per-tensor RMS rule (see module docstring).
        rms_floor: lower bound of the RMS in the rule.
        kind: ``"auto"``, ``"kernel"``, ``"embedding"``, ``"bias"`` or ``"gain"`` (see
            :func:`tiger_param_groups` to set it from a model).
        lazy: ``None``, ``"param"`` or ``"state"`` — embedding-anomaly remedy for this group.
        accumulate_steps: k micro-batches per update (built-in accumulation).
        accumulation: ``"exact"`` (default), ``"beta_tilde"`` or ``"chi_only"``.
        nan_guard: skip-and-shrink rule for NaN gradients.
        shrink_ratio: the shrink factor s of the NaN guard, in (0, 1].
        foreach: use ``torch._foreach_*`` kernels (default: only off-CPU; on CPU the per-tensor loop
            with a reused sign buffer measured faster). Both paths round identically.
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        beta: float = 0.965,
        weight_decay: float = 0.01,
        *,
        rms_scaling: bool = True,
        rms_floor: float = 1e-3,
        kind: str = "auto",
        lazy: str | None = None,
        accumulate_steps: int = 1,
        accumulation: str = "exact",
        nan_guard: bool = False,
        shrink_ratio: float = 0.99,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        check_positive_int("accumulate_steps", accumulate_steps)
        check_choice("accumulation", accumulation, ACCUMULATION_MODES)
        defaults = dict(
            lr=lr,
            beta=beta,
            weight_decay=weight_decay,
            rms_scaling=rms_scaling,
            rms_floor=rms_floor,
            kind=kind,
            lazy=lazy,
            nan_guard=nan_guard,
            shrink_ratio=shrink_ratio,
            foreach=foreach,
            maximize=maximize,
            accumulate_steps=accumulate_steps,
            accumulation=accumulation,
            micro_step=0,
        )
        super().__init__(params, defaults)
        self._init_accumulation()
        self._scratch = Scratch()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_sign_group(group, "Tiger")
        check_beta("beta", group["beta"])
        check_positive("rms_floor", group["rms_floor"])
        kind = check_choice("kind", group["kind"], KINDS)
        shrink = check_number("shrink_ratio", group["shrink_ratio"])
        if not 0.0 < shrink <= 1.0:
            raise ValueError(f"shrink_ratio must be in (0, 1], got {shrink}")
        if kind == "embedding" and any(p.ndim < 2 for p in group["params"]):
            raise ValueError("kind='embedding' needs tensors with ndim >= 2 (rows along dim 0)")
        if group["lazy"] == "state" and group["accumulate_steps"] > 1:
            raise ValueError(
                "lazy='state' cannot be combined with accumulate_steps > 1 (a row first seen late in a "
                "group would miss the group's momentum decay); use lazy='param'"
            )

    # ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        present_rows: Mapping[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """One micro-step. ``present_rows`` maps lazy embedding tables to the row ids in the batch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rows = check_present_rows(present_rows, (p for g in self.param_groups for p in g["params"]))
        for group in self.param_groups:
            self._step_group(group, rows)
            group["micro_step"] += 1
        return loss

    def _step_group(self, group: dict[str, Any], rows: dict[int, torch.Tensor]) -> None:
        k = group["accumulate_steps"]
        phase, is_update = self._phase(group)
        lazy = group["lazy"]
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_foreach(group["params"])
        use_fast = foreach and k == 1 and lazy is None and not group["nan_guard"] and not group["rms_scaling"]
        fast_p: list[torch.Tensor] = []
        fast_g: list[torch.Tensor] = []
        fast_m: list[torch.Tensor] = []
        for p in group["params"]:
            g = p.grad
            state = self.state[p]
            if g is None and (k == 1 or not state):
                continue
            if g is not None and g.is_sparse and lazy is None:
                raise TypeError(
                    f"Tiger got a sparse gradient for a parameter of shape {tuple(p.shape)}; sparse "
                    "gradients are supported only with lazy='param' or lazy='state'"
                )
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m = state["exp_avg"]
            if g is not None and group["maximize"]:
                g = -g
            if group["nan_guard"] and g is not None and _has_nan(g):
                c = 1.0 if resolve_kind(group["kind"], p) == "gain" else 0.0
                if c:
                    p.sub_(c).mul_(group["shrink_ratio"]).add_(c)
                else:
                    p.mul_(group["shrink_ratio"])
                continue
            if use_fast:
                fast_p.append(p)
                fast_g.append(g)
                fast_m.append(m)
                continue
            if lazy is None:
                accumulate_momentum_(m, g, group["beta"], k, phase, group["accumulation"])
                if is_update:
                    self._apply(p, m, group, None)
            else:
                self._lazy_update(p, g, m, state, group, phase, is_update, rows.get(id(p)))
        if fast_p:
            torch._foreach_lerp_(fast_m, fast_g, 1.0 - group["beta"])
            signs = torch._foreach_sign(fast_m)
            lr, wd = group["lr"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(fast_p, 1.0 - lr * wd)
            torch._foreach_add_(fast_p, signs, alpha=-lr)

    def _lazy_update(
        self,
        p: torch.Tensor,
        g: torch.Tensor | None,
        m: torch.Tensor,
        state: dict[str, Any],
        group: dict[str, Any],
        phase: int,
        is_update: bool,
        ids: torch.Tensor | None,
    ) -> None:
        k = group["accumulate_steps"]
        if g is not None and g.is_sparse:
            g = g.coalesce()
        mask = present_row_mask(p, g, ids)
        if group["lazy"] == "state":  # k == 1 (validated): momentum of absent rows frozen as well
            idx = mask.nonzero().squeeze(1)
            if idx.numel() == 0:
                return
            g_rows = g.index_select(0, idx)
            if g_rows.is_sparse:
                g_rows = g_rows.to_dense()
            m_rows = m.index_select(0, idx).lerp_(g_rows, 1.0 - group["beta"])
            m.index_copy_(0, idx, m_rows)
            self._apply(p, m, group, idx)
            return
        if g is not None and g.is_sparse:
            g = g.to_dense()
        accumulate_momentum_(m, g, group["beta"], k, phase, group["accumulation"])
        if k > 1:
            seen = state.get("rows_seen")
            if seen is None:
                seen = state["rows_seen"] = torch.zeros_like(mask)
            seen |= mask
            if not is_update:
                return
            mask = seen.clone()
            seen.zero_()
        if is_update:
            idx = mask.nonzero().squeeze(1)
            if idx.numel():
                self._apply(p, m, group, idx)

    def _apply(
        self, p: torch.Tensor, m: torch.Tensor, group: dict[str, Any], idx: torch.Tensor | None
    ) -> None:
        """θ <- θ(1 - ηλ) - η sign(m), on all of θ or on the rows ``idx``."""
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        kind = resolve_kind(group["kind"], p)
        eta: float | torch.Tensor = lr
        target = p if idx is None else p.index_select(0, idx)
        if group["rms_scaling"]:
            if kind in ("bias", "gain"):
                eta, wd = 0.5 * lr, 0.0
            elif kind == "embedding":
                dims = tuple(range(1, p.ndim))
                row_numel = math.prod(p.shape[1:])
                rms = torch.linalg.vector_norm(target, dim=dims, keepdim=True) / math.sqrt(row_numel)
                eta = rms.clamp_min_(group["rms_floor"]).mul_(lr)
            else:
                rms = torch.linalg.vector_norm(p) / math.sqrt(p.numel())
                eta = rms.clamp_min_(group["rms_floor"]).mul_(lr)
        if idx is None:
            s = self._scratch.like(m)
            torch.sign(m, out=s)
        else:
            s = m.index_select(0, idx).sign_()
        if isinstance(eta, float):
            if wd:
                target.mul_(1.0 - eta * wd)
            target.add_(s, alpha=-eta)
        else:
            if wd:
                target.mul_(1.0 - eta * wd)
            target.addcmul_(s, eta, value=-1.0)
        if idx is not None:
            p.index_copy_(0, idx, target)


def _has_nan(g: torch.Tensor) -> bool:
    if g.is_sparse:
        g = g.coalesce().values()
    return bool(torch.isnan(g).any())


def tiger_param_groups(
    model: nn.Module, *, lazy_embeddings: str | None = None, **overrides: Any
) -> list[dict[str, Any]]:
    """Param groups for :class:`Tiger` with ``kind`` set from the module types.

    ``nn.Embedding`` weights -> ``"embedding"`` (with ``lazy=lazy_embeddings``); weights of norm layers
    -> ``"gain"``; other 1-D tensors (biases) -> ``"bias"``; everything else -> ``"kernel"``. A parameter
    shared by several modules (tied embeddings) is listed once, under its first module. ``overrides``
    (e.g. ``lr=...``) are copied into every group.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice("lazy_embeddings", lazy_embeddings, LAZY_MODES)
    buckets: dict[str, list[torch.Tensor]] = {"embedding": [], "gain": [], "bias": [], "kernel": []}
    seen: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            if isinstance(module, nn.Embedding | nn.EmbeddingBag) and name == "weight":
                buckets["embedding"].append(p)
            elif isinstance(module, _NORM_TYPES) and name == "weight":
                buckets["gain"].append(p)
            elif p.ndim <= 1:
                buckets["bias"].append(p)
            else:
                buckets["kernel"].append(p)
    groups = []
    for kind, params in buckets.items():
        if params:
            group: dict[str, Any] = {"params": params, "kind": kind, **overrides}
            if kind == "embedding" and lazy_embeddings is not None:
                group["lazy"] = lazy_embeddings
            groups.append(group)
    return groups


def tiger_lr_from_adamw(lr_adamw: float, wd_adamw: float, factor: float = 3.0) -> tuple[float, float]:
    """Convert AdamW's (lr, decoupled weight decay) to plain Tiger/Lion's: ``(lr / factor, wd * factor)``.

    The Lion paper's rule (arXiv 2302.06675): a 3-10x smaller learning rate and a 3-10x larger decay
    keep lr·λ (the decay strength) unchanged; lion-pytorch's README found 3x better than 10x. This is
    for ``rms_scaling=False``; with the RMS rule, LAMB's learning rates transfer unchanged (9512).
    """
    lr = check_lr(lr_adamw, "lr_adamw")
    wd = check_nonnegative("wd_adamw", wd_adamw)
    f = check_number("factor", factor)
    if not 3.0 <= f <= 10.0:
        raise ValueError(f"factor must be in [3, 10] (the Lion paper's range), got {f}")
    return lr / f, wd * f


def piecewise_linear(schedule: Mapping[int, float]) -> Callable[[int], float]:
    """A learning-rate multiplier for ``torch.optim.lr_scheduler.LambdaLR`` from ``{step: factor}``.

    Linear from (0, 0) through the given points (the first segment is the warm-up), constant after the
    last one — the reference code's schedule, e.g. ``{40000: 1, 160000: 0.5, 640000: 0.1}``. With
    built-in accumulation the reference counts micro-steps.
    """
    if not isinstance(schedule, Mapping) or not schedule:
        raise ValueError(f"schedule must be a non-empty mapping {{step: factor}}, got {schedule!r}")
    points = sorted((int(s), check_number("factor", f)) for s, f in schedule.items())
    if points[0][0] <= 0:
        raise ValueError(f"schedule steps must be > 0 (the warm-up starts at (0, 0)), got {points[0][0]}")
    xs = [0] + [s for s, _ in points]
    ys = [0.0] + [f for _, f in points]

    def factor(step: int) -> float:
        if step >= xs[-1]:
            return ys[-1]
        for i in range(1, len(xs)):
            if step < xs[i]:
                t = (step - xs[i - 1]) / (xs[i] - xs[i - 1])
                return ys[i - 1] + t * (ys[i] - ys[i - 1])
        return ys[-1]  # pragma: no cover

    return factor
