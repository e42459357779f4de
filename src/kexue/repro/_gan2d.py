"""Shared 2-D GAN harness for the GAN reproductions (specs gan-qp, gradient-normalization, reflow-wgan-gp,
gan-as-diffusion-ode): seeded toy targets, small MLP generator / critic, one training loop for every
objective, and the metrics (sliced Wasserstein-2 with its noise floor, modes covered, high-quality share).

Results are cached per configuration inside the process, so slugs that share a run do not repeat it.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")

import torch
from torch import nn

from kexue.data import eight_gaussian_centres, eight_gaussians, swiss_roll
from kexue.flows.rectified import RectifiedFlow, VelocityMLP
from kexue.losses.gan import (
    gan_qp_critic_loss,
    gan_qp_generator_loss,
    generator_regression_loss,
    gn_bce_critic_loss,
    gn_bce_generator_loss,
    hinge_critic_loss,
    hinge_generator_loss,
    logistic_discriminator_loss,
    monoflow_generator_loss,
    reflow_gan_critic_loss,
    wgan_generator_loss,
    wgan_gp_critic_loss,
)
from kexue.metrics import mode_stats, sliced_wasserstein
from kexue.nn.gradnorm import gradient_normalize
from kexue.repro.base import track

RADIUS = 2.0
STD = 0.05  # absolute std of each of the 8 Gaussians
N_EVAL = 5000

VARIANTS = (
    "gan_qp_l1",
    "gan_qp_l2",
    "wgan_gp",
    "sgan",
    "gn_bce",
    "gran_hinge",
    "gn_direction",
    "reflow_grad",
    "reflow_velocity",
    "monoflow",
    "monoflow_decreasing",
    "monoflow_multi_d",
    "monoflow_multi_regression",
)


def target(dataset: str, n: int, gen: torch.Generator) -> torch.Tensor:
    if dataset == "8gaussians":
        return eight_gaussians(n, gen, radius=RADIUS, std=STD / RADIUS)
    if dataset == "swissroll":
        return swiss_roll(n, gen)
    raise ValueError(f"unknown dataset {dataset!r}")


def mlp(width: int, act: type[nn.Module] | None = None, out: int = 2, depth: int = 3) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = 2
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.LeakyReLU(0.2) if act is None else act()]
        d = width
    layers.append(nn.Linear(d, out))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class GanConfig:
    variant: str
    steps: int = 1000
    seed: int = 0
    dataset: str = "8gaussians"
    width: int = 64
    batch: int = 256
    lr: float = 1e-3
    critic_steps: int | None = None  # default per variant
    lam: float = 10.0  # GAN-QP / WGAN-GP lambda
    h: str = "logit"  # MonoFlow h
    shift: float = 5.0
    gn_eps: float | None = None
    eps: float = 0.05  # regression-form generator step size
    g_substeps: int = 1
    eval_every: int = 0  # 0: only at the end
    ema: float = 0.0  # > 0: evaluate an exponential moving average of the generator's weights


@dataclass
class GanRun:
    config: GanConfig
    samples: torch.Tensor
    swd: float
    modes: float
    high_quality: float
    seconds: float
    ms_per_round: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    generator: nn.Module | None = None
    critic: nn.Module | None = None


DEFAULT_CRITIC_STEPS = {"gan_qp_l1": 2, "gan_qp_l2": 2, "wgan_gp": 5, "reflow_grad": 2, "reflow_velocity": 1}

_CACHE: dict[GanConfig, GanRun] = {}
_FLOOR: dict[tuple[str, int], tuple[torch.Tensor, float]] = {}


def eval_target(dataset: str, seed: int) -> tuple[torch.Tensor, float]:
    """Fresh target samples for evaluation and the SWD noise floor (two independent target sets)."""
    key = (dataset, seed)
    if key not in _FLOOR:
        g = torch.Generator().manual_seed(10_000 + seed)
        a, b = target(dataset, N_EVAL, g), target(dataset, N_EVAL, g)
        _FLOOR[key] = (a, sliced_wasserstein(a, b))
    return _FLOOR[key]


def evaluate(samples: torch.Tensor, dataset: str, seed: int) -> dict[str, float]:
    ref, _ = eval_target(dataset, seed)
    out = {"swd": sliced_wasserstein(samples, ref)}
    if dataset == "8gaussians":
        out.update(mode_stats(samples, eight_gaussian_centres(RADIUS), STD))
    else:
        out.update({"modes": float("nan"), "high_quality": float("nan")})
    return out


class _Parts:
    """The nets and optimisers of one run, plus one training round per variant."""

    def __init__(self, cfg: GanConfig):
        if cfg.variant not in VARIANTS:
            raise ValueError(f"unknown variant {cfg.variant!r}")
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        self.G = mlp(cfg.width, nn.ReLU)
        self.D: nn.Module = (
            VelocityMLP(2, cfg.width, 3) if cfg.variant == "reflow_velocity" else mlp(cfg.width, out=1)
        )
        betas = (0.5, 0.9)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr, betas=betas)
        self.gen = torch.Generator().manual_seed(1_000 + cfg.seed)
        self.n_critic = cfg.critic_steps or DEFAULT_CRITIC_STEPS.get(cfg.variant, 1)
        self.flow = RectifiedFlow(self.D) if cfg.variant == "reflow_velocity" else None
        if not 0.0 <= cfg.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {cfg.ema}")
        self.G_eval = copy.deepcopy(self.G) if cfg.ema > 0 else self.G

    def update_ema(self) -> None:
        if self.G_eval is not self.G:
            with torch.no_grad():
                for pe, p in zip(self.G_eval.parameters(), self.G.parameters()):
                    pe.lerp_(p, 1.0 - self.cfg.ema)

    def z(self, n: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.cfg.batch, 2, generator=self.gen)

    def real(self) -> torch.Tensor:
        return target(self.cfg.dataset, self.cfg.batch, self.gen)

    def d(self, x: torch.Tensor) -> torch.Tensor:
        v = self.cfg.variant
        if v in ("gn_bce", "gn_direction", "gran_hinge"):
            kind = {"gn_bce": "gn", "gn_direction": "direction", "gran_hinge": "gran"}[v]
            return gradient_normalize(self.D, x, kind, eps=self.cfg.gn_eps)
        return self.D(x)

    def critic_loss(self, xr: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        v, cfg = self.cfg.variant, self.cfg
        if v.startswith("gan_qp"):
            dist = "l1" if v.endswith("l1") else "l2"
            return gan_qp_critic_loss(self.D(xr), self.D(xf), xr, xf, lam=cfg.lam, distance=dist)
        if v == "wgan_gp":
            return wgan_gp_critic_loss(self.D, xr, xf, lam=cfg.lam, generator=self.gen)
        if v == "reflow_grad":
            return reflow_gan_critic_loss(self.D, xf, xr, generator=self.gen)
        if v == "reflow_velocity":
            return self.flow.loss(xf, xr, generator=self.gen)
        if v in ("gn_bce", "gn_direction"):
            return gn_bce_critic_loss(self.d(xr), self.d(xf))
        if v == "gran_hinge":
            return hinge_critic_loss(self.d(xr), self.d(xf))
        return logistic_discriminator_loss(self.D(xr), self.D(xf))

    def generator_loss(self, xr: torch.Tensor, xf: torch.Tensor) -> torch.Tensor:
        v, cfg = self.cfg.variant, self.cfg
        if v.startswith("gan_qp"):
            return gan_qp_generator_loss(self.D(xr).detach(), self.D(xf))
        if v in ("wgan_gp", "reflow_grad", "monoflow_multi_d"):
            return wgan_generator_loss(self.D(xf))
        if v in ("gn_bce", "gn_direction"):
            return gn_bce_generator_loss(self.d(xf))
        if v == "gran_hinge":
            return hinge_generator_loss(self.d(xf))
        if v == "sgan":
            return monoflow_generator_loss(self.D(xf), "ns")
        if v == "monoflow":
            return monoflow_generator_loss(self.D(xf), cfg.h, cfg.shift)
        if v == "monoflow_decreasing":
            # control with the decreasing map h(d) = -d (monoflow_h rejects it, so it is written out)
            return self.D(xf).mean()
        raise AssertionError(v)

    def round(self) -> None:
        cfg = self.cfg
        for _ in range(self.n_critic):
            xr = self.real()
            with torch.no_grad():
                xf = self.G(self.z())
            loss = self.critic_loss(xr, xf)
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
        xr = self.real()
        z = self.z()
        if cfg.variant in ("reflow_velocity", "monoflow_multi_regression"):
            x_old = self.G(z).detach()
            if cfg.variant == "reflow_velocity":
                with torch.no_grad():
                    vel = self.flow.velocity(x_old, 0.0)
            else:
                xr_ = x_old.clone().requires_grad_(True)
                (vel,) = torch.autograd.grad(self.D(xr_).sum(), xr_)
            for _ in range(cfg.g_substeps):
                g_out = self.G(z)
                # target fixed at the round's start: x_old + eps v(x_old)
                loss = generator_regression_loss(g_out, (x_old - g_out.detach()) / cfg.eps + vel, cfg.eps)
                self.opt_g.zero_grad(set_to_none=True)
                loss.backward()
                self.opt_g.step()
            return
        for _ in range(cfg.g_substeps):
            loss = self.generator_loss(xr, self.G(z))
            self.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_g.step()

    def sample(self, n: int, seed: int) -> torch.Tensor:
        with torch.no_grad():
            return self.G_eval(torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)))


def train(cfg: GanConfig, description: str | None = None) -> GanRun:
    """Train one configuration (cached per configuration in this process)."""
    if cfg in _CACHE:
        return _CACHE[cfg]
    parts = _Parts(cfg)
    curve: list[tuple[int, float]] = []
    eval_seed = 20_000 + cfg.seed
    t0 = time.perf_counter()
    spent_eval = 0.0
    for step in track(range(1, cfg.steps + 1), description or f"{cfg.variant} ({cfg.steps} steps)"):
        parts.round()
        parts.update_ema()
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == 1):
            te = time.perf_counter()
            curve.append((step, evaluate(parts.sample(N_EVAL, eval_seed), cfg.dataset, cfg.seed)["swd"]))
            spent_eval += time.perf_counter() - te
    seconds = time.perf_counter() - t0 - spent_eval
    samples = parts.sample(N_EVAL, eval_seed)
    m = evaluate(samples, cfg.dataset, cfg.seed)
    run = GanRun(
        config=cfg,
        samples=samples,
        swd=m["swd"] if math.isfinite(m["swd"]) else float("inf"),
        modes=m["modes"],
        high_quality=m["high_quality"],
        seconds=seconds,
        ms_per_round=1000 * seconds / cfg.steps,
        curve=curve,
        generator=parts.G_eval,
        critic=parts.D,
    )
    _CACHE[cfg] = run
    return run


def time_steps(cfg: GanConfig, rounds: int = 50, blocks: int = 5) -> dict[str, float]:
    """Milliseconds per critic step and per generator step, and per round (``critic_steps`` critic steps +
    one generator step). Each is the fastest of ``blocks`` blocks of ``rounds // blocks`` steps (the minimum
    is robust to other processes stealing the CPU)."""
    parts = _Parts(cfg)
    for _ in range(2):
        parts.round()
    xr, xf = parts.real(), parts.G(parts.z()).detach()
    per_block = max(1, rounds // blocks)
    critic_ms = gen_ms = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            loss = parts.critic_loss(xr, xf)
            parts.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            parts.opt_d.step()
        critic_ms = min(critic_ms, 1000 * (time.perf_counter() - t0) / per_block)
        t0 = time.perf_counter()
        for _ in range(per_block):
            loss = parts.generator_loss(xr, parts.G(parts.z()))
            parts.opt_g.zero_grad(set_to_none=True)
            loss.backward()
            parts.opt_g.step()
        gen_ms = min(gen_ms, 1000 * (time.perf_counter() - t0) / per_block)
    return {"critic_ms": critic_ms, "generator_ms": gen_ms, "round_ms": parts.n_critic * critic_ms + gen_ms}


def plot_samples(ax, run: GanRun, title: str, critic: bool = False) -> None:
    """Scatter of generated samples over the target (and the critic's contour if asked)."""
    cfg = run.config
    ref, _ = eval_target(cfg.dataset, cfg.seed)
    lim = 3.0 if cfg.dataset == "8gaussians" else 2.0
    if critic and run.critic is not None and cfg.variant != "reflow_velocity":
        xs = torch.linspace(-lim, lim, 120)
        gx, gy = torch.meshgrid(xs, xs, indexing="xy")
        with torch.no_grad():
            val = run.critic(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)).reshape(120, 120)
        ax.contourf(gx.numpy(), gy.numpy(), val.numpy(), levels=20, cmap="coolwarm", alpha=0.5)
    ax.scatter(ref[:1000, 0], ref[:1000, 1], s=2, c="k", alpha=0.3, label="target")
    s = run.samples[:1000]
    ax.scatter(s[:, 0], s[:, 1], s=2, c="tab:orange", alpha=0.6, label="generated")
    mode_txt = "" if math.isnan(run.modes) else f", {int(run.modes)}/8 modes"
    ax.set_title(f"{title}\nSWD {run.swd:.3f}{mode_txt}", fontsize=8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
