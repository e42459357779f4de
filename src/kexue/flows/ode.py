"""Fixed-step ODE integrators shared by the flows: explicit Euler, Heun (RK2) and classic RK4.

``odeint_fixed(f, x0, t0, t1, steps, method)`` integrates ``dx/dt = f(x, t)`` with ``steps`` equal steps
of size ``h = (t1 - t0) / steps``; ``t`` is passed to ``f`` as a Python float. Euler is
``x + h f(x, t)``; Heun ``x + h/2 (k1 + f(x + h k1, t + h))``; RK4 the usual four-stage rule.
Used by rectified flows (kexue.fm/archives/9497, /9668) and gradient flows (kexue.fm/archives/9660).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["METHODS", "ode_step", "odeint_fixed"]

METHODS = ("euler", "heun", "rk4")

VectorField = Callable[[torch.Tensor, float], torch.Tensor]


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise TypeError(f"steps must be an int, got {type(steps).__name__}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return steps


def _call(f: VectorField, x: torch.Tensor, t: float) -> torch.Tensor:
    v = f(x, t)
    if not isinstance(v, torch.Tensor) or v.shape != x.shape:
        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
        raise ValueError(f"vector field must return the shape of x {tuple(x.shape)}, got {got}")
    return v


def ode_step(f: VectorField, x: torch.Tensor, t: float, h: float, method: str = "euler") -> torch.Tensor:
    """One step of size ``h`` from ``(x, t)``."""
    if method == "euler":
        return x + h * _call(f, x, t)
    if method == "heun":
        k1 = _call(f, x, t)
        k2 = _call(f, x + h * k1, t + h)
        return x + (h / 2) * (k1 + k2)
    if method == "rk4":
        k1 = _call(f, x, t)
        k2 = _call(f, x + (h / 2) * k1, t + h / 2)
        k3 = _call(f, x + (h / 2) * k2, t + h / 2)
        k4 = _call(f, x + h * k3, t + h)
        return x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def odeint_fixed(
    f: VectorField,
    x0: torch.Tensor,
    t0: float,
    t1: float,
    steps: int,
    method: str = "euler",
    return_path: bool = False,
) -> torch.Tensor:
    """Integrate ``dx/dt = f(x, t)`` from ``t0`` to ``t1``; ``x(t1)`` or the path ``[steps + 1, ...]``."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point torch.Tensor, got {type(x0).__name__}")
    steps = _check_steps(steps)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    h = (float(t1) - float(t0)) / steps
    x = x0
    path = [x0] if return_path else None
    for i in range(steps):
        x = ode_step(f, x, float(t0) + i * h, h, method)
        if path is not None:
            path.append(x)
    return torch.stack(path) if path is not None else x
