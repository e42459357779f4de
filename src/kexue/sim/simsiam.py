"""Why SimSiam does not collapse: the gradient-flow toy, the loss, the collapse metric, a small trainer.

SimSiam: encoder ``f`` (backbone + projector), predictor ``h``; for two views ``z_i = f(x_i)``,
``p_i = h(z_i)``, ``D(p, z) = -cos(p, z)`` and::

    L = D(p1, stopgrad(z2)) / 2 + D(p2, stopgrad(z1)) / 2          (minimum -1).

With ``L(phi, theta) = E[l(h_phi(f_theta(T1 x)), f_theta(T2 x))]`` gradient flow gives
``dphi/dt = -E[dl/dh dh/dphi]`` and ``dtheta/dt = -E[dl/dh dh/df df/dtheta + dl/df df/dtheta]``; the
stop-gradient deletes the last term, a fast track to collapse. Two-scalar toy, ``l = (phi theta - theta)^2/2``:

* ``"stop_gradient"``: ``phi' = -(phi theta - theta) theta``, ``theta' = -(phi theta - theta) phi``; conserves
  ``theta^2 - phi^2``, so ``phi -> 1`` and ``theta -> sqrt(theta0^2 + 1 - phi0^2)`` (no collapse);
* ``"no_stop_gradient"``: ``theta' = -(phi theta - theta)(phi - 1)``; conserves ``theta^2 - (phi - 1)^2``, so
  ``theta -> 0`` (collapse) and ``phi -> 1 - sqrt((1 - phi0)^2 - theta0^2)``;
* ``"extra_term_only"``: ``theta' = +(phi theta - theta)``; conserves ``theta^2 / 2 + phi``, so ``theta -> 0``
  and ``phi -> phi0 + theta0^2 / 2``.

Collapse metric (SimSiam, Fig. 2): the std over the batch of the l2-normalised output, averaged over
dimensions; about ``1/sqrt(d)`` for a healthy isotropic output and 0 when collapsed.

Post: "从动力学角度看优化算法(六):为什么SimSiam不退化?" (why SimSiam does not collapse), 2020-12-11,
kexue.fm/archives/7980. Papers: Chen & He, "Exploring Simple Siamese Representation Learning" (arXiv
2011.10566); Grill et al., "Bootstrap Your Own Latent" (arXiv 2006.07733).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = [
    "TOY_VARIANTS",
    "SimSiamConfig",
    "SimSiamNet",
    "augment_digits",
    "ema_update",
    "integrate_toy",
    "negative_cosine",
    "simsiam_loss",
    "std_of_l2_normalized",
    "toy_conserved",
    "toy_limits",
    "toy_vector_field",
    "train_simsiam",
]

TOY_VARIANTS = ("stop_gradient", "no_stop_gradient", "extra_term_only")


# --- the two-scalar toy ---------------------------------------------------------------------


def _check_variant(variant: str) -> str:
    if variant not in TOY_VARIANTS:
        raise ValueError(f"unknown toy variant {variant!r}; choose one of {TOY_VARIANTS}")
    return variant


def toy_vector_field(variant: str) -> Callable[[float, np.ndarray], np.ndarray]:
    """``(t, [phi, theta]) -> [phi', theta']`` of the toy gradient flow (see the module docstring)."""
    _check_variant(variant)

    def field(_t: float, y: np.ndarray) -> np.ndarray:
        phi, theta = y
        r = phi * theta - theta  # dl/dh
        dphi = -r * theta
        if variant == "stop_gradient":
            dtheta = -r * phi
        elif variant == "no_stop_gradient":
            dtheta = -r * (phi - 1.0)
        else:
            dtheta = r
        return np.array([dphi, dtheta])

    return field


def toy_conserved(variant: str, phi: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """The conserved quantity of each flow: ``theta^2 - phi^2``, ``theta^2 - (phi-1)^2``, ``theta^2/2 + phi``."""
    _check_variant(variant)
    phi, theta = np.asarray(phi, float), np.asarray(theta, float)
    if variant == "stop_gradient":
        return theta**2 - phi**2
    if variant == "no_stop_gradient":
        return theta**2 - (phi - 1.0) ** 2
    return theta**2 / 2 + phi


def toy_limits(variant: str, phi0: float = 0.6, theta0: float = 0.1) -> tuple[float, float]:
    """Closed-form ``(phi, theta)`` as ``t -> inf`` for ``0 < phi0 < 1``, ``theta0 > 0`` (small enough)."""
    _check_variant(variant)
    if variant == "stop_gradient":
        return 1.0, math.sqrt(theta0**2 + 1.0 - phi0**2)
    if variant == "no_stop_gradient":
        gap = (1.0 - phi0) ** 2 - theta0**2
        if gap < 0:
            raise ValueError(
                f"no finite collapse limit for phi0={phi0}, theta0={theta0} ((1-phi0)^2 < theta0^2)"
            )
        return 1.0 - math.sqrt(gap), 0.0
    return phi0 + theta0**2 / 2, 0.0


def integrate_toy(
    variant: str,
    phi0: float = 0.6,
    theta0: float = 0.1,
    t_end: float = 200.0,
    *,
    n_points: int = 2001,
    rtol: float = 1e-10,
    atol: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integrate the toy flow with an adaptive Runge-Kutta (DOP853); returns ``(t, phi, theta)``."""
    from scipy.integrate import solve_ivp

    if not t_end > 0:
        raise ValueError(f"t_end must be > 0, got {t_end}")
    t_eval = np.linspace(0.0, t_end, n_points)
    sol = solve_ivp(
        toy_vector_field(variant),
        (0.0, t_end),
        [phi0, theta0],
        method="DOP853",
        t_eval=t_eval,
        rtol=rtol,
        atol=atol,
    )
    if not sol.success:
        raise RuntimeError(f"toy ODE integration failed: {sol.message}")
    return sol.t, sol.y[0], sol.y[1]


