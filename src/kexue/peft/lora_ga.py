"""LoRA-GA: initialise LoRA from the SVD of the full-weight gradient so the first step matches full FT.

One SGD step of LoRA (``W = W_frozen + s B A``, ``A``: ``r x in``, ``B``: ``out x r``, ``G = dL/dW``) changes
``W`` by ``-eta s^2 (B B^T G + G A^T A) + O(eta^2)``. With the SVD ``G0 = U S V^T`` of the gradient at the
start and the default direction ``"ArB2r"`` (``A0 = V^T[:r]``, ``B0 = U[:, r:2r]``) this is ``s^2 zeta^2``
times the best rank-``2r`` approximation of ``G0`` (Eckart-Young: residual ``sum_{i>2r} sigma_i^2``), i.e.
LoRA's first step is the closest rank-``2r`` match to full fine-tuning's. Both factors are scaled by
``zeta`` (``"stable"``: ``zeta = out^{1/4} / sqrt(gamma)``, ``gamma = 16``; ``"gd"``: ``1/s``; ``"unit"``: 1;
``"weightS"``: ``mean_i sqrt(sigma_i(W) / s)`` over the top ``r`` singular values of the weight), and the
frozen weight becomes ``W0 - s B0 A0`` (computed in at least float32) so the model is unchanged at step 0.

``peft_compat=True`` reproduces peft 0.21's ``init_lora_weights="lora_ga"`` instead: singular values
multiplied into ``B``, the stable factor on ``B`` only. SVD factors are defined up to a sign per pair, so
compare sign-invariant quantities (``A^T A``, ``B B^T``, the first-step update, ``W_frozen + s B A``).

Post: "对齐全量微调！这是我看过最精彩的LoRA改进（一）" (2024-07-12, kexue.fm/archives/10226); paper:
"LoRA-GA: Low-Rank Adaptation with Gradient Approximation" (arXiv 2407.05000).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .lora import _check_choice, find_target_modules

__all__ = ["LoraGAConfig", "check_ga_rank", "estimate_gradients", "lora_ga_factors"]

_DIRECTIONS = ("ArB2r", "A2rBr", "ArBr", "random")
_SCALES = ("stable", "gd", "unit", "weightS")


@dataclass(frozen=True)
class LoraGAConfig:
    """Options of the LoRA-GA initialisation (defaults: the official LoRA-GA code).

    Attributes:
        direction: which singular directions go to ``A`` and ``B``: ``"ArB2r"`` (``A``: 1..r, ``B``: r+1..2r),
            ``"A2rBr"``, ``"ArBr"`` (interleaved) or ``"random"`` (a random disjoint split of the top 2r).
        scale: ``"stable"``, ``"gd"``, ``"unit"`` or ``"weightS"`` (see the module docstring).
        stable_gamma: ``gamma`` of the stable scale.
        svd: ``"exact"`` (``torch.linalg.svd``) or ``"lowrank"`` (``torch.svd_lowrank`` with
            ``q = min(4r, min(out, in))`` and ``niter`` power iterations, seeded by ``seed``).
        gradient_transform: ``None`` or ``"sign"`` (SVD of ``sign(G0)``: the post's "speculative" Adam option).
        peft_compat: reproduce peft 0.21's variant (singular values in ``B``, stable factor on ``B`` only).
    """

    direction: str = "ArB2r"
    scale: str = "stable"
    stable_gamma: float = 16.0
    svd: str = "lowrank"
    niter: int = 4
    seed: int = 0
    gradient_transform: str | None = None
    peft_compat: bool = False

    def __post_init__(self) -> None:
        _check_choice("direction", self.direction, _DIRECTIONS)
        _check_choice("scale", self.scale, _SCALES)
        _check_choice("svd", self.svd, ("exact", "lowrank"))
        if self.gradient_transform not in (None, "sign"):
            raise ValueError(f"gradient_transform must be None or 'sign', got {self.gradient_transform!r}")
        if not (isinstance(self.stable_gamma, int | float) and self.stable_gamma > 0):
            raise ValueError(f"stable_gamma must be > 0, got {self.stable_gamma!r}")
        if isinstance(self.niter, bool) or not isinstance(self.niter, int) or self.niter < 0:
            raise ValueError(f"niter must be an int >= 0, got {self.niter!r}")


def check_ga_rank(r: int, in_features: int, out_features: int, name: str = "") -> int:
    """LoRA-GA needs ``2r <= min(in, out)`` singular directions."""
    where = f" for layer {name!r}" if name else ""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"LoRA rank r must be an int >= 1{where}, got {r!r}")
    if 2 * r > min(in_features, out_features):
        raise ValueError(
            f"LoRA-GA needs 2r <= min(in_features, out_features) = {min(in_features, out_features)}{where}, "
            f"got r={r}"
        )
    return r


def _all_finite(G: torch.Tensor) -> bool:
    # a finite sum implies finite entries (inf or nan would propagate); fall back on overflow
    return bool(torch.isfinite(G.sum())) or bool(torch.isfinite(G).all())


def _svd(G: torch.Tensor, k: int, config: LoraGAConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top singular triplets ``(U[:, :k'], S[:k'], Vh[:k', :])`` with ``k' >= k``."""
    if config.svd == "exact":
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        return U, S, Vh
    q = min(2 * k, min(G.shape))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        U, S, V = torch.svd_lowrank(G, q=q, niter=config.niter)
    return U, S, V.T


def lora_ga_factors(
    grad: torch.Tensor,
    r: int,
    scaling: float,
    config: LoraGAConfig | None = None,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LoRA-GA's initial factors ``(A0, B0)`` (``r x in``, ``out x r``) from the gradient ``grad`` (``out x in``).

    Computed in float32 (float64 if ``grad`` is float64). ``weight`` (the original ``W0``) is needed only
    for ``scale="weightS"``. The caller must also offset the frozen weight by ``- scaling * B0 A0``
    (:meth:`kexue.peft.LoraLinear.init_lora_ga` does both).
    """
    cfg = LoraGAConfig() if config is None else config
    if not isinstance(grad, torch.Tensor) or grad.dim() != 2:
        raise ValueError(f"grad must be a 2-D tensor (out, in), got {getattr(grad, 'shape', type(grad))}")
    out_f, in_f = grad.shape
    check_ga_rank(r, in_f, out_f)
    if not scaling > 0:
        raise ValueError(f"scaling must be > 0, got {scaling}")
    ct = torch.float64 if grad.dtype == torch.float64 else torch.float32
    G = grad.detach().to(ct)
    if not _all_finite(G):
        raise ValueError("LoRA-GA: the gradient has non-finite entries")
    if cfg.gradient_transform == "sign":
        G = torch.sign(G)
    U, S, Vh = _svd(G, 2 * r, cfg)
    if cfg.direction == "ArB2r":
        ia, ib = torch.arange(0, r), torch.arange(r, 2 * r)
    elif cfg.direction == "A2rBr":
        ia, ib = torch.arange(r, 2 * r), torch.arange(0, r)
    elif cfg.direction == "ArBr":
        ia, ib = torch.arange(1, 2 * r, 2), torch.arange(0, 2 * r, 2)
    else:
        perm = torch.randperm(2 * r, generator=torch.Generator().manual_seed(cfg.seed))
        ia, ib = perm[:r].sort().values, perm[r:].sort().values
    A0 = Vh[ia, :].clone()
    B0 = U[:, ib].clone()
    if cfg.peft_compat:
        S_B = S[ib]
        B0 = B0 * S_B
        if cfg.scale == "stable":
            B0 = B0 * (out_f**0.25 / math.sqrt(cfg.stable_gamma))
        elif cfg.scale == "gd":
            A0, B0 = A0 / scaling, B0 / scaling
        elif cfg.scale == "weightS":
            if weight is None:
                raise ValueError("scale='weightS' needs the layer weight")
            S_W = torch.linalg.svdvals(weight.detach().to(ct))
            if S_B[0] > 0:
                B0 = B0 * (S_W[0] / S_B[0])
        return A0, B0
    if cfg.scale == "stable":
        zeta = out_f**0.25 / math.sqrt(cfg.stable_gamma)
    elif cfg.scale == "gd":
        zeta = 1.0 / scaling
    elif cfg.scale == "unit":
        zeta = 1.0
    else:
        if weight is None:
            raise ValueError("scale='weightS' needs the layer weight")
        S_W = torch.linalg.svdvals(weight.detach().to(ct))
        zeta = float(torch.sqrt(S_W[:r] / scaling).mean())
    return A0 * zeta, B0 * zeta


def estimate_gradients(
    model: nn.Module,
    target_modules: str | Iterable[str],
    train_step: Callable[[], Any],
) -> dict[str, torch.Tensor]:
    """Average full-weight gradients ``dL/dW`` of the target ``nn.Linear`` layers over ``train_step``.

    ``train_step()`` runs your forward and backward passes (e.g. 2 batches of 2, the reference default);
    the gradient of each target weight is summed over all backward passes that reach it and divided by
    their number (``zero_grad`` calls inside ``train_step`` do not matter). While it runs, only the target
    weights require grad; afterwards every ``requires_grad`` flag, every existing ``.grad`` and every
    buffer (e.g. BatchNorm statistics) is restored, so the model is left exactly as it was.
    """
    if not callable(train_step):
        raise TypeError(f"train_step must be callable, got {type(train_step).__name__}")
    found = find_target_modules(model, target_modules)
    for name, mod in found:
        if not isinstance(mod, nn.Linear):
            raise TypeError(
                f"LoRA-GA supports nn.Linear layers; target module {name!r} is a {type(mod).__name__}"
            )
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    old_grads = [p.grad for p in params]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    sums: dict[str, torch.Tensor | None] = {name: None for name, _ in found}
    counts: dict[str, int] = {name: 0 for name, _ in found}
    handles = []

    def make_hook(name: str) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            g = g.detach()
            prev = sums[name]
            if prev is None:
                sums[name] = g.clone()  # autograd may reuse g as .grad and add into it later
            else:
                prev.add_(g)
            counts[name] += 1

        return hook

    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for name, mod in found:
            mod.weight.requires_grad_(True)
            handles.append(mod.weight.register_hook(make_hook(name)))
        with torch.enable_grad():
            train_step()
    finally:
        for h in handles:
            h.remove()
        for p, flag, g in zip(params, flags, old_grads):
            p.requires_grad_(flag)
            p.grad = g
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    out: dict[str, torch.Tensor] = {}
    for name, _ in found:
        total = sums[name]
        if total is None or counts[name] == 0:
            raise ValueError(f"LoRA-GA: train_step produced no gradient for target module {name!r}")
        G = total / counts[name]
        if not _all_finite(G):
            raise ValueError(f"LoRA-GA: the gradient of target module {name!r} has non-finite entries")
        out[name] = G
    return out
