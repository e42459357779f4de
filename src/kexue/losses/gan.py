"""GAN objectives as plain functions of critic / discriminator outputs (and, where needed, of the critic).

GAN-QP — "不用L约束又不会梯度消失的GAN,了解一下?" (2018-11-20, kexue.fm/archives/6163).
    With ``dT = T(x_r) - T(x_f)`` on paired real/fake samples and a distance ``d(x_r, x_f)``:
    critic   ``min  E[ -dT + dT^2 / (2 lambda d) ]``   (:func:`gan_qp_critic_loss`),
    generator ``min E[ dT ]``                          (:func:`gan_qp_generator_loss`, no quadratic term).
    On a finite support the optimal critic gives
    ``QP[p, q] = (lambda / 4) sum_ij d_ij (a_ij - b_ij)^2 / (a_ij + b_ij)``, ``a_ij = p_i q_j``,
    ``b_ij = p_j q_i`` (:func:`qp_divergence_discrete`); for two point masses it is ``lambda d / 2``.

WGAN-GP reference — critic ``E[T(x_f)] - E[T(x_r)] + lambda E[(||grad T(x_hat)|| - 1)^2]`` on random
    interpolates ``x_hat`` (:func:`wgan_gp_critic_loss`, :func:`gradient_penalty`), generator ``-E[T(x_f)]``.

ReFlow-derived GAN — "生成扩散模型漫谈(二十):从ReFlow到WGAN-GP" (2023-06-28, kexue.fm/archives/9668).
    With ``v = grad D`` the rectified-flow loss becomes
    ``L_D = E[0.5 ||grad D(x_t)||^2] - E[D(x_1)] + E[D(x_0)]``, ``x_t = (1 - t) x_0 + t x_1`` (fake ``x_0``,
    real ``x_1``): WGAN with a zero-centred gradient penalty of weight 1/2 (:func:`reflow_gan_critic_loss`).

MonoFlow — "生成扩散模型漫谈(十九):作为扩散ODE的GAN" (2023-06-24, kexue.fm/archives/9662).
    Logistic discriminator ``softplus(-D(x_r)) + softplus(D(x_f))`` (optimum ``D* = log p/q``) and any
    generator loss ``-E[h(D(G(z)))]`` with ``h`` increasing (:func:`monoflow_generator_loss`); one step of
    the regression form ``E||g - stopgrad(g + eps v)||^2`` equals ``2 eps`` times a step on ``-E[D(g)]``
    when ``v = grad D`` (:func:`generator_regression_loss`).

Gradient-normalised critics (GN-GAN / GraN-GAN, kexue.fm/archives/8757) are in
:mod:`kexue.nn.gradnorm`; their official losses are :func:`gn_bce_critic_loss`, :func:`hinge_critic_loss`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "antisymmetric_difference",
    "gan_qp_critic_loss",
    "gan_qp_generator_loss",
    "generator_regression_loss",
    "gn_bce_critic_loss",
    "gn_bce_generator_loss",
    "gradient_penalty",
    "hinge_critic_loss",
    "hinge_generator_loss",
    "logistic_discriminator_loss",
    "monoflow_generator_loss",
    "monoflow_h",
    "pair_distance",
    "qp_divergence_discrete",
    "qp_optimal_critic_discrete",
    "reflow_gan_critic_loss",
    "wgan_critic_loss",
    "wgan_generator_loss",
    "wgan_gp_critic_loss",
]

Critic = Callable[[torch.Tensor], torch.Tensor]


# --- validation helpers ---------------------------------------------------------------------------


def _tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _scores(name: str, t: object) -> torch.Tensor:
    """Critic outputs: one scalar per sample, shape ``[B]`` or ``[B, 1]`` -> ``[B]``."""
    t = _tensor(name, t)
    if t.ndim == 2 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim != 1 or t.shape[0] < 1:
        raise ValueError(f"{name} must hold one score per sample, shape [B] or [B, 1]; got {tuple(t.shape)}")
    return t


def _finite(name: str, t: torch.Tensor) -> torch.Tensor:
    if not torch.isfinite(t.detach()).all():
        raise ValueError(f"{name} contains non-finite values")
    return t


def _same_batch(**tensors: torch.Tensor) -> int:
    sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"batch sizes must match, got {sizes}")
    return next(iter(sizes.values()))


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _samples_pair(x_real: torch.Tensor, x_fake: torch.Tensor) -> None:
    _tensor("x_real", x_real)
    _tensor("x_fake", x_fake)
    if x_real.shape != x_fake.shape or x_real.ndim < 1:
        raise ValueError(
            f"x_real and x_fake must have the same shape [B, ...], got {tuple(x_real.shape)} and "
            f"{tuple(x_fake.shape)}"
        )


# --- GAN-QP ---------------------------------------------------------------------------------------


def pair_distance(
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    distance: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "l1",
    reduce_dims: str = "mean",
) -> torch.Tensor:
    """Per-pair distance ``d(x_real[i], x_fake[i])`` over all non-batch dims, shape ``[B]``.

    ``"l1"``: ``mean|.|`` (``reduce_dims="mean"``, as in the official GAN-QP code) or ``sum|.|``;
    ``"l2"``: ``sqrt(mean (.)^2)`` or the Euclidean norm. A callable gets the two batches and returns ``[B]``.
    """
    _samples_pair(x_real, x_fake)
    if reduce_dims not in ("mean", "sum"):
        raise ValueError(f"reduce_dims must be 'mean' or 'sum', got {reduce_dims!r}")
    b = x_real.shape[0]
    if callable(distance):
        d = distance(x_real, x_fake)
        if not isinstance(d, torch.Tensor) or tuple(d.shape) not in ((b,), (b, 1)):
            got = tuple(d.shape) if isinstance(d, torch.Tensor) else type(d).__name__
            raise ValueError(f"distance callable must return shape [{b}], got {got}")
        return d.reshape(b)
    diff = (x_real - x_fake).reshape(b, -1)
    red = torch.mean if reduce_dims == "mean" else torch.sum
    if distance == "l1":
        return red(diff.abs(), dim=1)
    if distance == "l2":
        return red(diff.pow(2), dim=1).sqrt()
    raise ValueError(f"distance must be 'l1', 'l2' or a callable, got {distance!r}")


def gan_qp_critic_loss(
    t_real: torch.Tensor,
    t_fake: torch.Tensor,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    lam: float = 10.0,
    distance: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "l1",
    reduce_dims: str = "mean",
    eps: float = 1e-8,
) -> torch.Tensor:
    """GAN-QP critic loss ``mean_i[ -dT_i + dT_i^2 / (2 lam d_i) ]``, ``dT_i = t_real[i] - t_fake[i]``.

    ``d_i = pair_distance(x_real[i], x_fake[i]) + eps`` is the distance of the *paired* samples (same batch
    index). Pass ``x_fake`` detached in the critic step. Scores of shape ``[B]`` or ``[B, 1]`` are flattened
    before use (the official code's ``[B, 1]`` vs ``[B]`` broadcast to ``[B, B]`` cannot happen here).
    """
    t_real, t_fake = _scores("t_real", t_real), _scores("t_fake", t_fake)
    _samples_pair(x_real, x_fake)
    _same_batch(t_real=t_real, t_fake=t_fake, x_real=x_real, x_fake=x_fake)
    lam = _positive("lam", lam)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    d = _finite("distance", pair_distance(x_real, x_fake, distance, reduce_dims).detach()) + eps
    if (d <= 0).any():
        raise ValueError("pair distances must be > 0 (identical pairs need eps > 0)")
    dt = t_real - t_fake
    return (-dt + dt.pow(2) / (2 * lam * d)).mean()


def gan_qp_generator_loss(t_real: torch.Tensor, t_fake: torch.Tensor) -> torch.Tensor:
    """GAN-QP generator loss ``mean(t_real - t_fake)`` (only ``t_fake`` carries gradient to G)."""
    t_real, t_fake = _scores("t_real", t_real), _scores("t_fake", t_fake)
    _same_batch(t_real=t_real, t_fake=t_fake)
    return (t_real - t_fake).mean()


def antisymmetric_difference(
    critic: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_real: torch.Tensor, x_fake: torch.Tensor
) -> torch.Tensor:
    """``dT = T(x_r, x_f) - T(x_f, x_r)`` for a binary critic, shape ``[B]``; antisymmetric."""
    _samples_pair(x_real, x_fake)
    a = _scores("critic(x_real, x_fake)", critic(x_real, x_fake))
    b = _scores("critic(x_fake, x_real)", critic(x_fake, x_real))
    _same_batch(x_real=x_real, forward=a, backward=b)
    return a - b


def _discrete_inputs(
    p: torch.Tensor, q: torch.Tensor, dist_matrix: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    p, q, dist_matrix = _tensor("p", p), _tensor("q", q), _tensor("dist_matrix", dist_matrix)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"p and q must be 1-D of equal length, got {tuple(p.shape)} and {tuple(q.shape)}")
    n = p.shape[0]
    if dist_matrix.shape != (n, n):
        raise ValueError(f"dist_matrix must have shape ({n}, {n}), got {tuple(dist_matrix.shape)}")
    for name, v in (("p", p), ("q", q)):
        if (v < 0).any() or abs(float(v.sum()) - 1.0) > 1e-6:
            raise ValueError(
                f"{name} must be a probability vector (>= 0, sums to 1), sum is {float(v.sum())}"
            )
    off = ~torch.eye(n, dtype=torch.bool)
    if (dist_matrix[off] <= 0).any() or not torch.isfinite(dist_matrix).all():
        raise ValueError("dist_matrix must be finite and > 0 off the diagonal")
    return p, q, dist_matrix


def qp_optimal_critic_discrete(
    p: torch.Tensor, q: torch.Tensor, dist_matrix: torch.Tensor, lam: float = 10.0
) -> torch.Tensor:
    """Optimal tabular critic ``dT*_ij = lam d_ij (a_ij - b_ij) / (a_ij + b_ij)`` (0 where both are 0).

    ``a_ij = p_i q_j``, ``b_ij = p_j q_i``. It satisfies ``|dT*_ij| <= lam d_ij`` and ``dT*_ji = -dT*_ij``.
    """
    p, q, d = _discrete_inputs(p, q, dist_matrix)
    lam = _positive("lam", lam)
    a = p[:, None] * q[None, :]
    b = p[None, :] * q[:, None]
    s = a + b
    ratio = torch.where(s > 0, (a - b) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    return lam * d * ratio


def qp_divergence_discrete(
    p: torch.Tensor, q: torch.Tensor, dist_matrix: torch.Tensor, lam: float = 10.0
) -> torch.Tensor:
    """Closed-form ``QP[p, q] = (lam / 4) sum_ij d_ij (a_ij - b_ij)^2 / (a_ij + b_ij)`` on a finite support.

    This is the maximum over antisymmetric ``dT`` of ``sum_ij p_i q_j (dT_ij - dT_ij^2 / (2 lam d_ij))``.
    """
    p, q, d = _discrete_inputs(p, q, dist_matrix)
    lam = _positive("lam", lam)
    a = p[:, None] * q[None, :]
    b = p[None, :] * q[:, None]
    s = a + b
    term = torch.where(s > 0, (a - b).pow(2) / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
    off = ~torch.eye(p.shape[0], dtype=torch.bool)
    return lam / 4 * (d * term)[off].sum()


# --- WGAN / WGAN-GP ---------------------------------------------------------------------------------


def wgan_critic_loss(t_real: torch.Tensor, t_fake: torch.Tensor) -> torch.Tensor:
    """WGAN critic loss ``mean(t_fake) - mean(t_real)``."""
    t_real, t_fake = _scores("t_real", t_real), _scores("t_fake", t_fake)
    return t_fake.mean() - t_real.mean()


def wgan_generator_loss(t_fake: torch.Tensor) -> torch.Tensor:
    """WGAN generator loss ``-mean(t_fake)``."""
    return -_scores("t_fake", t_fake).mean()


def _interpolates(
    x_a: torch.Tensor, x_b: torch.Tensor, t: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    """``(1 - t) x_a + t x_b`` with one ``t ~ U[0, 1]`` per sample (or the given ``t`` of shape ``[B]``)."""
    b = x_a.shape[0]
    if t is None:
        t = torch.rand(b, generator=generator, dtype=x_a.dtype, device=x_a.device)
    else:
        t = _tensor("t", t).reshape(-1)
        if t.shape[0] != b:
            raise ValueError(f"t must have one value per sample ({b}), got shape {tuple(t.shape)}")
        if (t < 0).any() or (t > 1).any():
            raise ValueError("t must lie in [0, 1]")
    t = t.reshape((b,) + (1,) * (x_a.ndim - 1)).to(x_a.dtype)
    return ((1 - t) * x_a.detach() + t * x_b.detach()).requires_grad_(True)


def _input_grad(critic: Critic, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = _scores("critic(x)", critic(x))
    _same_batch(x=x, scores=out)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=torch.is_grad_enabled())
    return out, g.reshape(x.shape[0], -1)


def gradient_penalty(
    critic: Critic,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    center: float = 1.0,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``mean[(||grad_x critic(x_hat)|| - center)^2]`` on per-sample interpolates ``x_hat``.

    The norm is over all non-batch dims. ``center=1`` is WGAN-GP's penalty, ``center=0`` the zero-centred
    one (computed as the squared norm, so it is differentiable at ``g = 0``). Built with
    ``create_graph=True`` so the critic's parameters get gradients through it.
    """
    _samples_pair(x_real, x_fake)
    if center < 0:
        raise ValueError(f"center must be >= 0, got {center}")
    x_hat = _interpolates(x_fake, x_real, t, generator)
    _, g = _input_grad(critic, x_hat)
    sq = g.pow(2).sum(dim=1)
    if center == 0:
        return sq.mean()
    return ((sq + 1e-12).sqrt() - center).pow(2).mean()


def _critic_plus_penalty(
    critic: Critic,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    center: float,
    weight: float,
    t: torch.Tensor | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``E[T(x_f)] - E[T(x_r)] + weight * penalty`` with one critic call on ``[x_r; x_f; x_hat]``.

    One batched forward pass instead of three (the critic must not couple samples, e.g. no BatchNorm in
    train mode, which gradient penalties exclude anyway).
    """
    _samples_pair(x_real, x_fake)
    b = x_real.shape[0]
    x_hat = _interpolates(x_fake, x_real, t, generator)
    out = _scores("critic(x)", critic(torch.cat([x_real.detach(), x_fake.detach(), x_hat])))
    if out.shape[0] != 3 * b:
        raise ValueError(f"critic must return one score per sample ({3 * b}), got {out.shape[0]}")
    t_real, t_fake, t_hat = out[:b], out[b : 2 * b], out[2 * b :]
    (g,) = torch.autograd.grad(t_hat.sum(), x_hat, create_graph=torch.is_grad_enabled())
    sq = g.reshape(b, -1).pow(2).sum(dim=1)
    penalty = sq.mean() if center == 0 else ((sq + 1e-12).sqrt() - center).pow(2).mean()
    return t_fake.mean() - t_real.mean() + weight * penalty


def wgan_gp_critic_loss(
    critic: Critic,
    x_real: torch.Tensor,
    x_fake: torch.Tensor,
    lam: float = 10.0,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP critic loss ``E[T(x_f)] - E[T(x_r)] + lam E[(||grad T(x_hat)|| - 1)^2]`` (fakes detached)."""
    lam = _positive("lam", lam)
    return _critic_plus_penalty(critic, x_real, x_fake, 1.0, lam, t, generator)


def reflow_gan_critic_loss(
    critic: Critic,
    x_fake: torch.Tensor,
    x_real: torch.Tensor,
    gp_weight: float = 0.5,
    t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ReFlow-derived critic loss ``gp_weight E||grad D(x_t)||^2 - E[D(x_real)] + E[D(x_fake)]``.

    ``x_t = (1 - t) x_fake + t x_real`` with ``t ~ U[0, 1]`` per sample (the fake batch is the ODE start
    ``x_0``). ``gp_weight=0.5`` is the value implied by the rectified-flow loss.
    """
    gp_weight = _positive("gp_weight", gp_weight)
    return _critic_plus_penalty(critic, x_real, x_fake, 0.0, gp_weight, t, generator)


# --- gradient-normalised critics: official GN-GAN losses -------------------------------------------


def gn_bce_critic_loss(f_real: torch.Tensor, f_fake: torch.Tensor, clamp: float = 1e-7) -> torch.Tensor:
    """GN-GAN ``bce`` loss: ``BCE((f_real + 1)/2, 1) + BCE((f_fake + 1)/2, 0)`` for ``f`` in ``[-1, 1]``."""
    f_real, f_fake = _scores("f_real", f_real), _scores("f_fake", f_fake)
    pr = ((f_real + 1) / 2).clamp(clamp, 1 - clamp)
    pf = ((f_fake + 1) / 2).clamp(clamp, 1 - clamp)
    return -(pr.log().mean() + (1 - pf).log().mean())


def gn_bce_generator_loss(f_fake: torch.Tensor, clamp: float = 1e-7) -> torch.Tensor:
    """GN-GAN ``bce`` generator loss ``BCE((f_fake + 1)/2, 1)``."""
    pf = ((_scores("f_fake", f_fake) + 1) / 2).clamp(clamp, 1 - clamp)
    return -pf.log().mean()


def hinge_critic_loss(t_real: torch.Tensor, t_fake: torch.Tensor) -> torch.Tensor:
    """Hinge critic loss ``mean relu(1 - t_real) + mean relu(1 + t_fake)``."""
    t_real, t_fake = _scores("t_real", t_real), _scores("t_fake", t_fake)
    return F.relu(1 - t_real).mean() + F.relu(1 + t_fake).mean()


def hinge_generator_loss(t_fake: torch.Tensor) -> torch.Tensor:
    """Hinge generator loss ``-mean(t_fake)``."""
    return -_scores("t_fake", t_fake).mean()


# --- MonoFlow family ----------------------------------------------------------------------------------


def logistic_discriminator_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits discriminator loss ``mean softplus(-d_real) + mean softplus(d_fake)``.

    Its minimiser over all functions is ``D*(x) = log p(x)/q(x)`` (logits, no sigmoid head).
    """
    d_real = _finite("d_real", _scores("d_real", d_real))
    d_fake = _finite("d_fake", _scores("d_fake", d_fake))
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


_H_NAMES = ("logit", "ns", "vanilla", "arcsinh")


def monoflow_h(h: str | Callable[[torch.Tensor], torch.Tensor] = "logit", shift: float = 5.0):
    """The increasing map ``h`` of a MonoFlow generator loss ``-E[h(d)]``.

    ``logit``: ``d``; ``ns``: ``log sigmoid(d)``; ``vanilla``: ``softplus(d + shift)`` (minimax loss
    ``log(1 - sigmoid(d + shift))``); ``arcsinh``: ``asinh(d)``. A callable is checked to be non-decreasing
    and non-constant on a grid over ``[-20, 20]``; otherwise ``ValueError``.
    """
    if isinstance(h, str):
        if h == "logit":
            return lambda d: d
        if h == "ns":
            return F.logsigmoid
        if h == "vanilla":
            if not math.isfinite(shift):
                raise ValueError(f"shift must be finite, got {shift}")
            return lambda d: F.softplus(d + shift)
        if h == "arcsinh":
            return torch.asinh
        raise ValueError(f"h must be one of {_H_NAMES} or a callable, got {h!r}")
    if not callable(h):
        raise TypeError(f"h must be a name or a callable, got {type(h).__name__}")
    grid = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    with torch.no_grad():
        vals = h(grid)
    if not isinstance(vals, torch.Tensor) or vals.shape != grid.shape or not torch.isfinite(vals).all():
        raise ValueError("h must map a tensor elementwise to finite values of the same shape")
    steps = vals.diff()
    tol = 1e-9 * float(vals.abs().max().clamp_min(1.0))
    if (steps < -tol).any():
        bad = float(grid[1:][steps < -tol][0])
        raise ValueError(f"h must be monotonically increasing; it decreases near d = {bad:.3g}")
    if float(vals[-1] - vals[0]) <= tol:
        raise ValueError("h must be monotonically increasing; it is constant on [-20, 20]")
    return h


def monoflow_generator_loss(
    d_fake: torch.Tensor, h: str | Callable[[torch.Tensor], torch.Tensor] = "logit", shift: float = 5.0
) -> torch.Tensor:
    """MonoFlow generator loss ``-mean h(d_fake)`` on discriminator logits of generated samples.

    ``h="logit"`` is ``-mean d``, ``"ns"`` is ``mean softplus(-d)``, ``"vanilla"`` is
    ``mean log(1 - sigmoid(d + shift)) = -mean softplus(d + shift)``, ``"arcsinh"`` is ``-mean asinh(d)``.
    """
    d_fake = _finite("d_fake", _scores("d_fake", d_fake))
    return -monoflow_h(h, shift)(d_fake).mean()


def generator_regression_loss(g_out: torch.Tensor, velocity: torch.Tensor, eps: float) -> torch.Tensor:
    """Regression form of a generator step: ``mean_i || g_i - stopgrad(g_i + eps v_i) ||^2`` (sum over dims).

    ``velocity`` is the particle velocity at the generator's current output (``grad_x D`` for MonoFlow,
    ``v(x, 0)`` for the ReFlow-GAN); it is detached. At the current parameters the gradient equals
    ``2 eps`` times that of ``-mean <v, g>``, i.e. of ``E[-D(g)]`` when ``v = grad D``.
    """
    g_out, velocity = _tensor("g_out", g_out), _tensor("velocity", velocity)
    if g_out.shape != velocity.shape or g_out.ndim < 1:
        raise ValueError(
            f"g_out and velocity must have the same shape [B, ...], got {tuple(g_out.shape)} and "
            f"{tuple(velocity.shape)}"
        )
    eps = _positive("eps", eps)
    _finite("velocity", velocity)
    target = (g_out + eps * velocity).detach()
    return (g_out - target).pow(2).reshape(g_out.shape[0], -1).sum(dim=1).mean()