# --- loss and metric ------------------------------------------------------------------------


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``D(p, z) = -mean_i cos(p_i, z_i)`` over the batch (in ``[-1, 1]``)."""
    if p.shape != z.shape or p.dim() != 2:
        raise ValueError(
            f"p and z must be (batch, dim) with the same shape, got {tuple(p.shape)}, {tuple(z.shape)}"
        )
    return -nn.functional.cosine_similarity(p, z, dim=-1).mean()


def simsiam_loss(
    p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, *, stop_gradient: bool = True
) -> torch.Tensor:
    """Symmetric SimSiam loss ``D(p1, sg(z2))/2 + D(p2, sg(z1))/2``; ``stop_gradient=False`` keeps the target
    branch in the graph (the collapsing ablation). Only the targets ``z`` are detached, never ``p``."""
    if stop_gradient:
        z1, z2 = z1.detach(), z2.detach()
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def std_of_l2_normalized(z: torch.Tensor) -> float:
    """Collapse metric: ``mean_j std_i (z_i / |z_i|)_j`` (std over the batch, unbiased, then mean over dims)."""
    if not isinstance(z, torch.Tensor) or z.dim() != 2:
        raise ValueError(f"z must be a 2-D tensor (batch, dim), got {getattr(z, 'shape', type(z).__name__)}")
    if z.shape[0] < 2:
        raise ValueError(f"the std over the batch needs at least 2 rows, got {z.shape[0]}")
    zn = nn.functional.normalize(z.detach().double(), dim=1)
    return float(zn.std(dim=0).mean())


# --- networks and augmentation --------------------------------------------------------------


def _mlp(sizes: list[int], *, last_bn: bool, last_relu: bool, last_affine: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        has_bn = not last or last_bn
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=not has_bn))
        if has_bn:
            layers.append(nn.BatchNorm1d(sizes[i + 1], affine=last_affine if last else True))
        if not last or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SimSiamNet(nn.Module):
    """Backbone MLP ``in-256-256`` (BN, ReLU), projector ``256-256-out`` (BN after every linear; the last BN has
    no ReLU and ``affine=last_bn_affine``), predictor ``out-hidden-out`` (BN + ReLU on the hidden layer only)."""

    def __init__(
        self,
        in_dim: int = 64,
        hidden: int = 256,
        out_dim: int = 64,
        pred_hidden: int = 32,
        *,
        predictor: bool = True,
        last_bn_affine: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = _mlp([in_dim, hidden, hidden], last_bn=True, last_relu=True)
        self.projector = _mlp(
            [hidden, hidden, out_dim], last_bn=True, last_relu=False, last_affine=last_bn_affine
        )
        self.predictor = (
            _mlp([out_dim, pred_hidden, out_dim], last_bn=False, last_relu=False) if predictor else None
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.predictor is None else self.predictor(z)


def augment_digits(
    x: torch.Tensor, generator: torch.Generator, *, drop: float = 0.2, noise: float = 0.1
) -> torch.Tensor:
    """One random view of 8x8 digits ``x (B, 64)`` or ``(B, 1, 8, 8)``: shift by up to 1 pixel (pad 1, random
    8x8 crop), drop pixels with probability ``drop``, add Gaussian noise of std ``noise``. Returns ``(B, 64)``."""
    if x.dim() == 4:
        x = x.reshape(x.shape[0], -1)
    if x.dim() != 2 or x.shape[1] != 64:
        raise ValueError(f"digits must be (batch, 64) or (batch, 1, 8, 8), got {tuple(x.shape)}")
    b = x.shape[0]
    padded = nn.functional.pad(x.reshape(b, 8, 8), (1, 1, 1, 1))
    oy = torch.randint(0, 3, (b,), generator=generator)
    ox = torch.randint(0, 3, (b,), generator=generator)
    ar = torch.arange(8)
    rows = (ar[None, :, None] + oy[:, None, None]).expand(b, 8, 8)
    cols = (ar[None, None, :] + ox[:, None, None]).expand(b, 8, 8)
    view = padded[torch.arange(b)[:, None, None], rows, cols].reshape(b, 64)
    keep = (torch.rand(b, 64, generator=generator) >= drop).to(view.dtype)
    return view * keep + noise * torch.randn(b, 64, generator=generator)


# --- training -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SimSiamConfig:
    """One SimSiam variant: stop-gradient on/off, predictor on/off, predictor lr scale, BYOL EMA rate ``tau``
    (0 = SimSiam: the target is the online encoder), and the paper's optimiser settings."""

    stop_gradient: bool = True
    predictor: bool = True
    pred_lr_scale: float = 1.0
    fix_pred_lr: bool = True
    ema_tau: float = 0.0
    steps: int = 780
    batch: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    last_bn_affine: bool = False
    hidden: int = 256
    out_dim: int = 64
    pred_hidden: int = 32

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_tau < 1.0:
            raise ValueError(f"ema_tau must be in [0, 1), got {self.ema_tau}")
        if self.steps < 1 or self.batch < 2:
            raise ValueError(f"steps must be >= 1 and batch >= 2, got {self.steps}, {self.batch}")
        if not self.pred_lr_scale > 0:
            raise ValueError(f"pred_lr_scale must be > 0, got {self.pred_lr_scale}")
        if self.ema_tau > 0 and not self.stop_gradient:
            raise ValueError(
                "an EMA target (ema_tau > 0) is always outside the graph; use stop_gradient=True"
            )


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """BYOL target update ``target <- tau * target + (1 - tau) * online`` (buffers copied); ``tau = 0`` makes the
    target a copy of the online network, i.e. SimSiam."""
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    for pt, po in zip(target.parameters(), online.parameters(), strict=True):
        pt.mul_(tau).add_(po, alpha=1.0 - tau)
    for bt, bo in zip(target.buffers(), online.buffers(), strict=True):
        bt.copy_(bo)


