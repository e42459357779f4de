"""Gradient flows in parameter space: gradient descent as the Euler method of ``dx/dt = -grad f(x)``.

Post: "梯度流:探索通向最小值之路" (2023-06-16, kexue.fm/archives/9660).

* :func:`gradient_flow` integrates ``dx/dt = -grad f(x)`` (Euler or RK4); along the exact flow
  ``df/dt = -||grad f||^2 <= 0``.
* :func:`gradient_descent` is ``x_{k+1} = x_k - alpha grad f(x_k)``: bit-for-bit the Euler method with
  ``dt = alpha`` (both share :func:`descent_step`).
* :func:`proximal_step` solves ``argmin_y ||y - x||^2 / (2 alpha) + f_lin(y)`` (linearised ``f``: the GD step)
  or with the full ``f`` (the implicit / backward-Euler step), numerically with L-BFGS.
* :func:`natural_gradient_step` is ``x - alpha F^{-1} grad f(x)`` (KL penalty to second order, Fisher ``F``).

``f`` is a callable returning a scalar per point (any leading batch dims); ``grad`` may be given instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from kexue.flows.ode import odeint_fixed

__all__ = ["descent_step", "gradient_descent", "gradient_flow", "natural_gradient_step", "proximal_step"]

Fn = Callable[[torch.Tensor], torch.Tensor]


def _grad_fn(f: Fn | None, grad: Fn | None) -> Fn:
    if (f is None) == (grad is None):
        raise ValueError("give exactly one of f (differentiated by autograd) or grad")
    if grad is not None:
        if not callable(grad):
            raise TypeError(f"grad must be callable, got {type(grad).__name__}")
        user = grad
    else:
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")

        def user(x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                (g,) = torch.autograd.grad(f(xr).sum(), xr)
            return g

    def checked(x: torch.Tensor) -> torch.Tensor:
        g = user(x)
        if not isinstance(g, torch.Tensor) or g.shape != x.shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(f"gradient must have the shape of x {tuple(x.shape)}, got {got}")
        if not torch.isfinite(g).all():
            raise ValueError("gradient contains non-finite values")
        return g

    return checked


def _x0(x0: object) -> torch.Tensor:
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point torch.Tensor, got {type(x0).__name__}")
    return x0.detach()


def _positive(name: str, v: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ValueError(f"{name} must be a number > 0, got {v!r}")
    return float(v)


def descent_step(x: torch.Tensor, g: torch.Tensor, alpha: float) -> torch.Tensor:
    """``x - alpha g`` (shared by GD and the Euler step of the flow)."""
    return x - alpha * g


def gradient_flow(
    x0: torch.Tensor,
    t_end: float,
    steps: int,
    *,
    f: Fn | None = None,
    grad: Fn | None = None,
    method: str = "euler",
    return_path: bool = False,
) -> torch.Tensor:
    """Integrate ``dx/dt = -grad f(x)`` from ``x0`` over ``[0, t_end]`` with ``steps`` steps of ``method``."""
    x0 = _x0(x0)
    t_end = _positive("t_end", t_end)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    gfn = _grad_fn(f, grad)
    if method == "euler":
        return gradient_descent(x0, t_end / steps, steps, grad=gfn, return_path=return_path)
    return odeint_fixed(lambda x, t: -gfn(x), x0, 0.0, t_end, steps, method, return_path)


def gradient_descent(
    x0: torch.Tensor,
    lr: float,
    steps: int,
    *,
    f: Fn | None = None,
    grad: Fn | None = None,
    return_path: bool = False,
) -> torch.Tensor:
    """``steps`` iterations of ``x <- x - lr grad f(x)``; returns the last iterate or the whole path."""
    x = _x0(x0)
    lr = _positive("lr", lr)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    gfn = _grad_fn(f, grad)
    path = [x]
    for _ in range(steps):
        x = descent_step(x, gfn(x), lr)
        path.append(x)
    return torch.stack(path) if return_path else x


def proximal_step(
    x: torch.Tensor,
    alpha: float,
    *,
    f: Fn | None = None,
    grad: Fn | None = None,
    linearize: bool = True,
    iters: int = 100,
) -> torch.Tensor:
    """``argmin_y ||y - x||^2 / (2 alpha) + phi(y)`` solved numerically (L-BFGS on ``y``, autograd).

    ``phi(y) = <grad f(x), y - x>`` (``linearize=True``: the exact answer is the GD step
    ``x - alpha grad f(x)``) or ``phi = f`` (``linearize=False``, needs ``f``: the implicit / backward-Euler
    step ``y = x - alpha grad f(y)``). Leading dims of ``x`` are independent problems (objectives summed).
    """
    x = _x0(x)
    alpha = _positive("alpha", alpha)
    if not linearize and f is None:
        raise ValueError("linearize=False needs f (the full objective)")
    gx = _grad_fn(f, grad)(x) if linearize else None
    y = x.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [y],
        lr=1.0,
        max_iter=iters,
        tolerance_grad=1e-14,
        tolerance_change=1e-16,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        phi = (gx * (y - x)).sum() if linearize else f(y).sum()
        obj = (y - x).pow(2).sum() / (2 * alpha) + phi
        obj.backward()
        return obj

    with torch.enable_grad():
        opt.step(closure)
    return y.detach()


def natural_gradient_step(
    x: torch.Tensor, grad: torch.Tensor, fisher: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``x - alpha F^{-1} g`` for parameters ``x`` (``[..., n]``), gradient ``g`` and Fisher ``F``."""
    for name, v in (("x", x), ("grad", grad), ("fisher", fisher)):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor")
    alpha = _positive("alpha", alpha)
    if grad.shape != x.shape or fisher.shape != x.shape + x.shape[-1:]:
        raise ValueError(
            f"shapes must be x [..., n], grad [..., n], fisher [..., n, n]; got {tuple(x.shape)}, "
            f"{tuple(grad.shape)}, {tuple(fisher.shape)}"
        )
    return x - alpha * torch.linalg.solve(fisher, grad.unsqueeze(-1)).squeeze(-1)
