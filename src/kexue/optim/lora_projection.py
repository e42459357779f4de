"""LoRA seen from the gradient: LoRA as an optimizer, and resampled random projections.

Post: "梯度视角下的LoRA：简介、分析、猜测及推广" (2023-04-17, kexue.fm/archives/9590); the random-projection
idea was later developed into Flora (Hao, Cao, Mou, ICML 2024, arXiv 2402.03293).

Layout. The post writes Y = X W with W (n × m) = W0 + A B, A (n × r), B (r × m). Here weights are
torch's ``nn.Linear.weight`` (out × in = Wᵀ) and LoRA is PEFT's ΔW = s · B A with A (r × in),
B (out × r); so A_post = Aᵀ, B_post = Bᵀ and, with G = ∂L/∂weight (out × in = G_postᵀ),

    ∂L/∂A = s · Bᵀ G   (post: G_A = G_post B_postᵀ)        ∂L/∂B = s · G Aᵀ   (post: G_B = A_postᵀ G_post)

:func:`lora_factor_gradients` computes these. Because the LoRA gradients are projections of the full
gradient, LoRA can live inside an optimizer that receives G and never changes the network:
:class:`LoraOptimizer` keeps A, B (and the base optimizer's state, all low-rank) per weight and adds
s(B'A' - BA) to the weight after each factor step — the same trajectory as module LoRA. With
``merge_every=κ`` it is "serial LoRA" (Su's comment on the post; ReLoRA): every κ steps the factors are
folded in (they already are), A is redrawn, B reset to 0 and the factor state reset.

Random projections (post, generalised to rank r): with fresh u (in × r) and v (r × out) of i.i.d.
N(0, 1/r) entries (E[u uᵀ] = I, E[vᵀ v] = I),

    ΔW = -η · c · (vᵀ v G + G u uᵀ),       E[ΔW] = -2cη G,

so c = 1/2 (default) makes the expected update SGD's (the post's r = 1 formula has c = 1 and swaps the
stated shapes of u and v). :class:`RandomProjectionOptimizer` applies it, redrawing the projections
every ``resample_every`` steps from a stored integer seed (device-independent, never stored), with
optional momentum kept compressed as (v M, M u) and transferred on redraws (Flora's M_c Pᵀ P'): the
state is r·(in + out) numbers instead of in·out. Variance is large (u uᵀ has r eigenvalues ≈ in/r),
so the stable learning rate shrinks as a projection is reused.

The additive variant of the post (W = W0 + A·1 + 1·B, rank <= 2r) is :func:`additive_lora_delta` /
:func:`additive_lora_gradients` (post layout, block indicators for r > 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from kexue.optim._common import (
    check_beta,
    check_betas,
    check_choice,
    check_lr,
    check_nonnegative,
    check_positive,
    check_positive_int,
    dense_grad,
)

__all__ = [
    "LoraOptimizer",
    "RandomProjectionOptimizer",
    "additive_lora_delta",
    "additive_lora_gradients",
    "block_indicator",
    "effective_rank",
    "linear_weights",
    "lora_factor_gradients",
    "lora_forward",
    "random_projection_update",
]

_SEED_STRIDE = 1_000_003


def _check_matrix(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(t.shape)}")
    return t


def _check_rank(rank: object, shape: tuple[int, ...]) -> int:
    r = check_positive_int("rank", rank)
    if r > min(shape):
        raise ValueError(
            f"rank must be <= min(out, in) = {min(shape)} for a weight of shape {shape}, got {r}"
        )
    return r


def lora_factor_gradients(
    grad_weight: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂A, ∂L/∂B) = (s·Bᵀ G, s·G Aᵀ) for weight = W0 + s·B A (torch layout, see module docstring)."""
    G = _check_matrix("grad_weight", grad_weight)
    A = _check_matrix("A", A)
    B = _check_matrix("B", B)
    if B.shape[0] != G.shape[0] or A.shape[1] != G.shape[1] or A.shape[0] != B.shape[1]:
        raise ValueError(
            f"shapes do not chain: G {tuple(G.shape)} (out x in), A {tuple(A.shape)} (r x in), "
            f"B {tuple(B.shape)} (out x r)"
        )
    return scaling * (B.mT @ G), scaling * (G @ A.mT)


