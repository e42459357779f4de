"""Lion (EvoLved Sign Momentum), with the lazy-row remedies of the Lion/Tiger embedding anomaly.

Paper: "Symbolic Discovery of Optimization Algorithms" (Chen et al., arXiv 2302.06675). The anomaly
and its remedies: "Lion/Tiger优化器训练下的Embedding异常和对策" (2023-08-28, kexue.fm/archives/9736).

Update for one tensor θ with gradient g::

    u   = sign(β1 m + (1 - β1) g)            (computed as sign(lerp(m, g, 1 - β1)))
    θ  <- θ (1 - η λ) - η u                  (decoupled decay, as in the paper and lion-pytorch)
    m  <- β2 m + (1 - β2) g                  (m.lerp_(g, 1 - β2))

With β1 = β2 this is exactly :class:`kexue.optim.Tiger` with ``rms_scaling=False``. ``lazy="param"``
/ ``"state"`` (per param group) restrict the parameter update (and, for ``"state"``, the momentum
update) to the embedding rows present in the batch; see :mod:`kexue.optim.tiger`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import Optimizer

from kexue.optim._common import (
    Scratch,
    check_betas,
    check_present_rows,
    default_foreach,
    present_row_mask,
)
from kexue.optim.tiger import validate_sign_group

__all__ = ["Lion"]


class Lion(Optimizer):
    """Lion as a ``torch.optim.Optimizer``.

    Args:
        params: parameters or param groups (every option may be overridden per group).
        lr: learning rate η (the paper: 3-10x smaller than AdamW's).
        betas: (β1, β2) — interpolation for the update, EMA for the momentum.
        weight_decay: decoupled λ (the paper: 3-10x larger than AdamW's, keeping η·λ).
        lazy: ``None``, ``"param"`` or ``"state"`` (embedding-anomaly remedy for this group).
        foreach: ``torch._foreach_*`` kernels (default: only off-CPU). Both paths round identically.
        maximize: maximise the objective instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        lazy: str | None = None,
        foreach: bool | None = None,
        maximize: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, weight_decay=weight_decay, lazy=lazy, foreach=foreach, maximize=maximize
        )
        super().__init__(params, defaults)
        self._scratch = Scratch()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        validate_sign_group(group, "Lion")
        group["betas"] = check_betas(group["betas"])

    @torch.no_grad()
    def step(
        self,
        closure: Callable[[], torch.Tensor] | None = None,
        *,
        present_rows: Mapping[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | None:
        """One step. ``present_rows`` maps lazy embedding tables to the row ids in the batch."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rows = check_present_rows(present_rows, (p for g in self.param_groups for p in g["params"]))
        for group in self.param_groups:
            self._step_group(group, rows)
        return loss

    def _step_group(self, group: dict[str, Any], rows: dict[int, torch.Tensor]) -> None:
        beta1, beta2 = group["betas"]
        lr, wd, lazy = float(group["lr"]), float(group["weight_decay"]), group["lazy"]
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_foreach(group["params"])
        ps: list[torch.Tensor] = []
        gs: list[torch.Tensor] = []
        ms: list[torch.Tensor] = []
        for p in group["params"]:
            g = p.grad
            if g is None:
                continue
            if g.is_sparse and lazy is None:
                raise TypeError(
                    f"Lion got a sparse gradient for a parameter of shape {tuple(p.shape)}; sparse "
                    "gradients are supported only with lazy='param' or lazy='state'"
                )
            state = self.state[p]
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            m = state["exp_avg"]
            if group["maximize"]:
                g = -g
            if lazy is not None:
                self._lazy_update(p, g, m, group, rows.get(id(p)))
            elif foreach:
                ps.append(p)
                gs.append(g)
                ms.append(m)
            else:
                u = self._scratch.like(m)
                torch.lerp(m, g, 1.0 - beta1, out=u)
                u.sign_()
                if wd:
                    p.mul_(1.0 - lr * wd)
                p.add_(u, alpha=-lr)
                m.lerp_(g, 1.0 - beta2)
        if ps:
            us = torch._foreach_lerp(ms, gs, 1.0 - beta1)
            torch._foreach_sign_(us)
            if wd:
                torch._foreach_mul_(ps, 1.0 - lr * wd)
            torch._foreach_add_(ps, us, alpha=-lr)
            torch._foreach_lerp_(ms, gs, 1.0 - beta2)

    def _lazy_update(
        self,
        p: torch.Tensor,
        g: torch.Tensor,
        m: torch.Tensor,
        group: dict[str, Any],
        ids: torch.Tensor | None,
    ) -> None:
        beta1, beta2 = group["betas"]
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        if g.is_sparse:
            g = g.coalesce()
        idx = present_row_mask(p, g, ids).nonzero().squeeze(1)
        if g.is_sparse:
            g_rows = g.index_select(0, idx).to_dense()
            g_dense = g.to_dense() if group["lazy"] == "param" else None
        else:
            g_rows = g.index_select(0, idx)
            g_dense = g
        if idx.numel():
            m_rows = m.index_select(0, idx)
            u = torch.lerp(m_rows, g_rows, 1.0 - beta1).sign_()
            p_rows = p.index_select(0, idx)
            if wd:
                p_rows.mul_(1.0 - lr * wd)
            p_rows.add_(u, alpha=-lr)
            p.index_copy_(0, idx, p_rows)
        if group["lazy"] == "param":
            m.lerp_(g_dense, 1.0 - beta2)
        elif idx.numel():
            m.index_copy_(0, idx, m.index_select(0, idx).lerp_(g_rows, 1.0 - beta2))
