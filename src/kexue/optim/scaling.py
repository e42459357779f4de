"""Optimal learning rate vs batch size for SGD, SignSGD and Adam-with-ε (modelled as softsign).

Posts: "当Batch Size增大时，学习率该如何随之变化？" (2024-11-14, kexue.fm/archives/10542) and
"Adam的epsilon如何影响学习率的Scaling Law？" (2024-11-18, kexue.fm/archives/10563); background
McCandlish et al., "An Empirical Model of Large-Batch Training" (arXiv 1812.06162).

Model: one step θ -> θ - η ũ_B with the minibatch gradient g̃_B ~ N(g, Σ/B), Σ = diag(σ_i²) the
per-example covariance. For a quadratic loss with Hessian H,

    E[L(θ - η ũ)] - L(θ) = -η E[ũ]ᵀg + ½ η² Tr(E[ũ ũᵀ] H),
    η* = E[ũ]ᵀg / Tr(E[ũũᵀ]H),     ΔL* = (E[ũ]ᵀg)² / (2 Tr(E[ũũᵀ]H))   (the loss decrease).

* SGD, ũ = g̃: η* = η_max / (1 + B_noise/B), η_max = gᵀg / gᵀHg, B_noise = Tr(ΣH) / gᵀHg,
  B_simple = Tr(Σ) / gᵀg (exact under the model).
* SignSGD, ũ = sign(g̃): E[ũ_i] = erf((g_i/σ_i)·sqrt(B/2)), E[ũ_i²] = 1, coordinates independent.
* Softsign, ũ_i = g̃_i / sqrt(g̃_i² + ε²) (Adam's ε): the two moments by quadrature (``"exact"``).

``method="approx"`` gives the posts' closed forms: with u_i = softsign(g_i, ε) (sign(g_i) for ε = 0),
κ² = a mean of σ_i² / (g_i² + ε²) and β = (1 + πκ²/(2B))^(-1/2),

    η* ≈ β Σ u_i g_i / (β² uᵀHu + (1 - β²) Tr H),

which peaks at β = β_noise = sqrt(Tr H / (uᵀHu - Tr H)) (a "surge": η* rises then falls with B) when
β_noise < 1, i.e. at B_noise = πκ²β_noise² / (2(1 - β_noise²)); ΔL ≈ ΔL_max / (1 + B_noise2/B) with
B_noise2 = πκ²β_noise² / (2(1 + β_noise²)), so 1/B_noise2 - 1/B_noise = 4/(πκ²). Larger ε shrinks u
and weakens the surge; ε -> ∞ recovers SGD's form (η*/ε -> the SGD optimum).

Zero gradient coordinates: u_i = 0 there and they are left out of κ² (documented choice). The
quadrature splits the Gaussian integral into Gauss-Legendre panels placed both on the Gaussian and
on the softsign transition (width ε·sqrt(B)/σ), so a sharp transition is resolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import torch

__all__ = [
    "LRScaling",
    "estimate_noise_scale",
    "optimal_lr",
    "simulate_one_step",
    "softsign_moments",
]

RULES = ("sgd", "sign", "softsign")
METHODS = ("exact", "approx")
KAPPA_MEANS = ("arithmetic", "harmonic", "median")


@dataclass(frozen=True)
class LRScaling:
    """Per-batch-size optimal learning rate and loss decrease, plus the rule's summary numbers."""

    rule: str
    method: str
    eps: float
    batch_sizes: torch.Tensor
    eta_opt: torch.Tensor
    delta_loss: torch.Tensor
    summary: dict[str, Any] = field(default_factory=dict)


