"""Momentum optimizers with gradient accumulation hidden in the momentum (no extra buffer).

Post: "隐藏在动量中的梯度累积：少更新几步，效果反而更好？" (2021-08-24, kexue.fm/archives/8634).

Micro-steps t = 1, 2, ... each bring a gradient g_t; χ_{t/k} = 1 iff k divides t.

SGDM in EMA form (not torch's ``SGD(momentum=...)`` form)::

    m_t = [(β - 1) χ_{(t-1)/k} + 1] m_{t-1} + (1 - β)/k · g_t      (× β only on a group's first call)
    θ_t = θ_{t-1} - χ_{t/k} α m_t

which equals one SGDM step on the mean of the k gradients, exactly. Adam accumulates the second
moment the same way with g², and bias-corrects with the number of completed groups ⌈t/k⌉::

    m̂ = m / (1 - β1^{⌈t/k⌉}),  v̂ = v / (1 - β2^{⌈t/k⌉}),  θ -= χ_{t/k} α m̂ / (sqrt(v̂) + ε)

This is exact when the k gradients of a group are equal; in general v holds mean(g²) instead of
mean(g)² (the post's approximation). ``eps_inside_sqrt=True`` gives the post's sqrt(v̂ + ε).

``accumulation="beta_tilde"`` is the post's no-code-change recipe: EMA every micro-step with
β̃ = 1 - (1 - β)/k (β̃^k ≈ β) and update every k-th call; ``"chi_only"`` keeps β and only updates every
k-th call (the post: this alone already helps when a small batch is the bottleneck). In those modes
Adam's bias correction counts micro-steps with its own β̃ (or β).

Call :meth:`step` and ``zero_grad()`` every micro-batch; :attr:`is_update_step` says whether the next
call closes a group. The learning rate is read on that call. A trailing partial group is not
applied (its gradients stay in the momentum). Weight decay: ``weight_decay`` is L2 added to every
micro-gradient (exact, θ is constant inside a group); AdamW's decoupled decay acts on update calls
only, with that call's lr. Under DistributedDataParallel every micro-step must see synchronised
gradients (the momentum, not ``.grad``, is the accumulator, so ``no_sync`` would let ranks drift);
a loop that prefers fewer all-reduces should use ordinary ``.grad`` accumulation and k = 1 here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from kexue.optim._common import (
    ACCUMULATION_MODES,
    AccumulatingOptimizer,
    accumulate_momentum_,
    accumulate_square_,
    beta_tilde,
    check_beta,
    check_betas,
    check_choice,
    check_lr,
    check_nonnegative,
    check_positive,
    check_positive_int,
    dense_grad,
)

__all__ = ["SGDM", "Adam", "AdamW", "beta_tilde"]


class SGDM(AccumulatingOptimizer):
    """SGD with EMA momentum m = βm + (1 - β)g, θ -= lr·m, and built-in accumulation.

    Args:
        params: parameters or param groups.
        lr: learning rate α.
        beta: EMA coefficient β in [0, 1).
        weight_decay: L2 coefficient added to the gradient (g + λθ).
        accumulate_steps: micro-batches per update (k).
        accumulation: ``"exact"``, ``"beta_tilde"`` or ``"chi_only"``.
        maximize: maximise instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        beta: float = 0.9,
        weight_decay: float = 0.0,
        *,
        accumulate_steps: int = 1,
        accumulation: str = "exact",
        maximize: bool = False,
    ) -> None:
        check_positive_int("accumulate_steps", accumulate_steps)
        check_choice("accumulation", accumulation, ACCUMULATION_MODES)
        defaults = dict(
            lr=lr,
            beta=beta,
            weight_decay=weight_decay,
            maximize=maximize,
            accumulate_steps=accumulate_steps,
            accumulation=accumulation,
            micro_step=0,
        )
        super().__init__(params, defaults)
        self._init_accumulation()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        check_beta("beta", group["beta"])
        check_nonnegative("weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k = group["accumulate_steps"]
            phase, is_update = self._phase(group)
            for p in group["params"]:
                g = dense_grad(p, "SGDM")
                state = self.state[p]
                if g is None and (k == 1 or not state):
                    continue
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if g is not None:
                    if group["maximize"]:
                        g = -g
                    if group["weight_decay"]:
                        g = g.add(p, alpha=group["weight_decay"])
                m = state["exp_avg"]
                accumulate_momentum_(m, g, group["beta"], k, phase, group["accumulation"])
                if is_update:
                    p.add_(m, alpha=-group["lr"])
            group["micro_step"] += 1
        return loss


class Adam(AccumulatingOptimizer):
    """Adam / AdamW with built-in accumulation; k = 1 is torch's Adam (same operations, same order).

    Args:
        params: parameters or param groups.
        lr, betas, eps: as in ``torch.optim.Adam``.
        weight_decay: L2 (``decoupled_weight_decay=False``) or AdamW's decoupled λ.
        decoupled_weight_decay: AdamW's θ <- θ(1 - lr·λ) on update calls.
        eps_inside_sqrt: use the post's sqrt(v̂ + ε) instead of sqrt(v̂) + ε.
        accumulate_steps, accumulation: see the module docstring.
        maximize: maximise instead.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        eps_inside_sqrt: bool = False,
        accumulate_steps: int = 1,
        accumulation: str = "exact",
        maximize: bool = False,
    ) -> None:
        check_positive_int("accumulate_steps", accumulate_steps)
        check_choice("accumulation", accumulation, ACCUMULATION_MODES)
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            eps_inside_sqrt=eps_inside_sqrt,
            maximize=maximize,
            accumulate_steps=accumulate_steps,
            accumulation=accumulation,
            micro_step=0,
        )
        super().__init__(params, defaults)
        self._init_accumulation()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_lr(group["lr"])
        group["betas"] = check_betas(group["betas"])
        check_positive("eps", group["eps"])
        check_nonnegative("weight_decay", group["weight_decay"])

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            k, mode = group["accumulate_steps"], group["accumulation"]
            phase, is_update = self._phase(group)
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            decoupled = group["decoupled_weight_decay"]
            for p in group["params"]:
                g = dense_grad(p, "Adam")
                state = self.state[p]
                if g is None and (k == 1 or not state):
                    continue
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if g is not None:
                    if group["maximize"]:
                        g = -g
                    if wd and not decoupled:
                        g = g.add(p, alpha=wd)
                if is_update and wd and decoupled:
                    p.mul_(1.0 - lr * wd)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                accumulate_momentum_(m, g, beta1, k, phase, mode)
                accumulate_square_(v, g, beta2, k, phase, mode)
                if mode != "exact" or is_update:
                    state["step"] += 1
                if not is_update:
                    continue
                t = state["step"]
                b1, b2 = beta1, beta2
                if mode == "beta_tilde":
                    b1, b2 = beta_tilde(beta1, k), beta_tilde(beta2, k)
                bias_correction1 = 1.0 - b1**t
                bias_correction2 = 1.0 - b2**t
                step_size = lr / bias_correction1
                if group["eps_inside_sqrt"]:
                    denom = (v / bias_correction2).add_(group["eps"]).sqrt_()
                else:
                    denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(group["eps"])
                p.addcdiv_(m, denom, value=-step_size)
            group["micro_step"] += 1
        return loss


class AdamW(Adam):
    """:class:`Adam` with decoupled weight decay (default λ = 0.01), as ``torch.optim.AdamW``."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("decoupled_weight_decay", True)
        super().__init__(params, lr, betas, eps, weight_decay, **kwargs)
