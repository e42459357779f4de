"""LoRA-Pro: adjust LoRA's gradients so that the induced change of ``W`` is closest to full fine-tuning.

With ``W = W_frozen + s B A`` (``A``: ``r x in``, ``B``: ``out x r``), one SGD step on ``(A, B)`` with
gradients ``(g_A, g_B)`` changes ``W`` by ``-eta * s (B g_A + g_B A)`` to first order. LoRA-Pro picks
``(g_A, g_B)`` minimising ``|| s (B g_A + g_B A) - G ||_F`` (``G = dL/dW``). With ``P_B = B (B^T B)^-1 B^T``,
``P_A = A^T (A A^T)^-1 A`` and the raw LoRA gradients ``G_A = s B^T G``, ``G_B = s G A^T``:

    g_A = s^-2 (B^T B)^-1 G_A + X A
    g_B = s^-2 (I - P_B) G_B (A A^T)^-1 - B X                (any r x r matrix X)
    s (B g_A + g_B A) = P_B G + (I - P_B) G P_A = G - (I - P_B) G (I - P_A)   (independent of X)

so the "equivalent gradient" is the orthogonal projection of ``G`` onto ``{B Y + Z A}``. ``X`` is fixed by
``x_rule``: ``"sylvester"`` (LoRA-Pro: minimise ``|g_A - G_A|^2 + |g_B - G_B|^2``, i.e. solve
``(B^T B) X + X (A A^T) = -s^-2 (B^T B)^-1 G_A A^T``), ``"symmetric"`` (Su's choice
``X = -1/2 s^-2 (B^T B)^-1 G_A A^T (A A^T)^-1``, splitting the projector term equally) or ``"zero"``.
The map ``(G_A, G_B) -> (g_A, g_B)`` is linear for fixed ``(A, B)``, so it can be applied per backward
pass (gradient accumulation and shared layers stay correct). Gram inverses use ``+ jitter * I``; when
``B = 0`` (standard init) this reduces to the reference's step-0 rule ``g_A = G_A = 0``,
``g_B = s^-2 G_B (A A^T)^-1``.

Three ways to use it: ``apply_lora(..., gradient="pro")`` (the backward pass returns adjusted gradients,
so SGD is LoRA-Pro's SGD form and Adam its "efficient" mode); :func:`lora_pro_hook` (an optimizer
step pre-hook adjusting plain layers' ``.grad`` in place); :class:`LoraProAdamW` (``mode="full"``: AdamW
moments on the ``out x in`` equivalent gradient, whose Adam direction is projected back — this keeps
full-size optimizer state and saves no optimizer memory; ``mode="efficient"``: AdamW on the adjusted
low-rank gradients).

Post: "对齐全量微调！这是我看过最精彩的LoRA改进（二）" (2024-07-29, kexue.fm/archives/10266); paper:
"LoRA-Pro: Are Low-Rank Adapters Properly Optimized?" (arXiv 2407.18242).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .lora import LoraLinear, _check_choice, lora_layers

__all__ = [
    "LoraProAdamW",
    "equivalent_gradient",
    "lora_pro_gradients",
    "lora_pro_hook",
    "lora_pro_linear",
    "project_gradient",
    "solve_sylvester_symmetric",
]

_X_RULES = ("sylvester", "symmetric", "zero")


def _check_factors(A: torch.Tensor, B: torch.Tensor) -> int:
    if A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"expected A of shape (r, in) and B of shape (out, r), got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    return A.shape[0]


def _eig_psd(M: torch.Tensor, jitter: float) -> tuple[torch.Tensor, torch.Tensor]:
    d, Q = torch.linalg.eigh(0.5 * (M + M.T))
    return d.clamp_min(0.0) + jitter, Q


def solve_sylvester_symmetric(M: torch.Tensor, N: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Solve ``M X + X N = C`` for symmetric positive semi-definite ``M``, ``N`` (not both singular).

    Uses the eigendecompositions ``M = Q1 D1 Q1^T``, ``N = Q2 D2 Q2^T``:
    ``X = Q1 [(Q1^T C Q2) / (d1_i + d2_j)] Q2^T`` (real arithmetic, ``r x r`` so cheap).
    """
    if M.dim() != 2 or M.shape[0] != M.shape[1] or N.dim() != 2 or N.shape[0] != N.shape[1]:
        raise ValueError(f"M and N must be square, got {tuple(M.shape)} and {tuple(N.shape)}")
    if tuple(C.shape) != (M.shape[0], N.shape[0]):
        raise ValueError(f"C must have shape {(M.shape[0], N.shape[0])}, got {tuple(C.shape)}")
    d1, Q1 = torch.linalg.eigh(0.5 * (M + M.T))
    d2, Q2 = torch.linalg.eigh(0.5 * (N + N.T))
    denom = d1[:, None] + d2[None, :]
    if bool((denom <= 0).any()):
        raise ValueError(
            "M X + X N = C is singular: M and N must be positive semi-definite, not both singular"
        )
    return Q1 @ ((Q1.T @ C @ Q2) / denom) @ Q2.T