def _as_f64(name: str, x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach().to(dtype=torch.float64, device="cpu")
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be array-like numbers, got {type(x).__name__}") from exc
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def _check_inputs(
    g: Any, H: Any, sigma2: Any, batch_sizes: Any, allow_full_cov: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = _as_f64("g", g)
    if g.ndim != 1 or g.numel() == 0:
        raise ValueError(f"g must be a non-empty 1-D vector, got shape {tuple(g.shape)}")
    d = g.numel()
    H = _as_f64("H", H)
    if H.shape != (d, d):
        raise ValueError(f"H must be a square ({d}, {d}) matrix matching g, got shape {tuple(H.shape)}")
    scale = float(H.abs().max()) or 1.0
    if not torch.allclose(H, H.mT, atol=1e-12 * scale, rtol=0.0):
        raise ValueError("H must be symmetric")
    s2 = _as_f64("sigma2", sigma2)
    if s2.ndim == 0:
        s2 = s2.expand(d).clone()
    if s2.ndim == 2 and allow_full_cov:
        if s2.shape != (d, d):
            raise ValueError(f"a full sigma2 covariance must be ({d}, {d}), got {tuple(s2.shape)}")
    elif s2.shape != (d,):
        raise ValueError(
            f"sigma2 must be a scalar or a length-{d} vector of variances, got shape {tuple(s2.shape)}"
        )
    if s2.ndim == 1 and (s2 < 0).any():
        raise ValueError(f"sigma2 must be >= 0, got min {float(s2.min())}")
    B = _as_f64("batch_sizes", batch_sizes).reshape(-1)
    if B.numel() == 0 or (B <= 0).any():
        raise ValueError(f"batch sizes must be > 0, got {B.tolist()}")
    return g, H, s2, B


def _check_denominator(denom: torch.Tensor) -> None:
    if (denom <= 0).any():
        raise ValueError(
            "the curvature term Tr(E[uuᵀ]H) is not positive: H must be positive definite along the update"
        )


@lru_cache(maxsize=4)
def _legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, w = np.polynomial.legendre.leggauss(n)
    return torch.as_tensor(x), torch.as_tensor(w)


_TRANSITION_OFFSETS = torch.tensor(
    [-1e4, -1e3, -300.0, -100.0, -30.0, -10.0, -3.0, -1.0, 0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 1e4],
    dtype=torch.float64,
)
_GAUSS_POINTS = torch.tensor(
    [-12.0, -8.0, -6.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0], dtype=torch.float64
)


def softsign_moments(
    g: torch.Tensor, s: torch.Tensor, eps: float, nodes: int = 24
) -> tuple[torch.Tensor, torch.Tensor]:
    """E[f(X)] and E[f(X)²] for X ~ N(g, s²) and f(x) = x / sqrt(x² + ε²) (elementwise, float64).

    ε = 0 is sign: E[f] = erf(g / (s·sqrt 2)) exactly, E[f²] = 1 (0 where g = s = 0). Otherwise a
    composite Gauss-Legendre rule in z = (x - g)/s on [-12, 12] with panel edges on the Gaussian and at
    z0 + w·{0, ±1, ±3, ..., ±1e4} around the transition z0 = -g/s of width w = ε/s.
    """
    g = _as_f64("g", g)
    s = _as_f64("s", s)
    g, s = torch.broadcast_tensors(g, s)
    if (s < 0).any():
        raise ValueError("s must be >= 0")
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    det = s == 0
    s_safe = torch.where(det, torch.ones_like(s), s)
    if eps == 0.0:
        m1 = torch.special.erf(g / (s_safe * math.sqrt(2.0)))
        m1 = torch.where(det, torch.sign(g), m1)
        m2 = torch.where(det & (g == 0), torch.zeros_like(g), torch.ones_like(g))
        return m1, m2
    z0 = -g / s_safe
    w = eps / s_safe
    edges = (
        torch.cat(
            [
                (z0.unsqueeze(-1) + w.unsqueeze(-1) * _TRANSITION_OFFSETS).clamp(-12.0, 12.0),
                _GAUSS_POINTS.expand(*g.shape, -1),
            ],
            dim=-1,
        )
        .sort(dim=-1)
        .values
    )
    a, b = edges[..., :-1], edges[..., 1:]
    x, wts = _legendre(nodes)
    half = (b - a).unsqueeze(-1) / 2
    z = (a + b).unsqueeze(-1) / 2 + half * x  # (..., panels, nodes)
    weight = half * wts * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    xv = g.unsqueeze(-1).unsqueeze(-1) + s_safe.unsqueeze(-1).unsqueeze(-1) * z
    f = xv / torch.sqrt(xv * xv + eps * eps)
    m1 = (weight * f).sum(dim=(-2, -1))
    m2 = (weight * f * f).sum(dim=(-2, -1))
    f_det = g / torch.sqrt(g * g + eps * eps)
    return torch.where(det, f_det, m1), torch.where(det, f_det * f_det, m2)


def _kappa2(ratio2: torch.Tensor, how: str) -> float:
    if ratio2.numel() == 0:
        return 0.0
    if how == "arithmetic":
        return float(ratio2.mean())
    if how == "harmonic":
        return float(1.0 / (1.0 / ratio2).mean()) if bool((ratio2 > 0).all()) else 0.0
    return float(ratio2.median())


def optimal_lr(
    g: Any,
    H: Any,
    sigma2: Any,
    batch_sizes: Any,
    rule: str = "sgd",
    eps: float = 0.0,
    method: str = "exact",
    kappa2: float | None = None,
    kappa_mean: str = "arithmetic",
) -> LRScaling:
    """The one-step optimal learning rate η*(B) and loss decrease ΔL*(B) (see module docstring).

    Args:
        g: the full-batch gradient (d,).
        H: the Hessian (d, d), symmetric.
        sigma2: per-example gradient variances σ_i² (scalar or (d,); a full (d, d) Σ for ``"sgd"``).
        batch_sizes: the B values.
        rule: ``"sgd"``, ``"sign"`` or ``"softsign"`` (Adam with ``eps``).
        eps: ε of softsign (``"sign"`` forces 0).
        method: ``"exact"`` moments or the posts' ``"approx"`` closed forms (SGD is exact either way).
        kappa2: override κ² of the approximation.
        kappa_mean: how κ² averages σ_i²/(g_i² + ε²): ``"arithmetic"`` (the posts'), ``"harmonic"``, ``"median"``.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if kappa_mean not in KAPPA_MEANS:
        raise ValueError(f"kappa_mean must be one of {KAPPA_MEANS}, got {kappa_mean!r}")
    eps = float(eps)
    if eps < 0 or not math.isfinite(eps):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if rule == "sign":
        eps = 0.0
    g, H, s2, B = _check_inputs(g, H, sigma2, batch_sizes, allow_full_cov=rule == "sgd")
    if rule == "sgd":
        return _sgd(g, H, s2, B, method)
    if method == "exact":
        return _sign_exact(g, H, s2, B, rule, eps)
    return _sign_approx(g, H, s2, B, rule, eps, kappa2, kappa_mean)


def _sgd(g: torch.Tensor, H: torch.Tensor, s2: torch.Tensor, B: torch.Tensor, method: str) -> LRScaling:
    gg = float(g @ g)
    gHg = float(g @ H @ g)
    trSH = float((s2 * H).sum()) if s2.ndim == 2 else float((s2 * torch.diagonal(H)).sum())
    trS = float(torch.trace(s2)) if s2.ndim == 2 else float(s2.sum())
    denom = gHg + trSH / B
    _check_denominator(denom)
    eta = gg / denom
    summary = {
        "eta_max": gg / gHg if gHg > 0 else math.inf,
        "B_noise": trSH / gHg if gHg > 0 else math.inf,
        "B_simple": trS / gg if gg > 0 else math.inf,
        "delta_loss_max": gg * gg / (2 * gHg) if gHg > 0 else math.inf,
    }
    return LRScaling("sgd", method, 0.0, B, eta, gg * gg / (2 * denom), summary)


def _sign_exact(
    g: torch.Tensor, H: torch.Tensor, s2: torch.Tensor, B: torch.Tensor, rule: str, eps: float
) -> LRScaling:
    s = torch.sqrt(s2).unsqueeze(0) / torch.sqrt(B).unsqueeze(1)  # (nB, d)
    m1, m2 = softsign_moments(g.expand_as(s), s, eps)
    diag = torch.diagonal(H)
    off = H - torch.diag(diag)
    num = m1 @ g
    denom = m2 @ diag + torch.einsum("bi,ij,bj->b", m1, off, m1)
    _check_denominator(denom)
    eta = num / denom
    k = int(torch.argmax(eta))
    summary = {"eta_peak": float(eta[k]), "B_peak": float(B[k]), "eta_last": float(eta[-1])}
    return LRScaling(rule, "exact", eps, B, eta, num * num / (2 * denom), summary)


def _sign_approx(
    g: torch.Tensor,
    H: torch.Tensor,
    s2: torch.Tensor,
    B: torch.Tensor,
    rule: str,
    eps: float,
    kappa2: float | None,
    kappa_mean: str,
) -> LRScaling:
    nz = g != 0
    if eps == 0.0:
        u = torch.sign(g)
    else:
        u = g / torch.sqrt(g * g + eps * eps)
    if kappa2 is None:
        kappa2 = _kappa2((s2 / (g * g + eps * eps))[nz], kappa_mean)
    elif kappa2 < 0 or not math.isfinite(kappa2):
        raise ValueError(f"kappa2 must be a finite number >= 0, got {kappa2}")
    beta = (1.0 + math.pi * kappa2 / (2.0 * B)) ** -0.5
    N = float(u @ g)
    Q = float(u @ H @ u)
    T = float(torch.trace(H))
    denom = beta * beta * Q + (1.0 - beta * beta) * T
    _check_denominator(denom)
    eta = beta * N / denom
    summary: dict[str, Any] = {"kappa2": kappa2, "trace_H": T, "uHu": Q}
    if Q > T:
        beta_noise = math.sqrt(T / (Q - T))
        eta_max = N / (2.0 * math.sqrt(T * (Q - T)))
        summary["beta_noise"] = beta_noise
        summary["eta_max"] = eta_max
        summary["has_surge"] = beta_noise < 1.0
        summary["B_noise"] = (
            math.pi * kappa2 * beta_noise**2 / (2.0 * (1.0 - beta_noise**2)) if beta_noise < 1.0 else math.inf
        )
        summary["B_noise2"] = math.pi * kappa2 * beta_noise**2 / (2.0 * (1.0 + beta_noise**2))
        summary["delta_loss_max"] = beta_noise * eta_max * N / (1.0 + beta_noise**2)
    else:
        summary.update(beta_noise=math.inf, eta_max=N / Q if Q > 0 else math.inf, has_surge=False)
        summary.update(B_noise=math.inf, B_noise2=math.pi * kappa2 * T / (2.0 * Q) if Q > 0 else math.inf)
        summary["delta_loss_max"] = N * N / (2.0 * Q) if Q > 0 else math.inf
    return LRScaling(rule, "approx", eps, B, eta, (beta * N) ** 2 / (2.0 * denom), summary)


def simulate_one_step(
    g: Any,
    H: Any,
    sigma2: Any,
    batch_size: float,
    etas: Any,
    rule: str = "sgd",
    eps: float = 0.0,
    n_draws: int = 2000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Monte Carlo estimate of E[L(θ - η ũ)] - L(θ) = -η E[ũᵀg] + ½ η² E[ũᵀHũ] for each η in ``etas``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if isinstance(n_draws, bool) or not isinstance(n_draws, int) or n_draws < 1:
        raise ValueError(f"n_draws must be a positive int, got {n_draws!r}")
    g, H, s2, Bt = _check_inputs(g, H, sigma2, [batch_size], allow_full_cov=False)
    etas = _as_f64("etas", etas).reshape(-1)
    noise = torch.randn(n_draws, g.numel(), generator=generator, dtype=torch.float64)
    gt = g + noise * torch.sqrt(s2 / Bt[0])
    if rule == "sgd":
        u = gt
    elif rule == "sign" or eps == 0.0:
        u = torch.sign(gt)
    else:
        u = gt / torch.sqrt(gt * gt + eps * eps)
    lin = float((u @ g).mean())
    quad = float(torch.einsum("ni,ij,nj->n", u, H, u).mean())
    return -etas * lin + 0.5 * etas * etas * quad


def estimate_noise_scale(per_example_grads: Any) -> float:
    """B_simple = Tr(Σ) / |G|², with Σ the per-coordinate variance of the rows and G their mean.

    ``per_example_grads`` is (n, d) with n >= 2 (one flattened gradient per example).
    """
    x = _as_f64("per_example_grads", per_example_grads)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"per_example_grads must be (n >= 2, d), got shape {tuple(x.shape)}")
    mean = x.mean(dim=0)
    norm2 = float(mean @ mean)
    if norm2 == 0.0:
        raise ValueError("the mean gradient is zero: B_simple is undefined")
    return float(x.var(dim=0, unbiased=True).sum()) / norm2