def lora_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scaling: float = 1.0,
    *,
    merged: bool = False,
) -> torch.Tensor:
    """y = x (W0 + s·B A)ᵀ.

    ``merged=False`` computes x W0ᵀ + s·(x Aᵀ) Bᵀ: backward never forms an out × in gradient for the
    factors (the post's recommended form). ``merged=True`` builds W0 + s·BA first (and its gradient).
    """
    _check_matrix("weight", weight)
    if merged:
        return x @ (weight + scaling * (B @ A)).mT
    return x @ weight.mT + scaling * ((x @ A.mT) @ B.mT)


def _projections(
    seed: int, cycle: int, rank: int, n_in: int, n_out: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """u (in × r) and v (r × out) with N(0, 1/r) entries, regenerated from (seed, cycle) on the CPU."""
    gen = torch.Generator().manual_seed((seed * _SEED_STRIDE + cycle) % (2**63 - 1))
    std = 1.0 / math.sqrt(rank)
    work = dtype if dtype in (torch.float32, torch.float64) else torch.float32
    u = torch.randn(n_in, rank, generator=gen, dtype=work) * std
    v = torch.randn(rank, n_out, generator=gen, dtype=work) * std
    return u.to(device=device, dtype=dtype), v.to(device=device, dtype=dtype)


def random_projection_update(
    grad: torch.Tensor, rank: int, c: float = 0.5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One draw of c·(vᵀ v G + G u uᵀ) with u (in × r), v (r × out) ~ N(0, 1/r); its mean is 2c·G."""
    G = _check_matrix("grad", grad)
    r = _check_rank(rank, tuple(G.shape))
    std = 1.0 / math.sqrt(r)
    u = torch.randn(G.shape[1], r, generator=generator, dtype=G.dtype) * std
    v = torch.randn(r, G.shape[0], generator=generator, dtype=G.dtype) * std
    u, v = u.to(G.device), v.to(G.device)
    return c * (v.mT @ (v @ G) + (G @ u) @ u.mT)


def linear_weights(model: nn.Module) -> list[nn.Parameter]:
    """The ``weight`` of every ``nn.Linear`` in ``model`` (each once)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            out.append(module.weight)
    return out


def effective_rank(matrix: torch.Tensor) -> float:
    """(Σ s_i)² / Σ s_i² of the singular values (1 for rank one, n for a multiple of an orthogonal matrix)."""
    s = torch.linalg.svdvals(_check_matrix("matrix", matrix).double())
    denom = float((s * s).sum())
    return 0.0 if denom == 0.0 else float(s.sum()) ** 2 / denom


class _LowRankOptimizer(Optimizer):
    """Common checks: every parameter a 2-D weight, rank valid for each, deterministic per-tensor seeds."""

    def _check_group(self, group: dict[str, Any]) -> None:
        check_lr(group["lr"])
        for p in group["params"]:
            if p.ndim != 2:
                raise ValueError(
                    f"{type(self).__name__} works on 2-D weights (nn.Linear: out x in), got shape {tuple(p.shape)}"
                )
            _check_rank(group["rank"], tuple(p.shape))

    def _next_seed(self, seed: int) -> int:
        i = getattr(self, "_n_seeded", 0)
        self._n_seeded = i + 1
        return int(seed) * 7919 + i


class LoraOptimizer(_LowRankOptimizer):
    """LoRA implemented as an optimizer on full weights (the network is left unchanged).

    For each weight W (out × in) it keeps A (r × in), B (out × r) and the base optimizer's state on
    them; a step maps G to (s·Bᵀ G, s·G Aᵀ), updates A, B with SGD or Adam (torch's formulas) and adds
    s·(B'A' - BA) to W. Optimizer state: r·(in + out) numbers per factor tensor instead of in·out.

    Args:
        params: 2-D weights (e.g. :func:`linear_weights`) or param groups.
        lr: learning rate of the factor optimizer.
        rank: r.
        base: ``"adam"`` or ``"sgd"``.
        betas, eps: Adam's.
        scaling: s (PEFT's lora_alpha / r).
        init: ``"zero"`` (A ~ N(0, init_std²), B = 0) or ``"nonzero"`` (both random; W is unchanged at
            step 0 because only differences are added — the post's W0 - A0B0 + AB offset).
        init_std: std of the random factors (default 1/sqrt(in)).
        merge_every: κ for serial LoRA (None: never redraw).
        seed: seeds the factor draws (per tensor, reproducible across devices).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        rank: int = 8,
        *,
        base: str = "adam",
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        scaling: float = 1.0,
        init: str = "zero",
        init_std: float | None = None,
        merge_every: int | None = None,
        seed: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr,
            rank=rank,
            base=base,
            betas=betas,
            eps=eps,
            scaling=scaling,
            init=init,
            init_std=init_std,
            merge_every=merge_every,
            seed=seed,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        check_choice("base", group["base"], ("adam", "sgd"))
        group["betas"] = check_betas(group["betas"])
        check_positive("eps", group["eps"])
        check_positive("scaling", group["scaling"])
        check_choice("init", group["init"], ("zero", "nonzero"))
        if group["init_std"] is not None:
            check_positive("init_std", group["init_std"])
        if group["merge_every"] is not None:
            check_positive_int("merge_every", group["merge_every"])
        if isinstance(group["seed"], bool) or not isinstance(group["seed"], int):
            raise TypeError(f"seed must be an int, got {group['seed']!r}")
        for p in group["params"]:
            state = self.state[p]
            state["seed"] = self._next_seed(group["seed"])
            state["step"] = 0
            state["cycle"] = 0
            self._draw_factors(p, group, state)

    def _draw_factors(self, p: torch.Tensor, group: dict[str, Any], state: dict[str, Any]) -> None:
        r = group["rank"]
        n_out, n_in = p.shape
        std = group["init_std"] if group["init_std"] is not None else 1.0 / math.sqrt(n_in)
        gen = torch.Generator().manual_seed((state["seed"] * _SEED_STRIDE + state["cycle"]) % (2**63 - 1))
        work = p.dtype if p.dtype in (torch.float32, torch.float64) else torch.float32
        A = torch.randn(r, n_in, generator=gen, dtype=work) * std
        if group["init"] == "nonzero" and state["cycle"] == 0:
            B = torch.randn(n_out, r, generator=gen, dtype=work) * std
        else:
            B = torch.zeros(n_out, r, dtype=work)
        state["lora_A"] = A.to(device=p.device, dtype=p.dtype)
        state["lora_B"] = B.to(device=p.device, dtype=p.dtype)
        if group["base"] == "adam":
            for name in ("A", "B"):
                state[f"exp_avg_{name}"] = torch.zeros_like(state[f"lora_{name}"])
                state[f"exp_avg_sq_{name}"] = torch.zeros_like(state[f"lora_{name}"])
            state["adam_step"] = 0

    def factors(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The current (A, B) of weight ``p`` (the optimizer's own tensors, not copies)."""
        state = self.state.get(p)
        if not state or "lora_A" not in state:
            raise ValueError("p is not a parameter of this LoraOptimizer")
        return state["lora_A"], state["lora_B"]

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            s, lr = group["scaling"], group["lr"]
            for p in group["params"]:
                G = dense_grad(p, "LoraOptimizer")
                if G is None:
                    continue
                state = self.state[p]
                A, B = state["lora_A"], state["lora_B"]
                gA, gB = s * (B.mT @ G), s * (G @ A.mT)
                old = B @ A
                if group["base"] == "sgd":
                    A.add_(gA, alpha=-lr)
                    B.add_(gB, alpha=-lr)
                else:
                    state["adam_step"] += 1
                    t = state["adam_step"]
                    beta1, beta2 = group["betas"]
                    bc1, bc2 = 1.0 - beta1**t, 1.0 - beta2**t
                    for name, f, gf in (("A", A, gA), ("B", B, gB)):
                        m, v = state[f"exp_avg_{name}"], state[f"exp_avg_sq_{name}"]
                        m.lerp_(gf, 1.0 - beta1)
                        v.mul_(beta2).addcmul_(gf, gf, value=1.0 - beta2)
                        denom = (v.sqrt() / math.sqrt(bc2)).add_(group["eps"])
                        f.addcdiv_(m, denom, value=-lr / bc1)
                p.add_(B @ A - old, alpha=s)
                state["step"] += 1
                if group["merge_every"] is not None and state["step"] % group["merge_every"] == 0:
                    state["cycle"] += 1
                    self._draw_factors(p, group, state)  # B = 0: W unchanged, factor state reset
        return loss


class RandomProjectionOptimizer(_LowRankOptimizer):
    """Resampled random-projection updates ΔW = -lr·c·(vᵀ v G + G u uᵀ) (post 9590; Flora-style state).

    Args:
        params: 2-D weights or param groups.
        lr: learning rate η.
        rank: r, the projection width.
        c: factor of the update; 0.5 makes E[ΔW] = -η G (plain SGD in expectation).
        resample_every: redraw u, v every this many steps (1: every step, the post's proposal).
        momentum: β of an EMA kept in the compressed spaces (v M: r × in, M u: out × r); on a redraw the
            compressed momenta are transferred, v' vᵀ (v M) and (M u) uᵀ u'. 0 keeps no state tensors.
        weight_decay: decoupled decay θ <- θ(1 - η λ).
        seed: seeds the projections (per tensor; regenerated, never stored).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float,
        rank: int = 8,
        *,
        c: float = 0.5,
        resample_every: int = 1,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        defaults = dict(
            lr=lr,
            rank=rank,
            c=c,
            resample_every=resample_every,
            momentum=momentum,
            weight_decay=weight_decay,
            seed=seed,
        )
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        check_positive("c", group["c"])
        check_positive_int("resample_every", group["resample_every"])
        check_beta("momentum", group["momentum"])
        check_nonnegative("weight_decay", group["weight_decay"])
        if isinstance(group["seed"], bool) or not isinstance(group["seed"], int):
            raise TypeError(f"seed must be an int, got {group['seed']!r}")
        for p in group["params"]:
            self.state[p]["seed"] = self._next_seed(group["seed"])
            self.state[p]["step"] = 0

    def projections(self, p: torch.Tensor, cycle: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(u, v) used for ``p`` in projection cycle ``cycle`` (default: the current one)."""
        state = self.state.get(p)
        if not state or "seed" not in state:
            raise ValueError("p is not a parameter of this RandomProjectionOptimizer")
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        if cycle is None:
            cycle = state["step"] // group["resample_every"]
        n_out, n_in = p.shape
        return _projections(state["seed"], cycle, group["rank"], n_in, n_out, p.dtype, p.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, c, beta, every = group["lr"], group["c"], group["momentum"], group["resample_every"]
            for p in group["params"]:
                G = dense_grad(p, "RandomProjectionOptimizer")
                if G is None:
                    continue
                state = self.state[p]
                t = state["step"]
                cycle = t // every
                u, v = self.projections(p, cycle)
                if beta > 0.0:
                    if "momentum_left" not in state:
                        state["momentum_left"] = torch.zeros(
                            v.shape[0], p.shape[1], dtype=p.dtype, device=p.device
                        )
                        state["momentum_right"] = torch.zeros(
                            p.shape[0], u.shape[1], dtype=p.dtype, device=p.device
                        )
                    ml, mr = state["momentum_left"], state["momentum_right"]
                    if t > 0 and t % every == 0:  # new projections: transfer the compressed momenta
                        u_old, v_old = self.projections(p, cycle - 1)
                        ml.copy_((v @ v_old.mT) @ ml)
                        mr.copy_(mr @ (u_old.mT @ u))
                    ml.lerp_(v @ G, 1.0 - beta)
                    mr.lerp_(G @ u, 1.0 - beta)
                    update = v.mT @ ml + mr @ u.mT
                else:
                    update = v.mT @ (v @ G) + (G @ u) @ u.mT
                if group["weight_decay"]:
                    p.mul_(1.0 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * c)
                state["step"] = t + 1
        return loss


# --- additive variant ------------------------------------------------------------------------


def block_indicator(size: int, rank: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(size × rank) 0/1 matrix whose column k marks the k-th of ``rank`` equal blocks of indices."""
    check_positive_int("size", size)
    check_positive_int("rank", rank)
    if size % rank:
        raise ValueError(f"the additive variant needs dimensions divisible by rank: {size} % {rank} != 0")
    return torch.repeat_interleave(torch.eye(rank, dtype=dtype), size // rank, dim=0)


def additive_lora_delta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The post's additive variant (post layout): ΔW = a · Pᵀ + Q · b, rank <= 2r.

    a is n × r, b is r × m; Q (n × r) and P (m × r) are block indicators, so for r = 1
    ΔW_ij = a_i + b_j (W0 + A·1_{1×m} + 1_{n×1}·B).
    """
    a = _check_matrix("a", a)
    b = _check_matrix("b", b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"a (n x r) and b (r x m) disagree on r: {tuple(a.shape)} vs {tuple(b.shape)}")
    r = a.shape[1]
    Q = block_indicator(a.shape[0], r, dtype=a.dtype).to(a.device)
    P = block_indicator(b.shape[1], r, dtype=b.dtype).to(b.device)
    return a @ P.mT + Q @ b


def additive_lora_gradients(grad: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂a, ∂L/∂b) = (G P, Qᵀ G): block row sums and block column sums of G (post layout)."""
    G = _check_matrix("grad", grad)
    r = check_positive_int("rank", rank)
    Q = block_indicator(G.shape[0], r, dtype=G.dtype).to(G.device)
    P = block_indicator(G.shape[1], r, dtype=G.dtype).to(G.device)
    return G @ P, Q.mT @ G
