"""Rectified flow (ReFlow): straight-line flow matching, ODE sampling, reflow re-pairing, straightness.

Posts: "生成扩散模型漫谈(十七):构建ODE的一般步骤(下)" (2023-02-23, kexue.fm/archives/9497) and
"生成扩散模型漫谈(二十):从ReFlow到WGAN-GP" (2023-06-28, kexue.fm/archives/9668); paper: Liu, Gong, Liu,
"Flow Straight and Fast" (ICLR 2023).

Convention: ``x0 ~ p0`` (noise / prior), ``x1 ~ p1`` (data), ``t`` runs from 0 (noise) to 1 (data).

* path ``x_t = (1 - t) x0 + t x1``, target velocity ``x1 - x0``, ``t ~ U[0, 1]`` per example;
* loss ``E || v(x_t, t) - (x1 - x0) ||^2`` (squared norm over features, mean over the batch);
* sampler: integrate ``dx/dt = v(x, t)`` from 0 to 1 (Euler, Heun or RK4 with ``steps`` steps);
* reflow: ``z1 = ODE(z0)`` gives a deterministic coupling ``(z0, z1)`` to train the next flow on;
* straightness ``S = int_0^1 E || (X1 - X0) - v(X_t, t) ||^2 dt`` along the flow's own trajectories
  (0 for straight paths).

For ``p0 = N(0, I)`` and ``p1 = N(mu, s^2 I)`` (independent coupling) the optimal velocity is known in
closed form (:func:`gaussian_oracle_velocity`) and its flow maps each ``x0`` to ``mu + s x0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from kexue.flows.ode import METHODS, odeint_fixed

__all__ = ["RectifiedFlow", "VelocityMLP", "gaussian_oracle_velocity", "straightness"]

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class VelocityMLP(nn.Module):
    """``v(x, t)``: an MLP on ``[x, t]`` (``t`` of shape ``[B, 1]``) with SiLU activations."""

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3):
        super().__init__()
        for name, v in (("dim", dim), ("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        layers: list[nn.Module] = []
        width = dim + 1
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.expand(x.shape[0], 1).to(x.dtype)], dim=1))


def _pair(x0: torch.Tensor, x1: torch.Tensor) -> None:
    for name, v in (("x0", x0), ("x1", x1)):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {type(v).__name__}")
    if x0.shape != x1.shape or x0.ndim != 2:
        raise ValueError(
            f"x0 and x1 must have the same shape [B, dim], got {tuple(x0.shape)} and {tuple(x1.shape)}"
        )


class RectifiedFlow:
    """A rectified flow around a velocity network ``v(x, t)`` (``x`` ``[B, dim]``, ``t`` ``[B, 1]``)."""

    def __init__(self, velocity_net: Velocity):
        if not callable(velocity_net):
            raise TypeError(f"velocity_net must be callable, got {type(velocity_net).__name__}")
        self.velocity_net = velocity_net

    def velocity(self, x: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """``v(x, t)`` with ``t`` a float or a tensor broadcastable to ``[B, 1]``."""
        if not isinstance(t, torch.Tensor):
            t = torch.tensor(float(t), dtype=x.dtype)
        t = t.to(x.dtype).reshape(-1, 1).expand(x.shape[0], 1)
        v = self.velocity_net(x, t)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity_net must return the shape of x {tuple(x.shape)}, got {got}")
        return v

    @staticmethod
    def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target) = ((1 - t) x0 + t x1, x1 - x0)`` for ``t`` of shape ``[B, 1]``."""
        return (1 - t) * x0 + t * x1, x1 - x0

    def loss(
        self,
        x0: torch.Tensor,
        x1: torch.Tensor,
        t: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        return_parts: bool = False,
    ):
        """Rectified-flow loss ``mean_i || v(x_t, t_i) - (x1_i - x0_i) ||^2`` on paired batches.

        ``t`` (shape ``[B]`` or ``[B, 1]``, values in ``[0, 1]``) defaults to ``U[0, 1]`` per example drawn
        from ``generator``. With ``return_parts=True`` returns ``(loss, (t, x_t, target))``.
        """
        _pair(x0, x1)
        b = x0.shape[0]
        if t is None:
            t = torch.rand(b, 1, generator=generator, dtype=x0.dtype, device=x0.device)
        else:
            if not isinstance(t, torch.Tensor) or t.numel() != b:
                raise ValueError(f"t must be a tensor with one value per example ({b})")
            t = t.reshape(b, 1).to(x0.dtype)
            if (t < 0).any() or (t > 1).any():
                raise ValueError(f"t must lie in [0, 1], got range [{float(t.min())}, {float(t.max())}]")
        x_t, target = self.interpolate(x0, x1, t)
        loss = (self.velocity(x_t, t) - target).pow(2).sum(dim=1).mean()
        if return_parts:
            return loss, (t, x_t, target)
        return loss

    def sample(
        self, x0: torch.Tensor, steps: int = 100, method: str = "euler", return_path: bool = False
    ) -> torch.Tensor:
        """Integrate ``dx/dt = v(x, t)`` from ``t = 0`` to ``1`` without gradient; optionally the path."""
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        with torch.no_grad():
            return odeint_fixed(self.velocity, x0, 0.0, 1.0, steps, method, return_path)

    def reflow_pairs(
        self, x0: torch.Tensor, steps: int = 100, method: str = "euler"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The coupling ``(x0, ODE(x0))`` to train the next (k+1)-rectified flow on; ``x0`` is kept."""
        return x0, self.sample(x0, steps, method)


def straightness(
    flow: RectifiedFlow | Velocity, x0: torch.Tensor, steps: int = 100, method: str = "euler"
) -> float:
    """``S = int_0^1 E || (X1 - X0) - v(X_t, t) ||^2 dt`` along the flow's trajectories from ``x0``.

    The path is integrated with ``steps`` steps of ``method``; the time integral is the left Riemann sum
    over the same grid. Returns 0 for a velocity field that is constant along each trajectory.
    """
    if not isinstance(flow, RectifiedFlow):
        flow = RectifiedFlow(flow)
    path = flow.sample(x0, steps, method, return_path=True)
    x_start, x_end = path[0], path[-1]
    total = 0.0
    with torch.no_grad():
        for i in range(steps):
            v = flow.velocity(path[i], i / steps)
            total += float((x_end - x_start - v).pow(2).sum(dim=1).mean())
    return total / steps


def gaussian_oracle_velocity(mu: torch.Tensor, s: float) -> Velocity:
    """Optimal straight-path velocity for ``p0 = N(0, I)`` -> ``p1 = N(mu, s^2 I)`` (independent pairs):

    ``v*(x, t) = mu + (t s^2 - (1 - t)) / ((1 - t)^2 + t^2 s^2) * (x - t mu)``.
    """
    if not isinstance(mu, torch.Tensor) or mu.ndim != 1:
        raise ValueError("mu must be a 1-D tensor")
    if not s > 0:
        raise ValueError(f"s must be > 0, got {s}")

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.to(x.dtype)
        m = mu.to(x.dtype)
        coef = (t * s * s - (1 - t)) / ((1 - t) ** 2 + t * t * s * s)
        return m + coef * (x - t * m)

    return v