def lora_pro_gradients(
    A: torch.Tensor,
    B: torch.Tensor,
    grad_A: torch.Tensor,
    grad_B: torch.Tensor,
    scaling: float,
    x_rule: str = "sylvester",
    jitter: float = 1e-8,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-Pro's adjusted gradients ``(g_A, g_B)`` from the raw ones ``(grad_A, grad_B)``.

    ``A``: ``r x in``, ``B``: ``out x r`` (peft layout), ``scaling`` = ``s``. The ``r x r`` algebra is done
    in float64; the result has the dtype of ``grad_A`` / ``grad_B``.
    """
    _check_factors(A, B)
    if grad_A.shape != A.shape or grad_B.shape != B.shape:
        raise ValueError(
            f"gradients must match the factors' shapes {tuple(A.shape)} and {tuple(B.shape)}, "
            f"got {tuple(grad_A.shape)} and {tuple(grad_B.shape)}"
        )
    _check_choice("x_rule", x_rule, _X_RULES)
    if not scaling > 0:
        raise ValueError(f"scaling must be > 0, got {scaling}")
    A = A.detach()
    B = B.detach()
    inv_s2 = 1.0 / (float(scaling) ** 2)
    M = (B.T @ B).double()  # B^T B
    N = (A @ A.T).double()  # A A^T
    d1, Q1 = _eig_psd(M, jitter)
    d2, Q2 = _eig_psd(N, jitter)
    M_inv = (Q1 / d1) @ Q1.T
    N_inv = (Q2 / d2) @ Q2.T
    dt_a, dt_b = grad_A.dtype, grad_B.dtype
    a0 = inv_s2 * (M_inv.to(dt_a) @ grad_A)  # s^-2 (B^T B)^-1 G_A
    t = grad_B @ N_inv.to(dt_b)  # G_B (A A^T)^-1
    b0 = inv_s2 * (t - B.to(dt_b) @ (M_inv.to(dt_b) @ (B.T.to(dt_b) @ t)))  # s^-2 (I - P_B) G_B (AA^T)^-1
    if x_rule == "zero":
        return a0, b0
    rhs = -(a0.double() @ A.T.double())  # -s^-2 (B^T B)^-1 G_A A^T
    if x_rule == "symmetric":
        X = 0.5 * rhs @ N_inv
    else:
        X = Q1 @ ((Q1.T @ rhs @ Q2) / (d1[:, None] + d2[None, :])) @ Q2.T
    g_A = a0 + X.to(dt_a) @ A.to(dt_a)
    g_B = b0 - B.to(dt_b) @ X.to(dt_b)
    return g_A, g_B


def equivalent_gradient(
    A: torch.Tensor, B: torch.Tensor, grad_A: torch.Tensor, grad_B: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``s (B g_A + g_B A)``: the first-order change of ``W`` per unit SGD step (sign flipped)."""
    _check_factors(A, B)
    return scaling * (B.detach() @ grad_A + grad_B @ A.detach())


def project_gradient(A: torch.Tensor, B: torch.Tensor, G: torch.Tensor, jitter: float = 1e-8) -> torch.Tensor:
    """``G - (I - P_B) G (I - P_A)``: the orthogonal projection of ``G`` onto ``{B Y + Z A}``."""
    _check_factors(A, B)
    if tuple(G.shape) != (B.shape[0], A.shape[1]):
        raise ValueError(f"G must have shape {(B.shape[0], A.shape[1])}, got {tuple(G.shape)}")
    A = A.detach().double()
    B = B.detach().double()
    d1, Q1 = _eig_psd(B.T @ B, jitter)
    d2, Q2 = _eig_psd(A @ A.T, jitter)
    Gd = G.double()
    R = Gd - B @ ((Q1 / d1) @ Q1.T @ (B.T @ Gd))  # (I - P_B) G
    R = R - ((R @ A.T) @ ((Q2 / d2) @ Q2.T)) @ A  # (I - P_B) G (I - P_A)
    return (Gd - R).to(G.dtype)


class _LoraProLinear(torch.autograd.Function):
    """``y + s (x A^T) B^T`` whose backward returns LoRA-Pro-adjusted gradients for ``A`` and ``B``."""

    @staticmethod
    def forward(ctx: Any, y, x, A, B, scaling, x_rule, jitter):  # type: ignore[override]
        xa = x @ A.T
        ctx.save_for_backward(x, xa, A, B)
        ctx.scaling, ctx.x_rule, ctx.jitter = scaling, x_rule, jitter
        return torch.addmm(y, xa * scaling, B.T)

    @staticmethod
    def backward(ctx: Any, gy):  # type: ignore[override]
        x, xa, A, B = ctx.saved_tensors
        s = ctx.scaling
        gyB = gy @ B  # N x r
        grad_x = (gyB @ A) * s if ctx.needs_input_grad[1] else None
        grad_A = grad_B = None
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            raw_A = (gyB.T @ x) * s  # s B^T G with G = gy^T x
            raw_B = (gy.T @ xa) * s  # s G A^T
            grad_A, grad_B = lora_pro_gradients(A, B, raw_A, raw_B, s, ctx.x_rule, ctx.jitter)
        grad_y = gy if ctx.needs_input_grad[0] else None
        return grad_y, grad_x, grad_A, grad_B, None, None, None


def lora_pro_linear(
    y: torch.Tensor,
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scaling: float,
    x_rule: str = "sylvester",
    jitter: float = 1e-8,
) -> torch.Tensor:
    """``y + s (x A^T) B^T`` for 2-D ``x``; the backward pass gives ``A``, ``B`` LoRA-Pro's gradients."""
    return _LoraProLinear.apply(y, x, A, B, float(scaling), x_rule, float(jitter))


def _pro_pairs(model_or_layers: nn.Module | Iterable[LoraLinear]) -> list[LoraLinear]:
    if isinstance(model_or_layers, nn.Module):
        layers = [m for _, m in lora_layers(model_or_layers)]
    else:
        layers = list(model_or_layers)
    if not layers or not all(isinstance(m, LoraLinear) for m in layers):
        raise ValueError("LoRA-Pro needs at least one LoraLinear layer (use apply_lora first)")
    return layers


@torch.no_grad()
def _adjust_in_place(layer: LoraLinear, x_rule: str | None) -> None:
    A, B = layer.lora_A, layer.lora_B
    if A.grad is None or B.grad is None or layer.gradient == "pro":
        return
    g_A, g_B = lora_pro_gradients(A, B, A.grad, B.grad, layer.scaling, x_rule or layer.x_rule, layer.jitter)
    A.grad.copy_(g_A)
    B.grad.copy_(g_B)


def lora_pro_hook(
    optimizer: torch.optim.Optimizer,
    model_or_layers: nn.Module | Iterable[LoraLinear],
    x_rule: str | None = None,
) -> Any:
    """Register an optimizer step pre-hook that replaces LoRA gradients by LoRA-Pro's, in place.

    Only layers with ``gradient="plain"`` are adjusted (``"pro"`` layers already are). Returns the
    hook handle (``handle.remove()`` detaches it).
    """
    if x_rule is not None:
        _check_choice("x_rule", x_rule, _X_RULES)
    layers = _pro_pairs(model_or_layers)

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for layer in layers:
            _adjust_in_place(layer, x_rule)

    return optimizer.register_step_pre_hook(hook)


class LoraProAdamW(torch.optim.Optimizer):
    """AdamW for a model with LoRA layers, following LoRA-Pro.

    ``mode="full"`` (the official release): for each LoRA layer form the equivalent gradient
    ``g~ = s (B g_A + g_B A)`` from the adjusted gradients, keep AdamW moments of ``g~`` (``out x in``
    state per layer), take the Adam direction ``U``, project it back (``U_A = s B^T U``,
    ``U_B = s U A^T``, adjusted like a gradient) and step ``A``, ``B`` with decoupled weight decay.
    ``mode="efficient"``: ordinary AdamW on the adjusted low-rank gradients (state shaped like ``A``, ``B``).
    Other trainable parameters of the model get plain AdamW.
    """

    def __init__(
        self,
        model: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        mode: str = "full",
        x_rule: str | None = None,
    ) -> None:
        _check_choice("mode", mode, ("full", "efficient"))
        if x_rule is not None:
            _check_choice("x_rule", x_rule, _X_RULES)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if not eps > 0 or not weight_decay >= 0:
            raise ValueError(f"eps must be > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        self._layers = [m for m in _pro_pairs(model) if m.lora_A.requires_grad and m.lora_B.requires_grad]
        if not self._layers:
            raise ValueError("no trainable LoRA layer in the model")
        lora_ids = {id(p) for m in self._layers for p in (m.lora_A, m.lora_B)}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in lora_ids]
        groups: list[dict[str, Any]] = [
            {"params": [p for m in self._layers for p in (m.lora_A, m.lora_B)], "lora": True}
        ]
        if others:
            groups.append({"params": others, "lora": False})
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(groups, defaults)
        self.mode = mode
        self.x_rule = x_rule

    @staticmethod
    def _adam_direction(state: dict[str, Any], g: torch.Tensor, group: dict[str, Any]) -> torch.Tensor:
        b1, b2 = group["betas"]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(g)
            state["exp_avg_sq"] = torch.zeros_like(g)
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].mul_(b1).add_(g, alpha=1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(g, g, value=1 - b2)
        m_hat = state["exp_avg"] / (1 - b1**t)
        v_hat = state["exp_avg_sq"] / (1 - b2**t)
        return m_hat / (v_hat.sqrt() + group["eps"])

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            if not group["lora"]:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    u = self._adam_direction(self.state[p], p.grad, group)
                    p.mul_(1 - lr * wd).add_(u, alpha=-lr)
                continue
            for layer in self._layers:
                A, B = layer.lora_A, layer.lora_B
                if A.grad is None or B.grad is None:
                    continue
                x_rule = self.x_rule or layer.x_rule
                s = layer.scaling
                if layer.gradient == "pro":
                    g_A, g_B = A.grad, B.grad
                else:
                    g_A, g_B = lora_pro_gradients(A, B, A.grad, B.grad, s, x_rule, layer.jitter)
                if self.mode == "efficient":
                    u_A = self._adam_direction(self.state[A], g_A, group)
                    u_B = self._adam_direction(self.state[B], g_B, group)
                else:
                    g_full = equivalent_gradient(A, B, g_A, g_B, s)
                    U = self._adam_direction(self.state[A], g_full, group)
                    u_A, u_B = lora_pro_gradients(A, B, s * (B.T @ U), s * (U @ A.T), s, x_rule, layer.jitter)
                A.mul_(1 - lr * wd).add_(u_A, alpha=-lr)
                B.mul_(1 - lr * wd).add_(u_B, alpha=-lr)
        return loss
