"""Gradient-normalised critics: GN-GAN and GraN-GAN.

Post: "WGAN新方案:通过梯度归一化来实现L约束" (2021-11-15, kexue.fm/archives/8757); papers: Wu et al.,
"Gradient Normalization for GANs" (ICCV 2021) and Bhaskara et al., "GraN-GAN" (WACV 2022).

With the raw critic ``f(x)`` and ``g(x) = grad_x f(x)`` (per sample, flattened over all non-batch dims):

* ``"gn"``:          ``f_hat = f / (||g|| + |f| + eps)``  (``eps = 0`` by default, the official form);
* ``"gran"``:        ``f_hat = f ||g|| / (||g||^2 + eps)`` (``eps = 1e-8`` by default);
* ``"gran_simple"``: ``f_hat = f / (||g|| + eps)``;
* ``"direction"``:   ``f_hat = <g / ||g||, x>``, the post's "equivalent" variant (which trains badly).

All are multiplied by ``k`` (GraN's Lipschitz constant). For a piecewise-linear critic (ReLU / LeakyReLU,
no normalisation layers) ``||g||`` is constant inside each linear region, so there
``||grad f_hat|| = ||g||^2 / (||g|| + |f|)^2 <= 1`` (GN) and ``||g||^2 / (||g||^2 + eps) < 1`` (GraN), and GN
is bounded in ``[-1, 1]``. Across region boundaries ``f_hat`` jumps (the post's objection): the bound is
piecewise, not global. The gradient is built with ``create_graph=True`` so that both the critic's
parameters (critic step) and the generator (generator step) receive gradients through ``||g||``.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GradientNormalizedCritic", "gradient_normalize"]

_VARIANTS = ("gn", "gran", "gran_simple", "direction")
_DEFAULT_EPS = {"gn": 0.0, "gran": 1e-8, "gran_simple": 1e-8, "direction": 1e-12}


def gradient_normalize(
    critic: nn.Module | object,
    x: torch.Tensor,
    variant: str = "gn",
    eps: float | None = None,
    k: float = 1.0,
    return_parts: bool = False,
):
    """Evaluate the gradient-normalised critic ``f_hat(x)`` (see the module docstring for the variants).

    ``critic(x)`` must return one score per sample (``[B]`` or ``[B, 1]``); ``f_hat`` has the same shape.
    ``x`` may be a leaf without gradient (real data) or a generator output (kept in the graph).
    With ``return_parts=True`` returns ``(f_hat, f, grad_norm)``.
    """
    if not callable(critic):
        raise TypeError(f"critic must be callable, got {type(critic).__name__}")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    eps = _DEFAULT_EPS[variant] if eps is None else eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
        raise ValueError(f"k must be a number > 0, got {k!r}")

    if not x.requires_grad:
        x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        f = critic(x)
        if not isinstance(f, torch.Tensor):
            raise TypeError(f"critic must return a tensor, got {type(f).__name__}")
        b = x.shape[0]
        if tuple(f.shape) not in ((b,), (b, 1)):
            raise ValueError(
                f"critic must return one score per sample, shape [{b}] or [{b}, 1]; got {tuple(f.shape)}"
            )
        (g,) = torch.autograd.grad(f.sum(), x, create_graph=True)
    # sqrt(s + tiny) keeps the derivative finite at g = 0 (dead ReLU regions) without changing values.
    gnorm = (g.reshape(b, -1).pow(2).sum(dim=1) + 1e-30).sqrt()
    flat = f.reshape(b)
    if variant == "gn":
        out = flat / (gnorm + flat.abs() + eps)
    elif variant == "gran":
        out = flat * gnorm / (gnorm.pow(2) + eps)
    elif variant == "gran_simple":
        out = flat / (gnorm + eps)
    else:
        out = (g.reshape(b, -1) * x.reshape(b, -1)).sum(dim=1) / (gnorm + eps)
    out = (k * out).reshape(f.shape)
    if return_parts:
        return out, f, gnorm
    return out


class GradientNormalizedCritic(nn.Module):
    """Wrap a critic so that ``forward(x)`` returns :func:`gradient_normalize` ``(critic, x, ...)``."""

    def __init__(self, critic: nn.Module, variant: str = "gn", eps: float | None = None, k: float = 1.0):
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if eps is not None and (isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0):
            raise ValueError(f"eps must be a number >= 0, got {eps!r}")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ValueError(f"k must be a number > 0, got {k!r}")
        self.critic = critic
        self.variant = variant
        self.eps = eps
        self.k = float(k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gradient_normalize(self.critic, x, self.variant, self.eps, self.k)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, eps={self.eps}, k={self.k}"