def _batches(n: int, batch: int, generator: torch.Generator) -> Iterable[torch.Tensor]:
    while True:
        perm = torch.randperm(n, generator=generator)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def train_simsiam(
    x_train: torch.Tensor,
    config: SimSiamConfig,
    *,
    seed: int = 0,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[SimSiamNet, list[float]]:
    """Train :class:`SimSiamNet` on flattened digits ``x_train (N, 64)``; returns ``(model, loss per step)``.

    SGD with momentum and weight decay, cosine learning-rate decay over ``config.steps`` (the predictor's rate
    stays constant when ``fix_pred_lr``). With ``ema_tau > 0`` the targets come from an EMA copy of the
    encoder (BYOL); ``ema_tau = 0`` is SimSiam.
    """
    if x_train.dim() != 2 or x_train.shape[1] != 64:
        raise ValueError(f"x_train must be (N, 64) flattened digits, got {tuple(x_train.shape)}")
    if x_train.shape[0] < config.batch:
        raise ValueError(f"need at least batch={config.batch} training images, got {x_train.shape[0]}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = SimSiamNet(
        64,
        config.hidden,
        config.out_dim,
        config.pred_hidden,
        predictor=config.predictor,
        last_bn_affine=config.last_bn_affine,
    )
    target = copy.deepcopy(model) if config.ema_tau > 0 else None
    enc_params = list(model.backbone.parameters()) + list(model.projector.parameters())
    groups = [{"params": enc_params, "lr": config.lr, "fixed": False}]
    if model.predictor is not None:
        groups.append(
            {
                "params": list(model.predictor.parameters()),
                "lr": config.lr * config.pred_lr_scale,
                "fixed": config.fix_pred_lr,
            }
        )
    opt = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    base = [grp["lr"] for grp in opt.param_groups]
    losses: list[float] = []
    batches = _batches(x_train.shape[0], config.batch, g)
    model.train()
    for step in range(config.steps):
        scale = 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
        for grp, lr0 in zip(opt.param_groups, base):
            grp["lr"] = lr0 if grp["fixed"] else lr0 * scale
        xb = x_train[next(batches)]
        v1, v2 = augment_digits(xb, g), augment_digits(xb, g)
        z1, z2 = model.encode(v1), model.encode(v2)
        p1, p2 = model.predict(z1), model.predict(z2)
        if target is not None:
            with torch.no_grad():
                z1, z2 = target.encode(v1), target.encode(v2)
        loss = simsiam_loss(p1, p2, z1, z2, stop_gradient=config.stop_gradient)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if target is not None:
            ema_update(target, model, config.ema_tau)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return model, losses
