"""Causal self-attention with pluggable scale, key normalisation, windows and rectified RoPE.

Scores are ``s_ij = c * f_i * (q_i . k_j)`` over visible keys ``0 <= i - j < w`` (``w`` = window,
infinite by default), followed by softmax and a weighted sum of values:

* ``c``: ``1/sqrt(d)`` (standard), ``1`` for KeyNorm / QueryNorm, ``lambda`` for cosine attention;
* ``f_i`` (per query position ``i``, folded into ``q`` so the fast fused kernel still applies):
  ``1`` (``scale="sdpa"``), the entropy-invariant ``log(i+1) / log(N)`` (``"logn"``, trained in),
  the gradient-maximising ``alpha*(n)`` (``"gradient"``, with ``n = N/2``), the inference-only
  "log n dagger" ``max(1, log(i+1) / log(N))``, and YaRN's ``(0.1 ln k + 1)^2``;
* KeyNorm (``qk_norm="key"``): ``k_j / |k_j|`` and ``c = 1``; ``"query"`` normalises ``q`` instead;
  ``"both"`` is cosine attention ``lambda cos(q_i, k_j)``;
* ReRoPE / Leaky ReRoPE replace the relative position ``i - j`` by its rectified value, which needs
  explicit logits (two passes at prefill, re-rotated raw keys for a single decoding query).

Every other combination runs through ``torch.nn.functional.scaled_dot_product_attention``.

The gradient-maximisation scale: for ``p = softmax(alpha s)``, half the entrywise L1 norm of the
Jacobian is exactly ``alpha (1 - sum_i p_i^2)``; the mean-field estimate
``f_n(alpha) = alpha (1 - M(2 alpha) / (n M(alpha)^2))`` (``M`` = moment generating function of the
scores) is maximised at ``(1 + 2 alpha^2) exp(alpha^2) = n`` for standard-normal scores
(about ``0.84 sqrt(log n)``) and at about ``3.5 log n`` for cosine scores in 128 dimensions.

Posts: "从梯度最大化看Attention的Scale操作" (2023-10-22, kexue.fm/archives/9812);
"从熵不变性看Attention的Scale操作" (2021-12-21, kexue.fm/archives/8823);
"Transformer升级之路：15、Key归一化助力长度外推" (2023-11-20, kexue.fm/archives/9859);
"Transformer升级之路：9、一种全局长度外推的新思路" (2023-05-12, kexue.fm/archives/9603);
"Transformer升级之路：12、无限外推的ReRoPE？" (2023-08-07, kexue.fm/archives/9708).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kexue.nn.rope import (
    RopeScaling,
    apply_rotary,
    rectified_max_position,
    rectified_rope_logits,
    rerope_logits,
    rope_cos_sin,
)

__all__ = [
    "QK_NORMS",
    "SCALE_POLICIES",
    "AttentionConfig",
    "CausalSelfAttention",
    "Extrapolation",
    "LayerKVCache",
    "causal_attention",
    "cosine_log_mgf",
    "cosine_objective",
    "cosine_optimal_scale",
    "cosine_optimal_scales",
    "entropy_invariant_scale",
    "gaussian_objective",
    "gaussian_optimal_scale",
    "logn_factor",
    "softmax_gradient_norm",
    "window_mask",
]

SCALE_POLICIES: tuple[str, ...] = ("sdpa", "logn", "gradient")
QK_NORMS: tuple[str | None, ...] = (None, "key", "query", "both")


# --- scale analysis (post 9812) -------------------------------------------------------------


def _check_alpha(alpha: float) -> float:
    if (
        isinstance(alpha, bool)
        or not isinstance(alpha, int | float)
        or not math.isfinite(alpha)
        or alpha <= 0
    ):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    return float(alpha)


def _check_n(n: float) -> float:
    if isinstance(n, bool) or not isinstance(n, int | float) or not math.isfinite(n) or n < 2:
        raise ValueError(f"n (number of keys) must be a finite number >= 2, got {n!r}")
    return float(n)


def softmax_gradient_norm(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """``0.5 * sum_ij |d p_i / d s_j| = alpha (1 - sum_i p_i^2)`` for ``p = softmax(alpha s)`` over the
    last dimension (exact identity, returned per row)."""
    alpha = _check_alpha(alpha)
    if not torch.isfinite(scores).all():
        raise ValueError("scores must be finite")
    p = torch.softmax(alpha * scores, dim=-1)
    return alpha * (1 - p.pow(2).sum(-1))


def gaussian_objective(alpha: float, n: float) -> float:
    """Mean-field ``f_n(alpha) = alpha (1 - exp(alpha^2) / n)`` for standard-normal scores."""
    alpha, n = _check_alpha(alpha), _check_n(n)
    return alpha * (1 - math.exp(min(alpha * alpha, 700.0)) / n)


def gaussian_optimal_scale(n: float) -> float:
    """Root of ``(1 + 2 a^2) exp(a^2) = n`` on ``a > 0`` (maximiser of :func:`gaussian_objective`)."""
    n = _check_n(n)
    target = math.log(n)
    lo, hi = 0.0, math.sqrt(target) + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.log1p(2 * mid * mid) + mid * mid < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _log_mgf_terms(a: np.ndarray, d: int) -> np.ndarray:
    """Vectorised ``log M(a)`` for ``a >= 0`` (see :func:`cosine_log_mgf`)."""
    a = np.abs(np.asarray(a, dtype=np.float64))
    kmax = int(2 * a.max() + 10 * math.sqrt(a.max()) + 60)
    k = np.arange(kmax, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_q = 2 * np.log(a / 2)[..., None]
    # log t_{k+1} - log t_k = log(a^2/4) - log(k+1) - log(d/2 + k), t_0 = 1
    steps = log_q - np.log(k + 1) - np.log(d / 2.0 + k)
    log_terms = np.concatenate([np.zeros(a.shape + (1,)), np.cumsum(steps, axis=-1)], axis=-1)
    top = log_terms.max(axis=-1, keepdims=True)
    out = top[..., 0] + np.log(np.exp(log_terms - top).sum(axis=-1))
    return np.where(a == 0, 0.0, out)


def _check_cos_dim(d: int) -> int:
    if isinstance(d, bool) or not isinstance(d, int) or d < 3:
        raise ValueError(f"cosine-score density needs an int dimension d >= 3, got {d!r}")
    return d


def cosine_log_mgf(a: float, d: int) -> float:
    """``log E[exp(a s)]`` for ``s = cos(u, v)`` of independent uniform directions in ``R^d``.

    ``M(a) = Gamma(d/2) (2/a)^(d/2-1) I_{d/2-1}(a) = sum_k (a^2/4)^k / (k! (d/2)_k)``, summed in
    log space (no overflow for large ``a``).
    """
    _check_cos_dim(d)
    if isinstance(a, bool) or not isinstance(a, int | float) or not math.isfinite(a):
        raise ValueError(f"a must be a finite number, got {a!r}")
    return float(_log_mgf_terms(np.array(float(a)), d))


def _cosine_objective_np(alpha: np.ndarray, n: np.ndarray, d: int) -> np.ndarray:
    ratio = _log_mgf_terms(2 * alpha, d) - 2 * _log_mgf_terms(alpha, d) - np.log(n)
    return alpha * (1 - np.exp(np.minimum(ratio, 700.0)))


def cosine_objective(alpha: float, n: float, d: int) -> float:
    """Mean-field ``f_n(alpha) = alpha (1 - M(2 alpha) / (n M(alpha)^2))`` for cosine scores."""
    alpha, n = _check_alpha(alpha), _check_n(n)
    return float(_cosine_objective_np(np.array(alpha), np.array(n), _check_cos_dim(d)))


def cosine_optimal_scales(
    ns: np.ndarray | list[float], d: int, upper: float = 300.0, tol: float = 1e-7
) -> np.ndarray:
    """Maximisers of :func:`cosine_objective` on ``(0, upper]`` for every ``n`` in ``ns`` at once
    (vectorised golden-section search)."""
    ns = np.asarray(ns, dtype=np.float64)
    for n in ns.ravel():
        _check_n(float(n))
    _check_cos_dim(d)
    _check_alpha(upper)
    lo, hi = np.full(ns.shape, 1e-6), np.full(ns.shape, float(upper))
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = hi - g * (hi - lo), lo + g * (hi - lo)
    f1, f2 = _cosine_objective_np(x1, ns, d), _cosine_objective_np(x2, ns, d)
    while (hi - lo).max() > tol:
        right = f1 < f2  # the maximum lies in [x1, hi]
        lo = np.where(right, x1, lo)
        hi = np.where(right, hi, x2)
        nx1 = np.where(right, x2, hi - g * (hi - lo))
        nx2 = np.where(right, lo + g * (hi - lo), x1)
        fn = _cosine_objective_np(np.where(right, nx2, nx1), ns, d)
        f1, f2 = np.where(right, f2, fn), np.where(right, fn, f1)
        x1, x2 = nx1, nx2
    return 0.5 * (lo + hi)


def cosine_optimal_scale(n: float, d: int, upper: float = 300.0, tol: float = 1e-7) -> float:
    """Maximiser of :func:`cosine_objective` on ``(0, upper]`` (golden-section search)."""
    return float(cosine_optimal_scales(np.array([_check_n(n)]), d, upper, tol)[0])


def entropy_invariant_scale(n: float, ref_length: float) -> float:
    """``log(n) / log(N)``: the factor keeping attention entropy roughly constant (post 8823)."""
    if not n >= 1 or not ref_length > 1:
        raise ValueError(f"need n >= 1 and ref_length > 1, got n={n}, ref_length={ref_length}")
    return math.log(n) / math.log(ref_length)


def logn_factor(positions: torch.Tensor, ref_length: int, clip: bool = False) -> torch.Tensor:
    """``log(i + 1) / log(N)`` for 0-based query positions ``i`` (``n = i + 1`` visible keys).

    ``clip=True`` is the inference-only "log n dagger" ``max(1, ...)`` for models trained without it.
    """
    if isinstance(ref_length, bool) or not isinstance(ref_length, int) or ref_length < 2:
        raise ValueError(f"ref_length must be an int >= 2, got {ref_length!r}")
    if (positions < 0).any():
        raise ValueError("positions must be >= 0")
    f = torch.log1p(positions.to(torch.float64)) / math.log(ref_length)
    return f.clamp(min=1.0) if clip else f


# --- functional attention -------------------------------------------------------------------


def window_mask(
    q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None = None
) -> torch.Tensor:
    """Boolean ``(Tq, Tk)`` mask, True where ``0 <= i - j < window`` (causal, window keys incl. self)."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int >= 1 or None, got {window!r}")
    rel = q_positions[:, None] - k_positions[None, :]
    allowed = rel >= 0
    if window is not None:
        allowed = allowed & (rel < window)
    return allowed


def causal_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    scale: float | None = None,
    q_scale: torch.Tensor | None = None,
    window: int | None = None,
    inv_freq: torch.Tensor | None = None,
    rerope_window: int | None = None,
    leaky_factor: float | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of ``q`` ``(..., Tq, d)`` over ``k``, ``v`` ``(..., Tk, d)``.

    ``scale`` defaults to ``1/sqrt(d)``; ``q_scale`` ``(Tq,)`` multiplies each query row's logits;
    ``inv_freq`` applies RoPE (``q``/``k`` are then raw, un-rotated); ``rerope_window`` (with optional
    ``leaky_factor``) rectifies the relative positions (needs ``inv_freq``). Positions default to the
    last ``Tq`` of ``0..Tk-1`` (queries are the newest tokens). Only the causal form is defined.
    """
    if (
        q.dim() < 2
        or q.shape[:-2] != k.shape[:-2]
        or k.shape[:-1] != v.shape[:-1]
        or q.shape[-1] != k.shape[-1]
    ):
        raise ValueError(f"incompatible shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    tq, tk, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if tq > tk:
        raise ValueError(f"more queries ({tq}) than keys ({tk}) in causal attention")
    if rerope_window is not None and inv_freq is None:
        raise ValueError("rerope_window needs inv_freq (ReRoPE only applies to RoPE attention)")
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    kp = torch.arange(tk, device=q.device) if k_positions is None else k_positions
    qp = kp[tk - tq :] if q_positions is None else q_positions
    if qp.shape != (tq,) or kp.shape != (tk,):
        raise ValueError(
            f"positions must have shapes ({tq},) and ({tk},), got {tuple(qp.shape)}, {tuple(kp.shape)}"
        )
    if q_scale is not None:
        if q_scale.shape != (tq,):
            raise ValueError(f"q_scale must have shape ({tq},), got {tuple(q_scale.shape)}")
        q = q * q_scale.to(q.dtype)[:, None]

    if rerope_window is not None and (leaky_factor == 1 or float(qp.max()) - float(kp.min()) < rerope_window):
        rerope_window = None  # no distance reaches the window: the rectified logits are plain RoPE's
    if rerope_window is not None:
        assert inv_freq is not None
        if tq == 1:
            logits = rectified_rope_logits(q, k, inv_freq, rerope_window, leaky_factor, qp, kp)
        else:
            logits = rerope_logits(q, k, inv_freq, rerope_window, leaky_factor, qp, kp)
        logits = (logits * scale).masked_fill(~window_mask(qp, kp, window), float("-inf"))
        return torch.softmax(logits, dim=-1) @ v

    if inv_freq is not None:
        q = apply_rotary(q, *rope_cos_sin(qp, inv_freq, q.dtype))
        k = apply_rotary(k, *rope_cos_sin(kp, inv_freq, k.dtype))
    if window is None and tq == tk and (qp is kp or torch.equal(qp, kp)):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    mask = window_mask(qp, kp, window)
    if bool(mask.all()):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# --- configuration --------------------------------------------------------------------------


def _check_opt_int(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")


@dataclass(frozen=True)
class AttentionConfig:
    """How one attention layer is trained.

    ``position``: ``"rope"`` or ``"none"`` (NoPE). ``window``: keys ``0 <= i - j < window`` (None = full).
    ``scale``: ``"sdpa"`` (1/sqrt(d)), ``"logn"`` (times ``log(i+1)/log(train_length)``, unclipped),
    ``"gradient"`` (times ``alpha*(train_length/2)``; for cosine attention it sets ``lambda``), or a
    number multiplying the base scale. ``qk_norm``: None, ``"key"`` (KeyNorm), ``"query"`` or ``"both"``
    (cosine attention with ``cos_scale`` = lambda). ``rerope_window`` / ``leaky_factor``: rectified
    relative positions used in training (e.g. InvLeaky ReRoPE with ``leaky_factor < 1``).
    """

    position: str = "rope"
    rope_base: float = 10000.0
    window: int | None = None
    scale: str | float = "sdpa"
    train_length: int | None = None
    qk_norm: str | None = None
    cos_scale: float | None = None
    rerope_window: int | None = None
    leaky_factor: float | None = None

    def __post_init__(self) -> None:
        if self.position not in ("rope", "none"):
            raise ValueError(f"position must be 'rope' or 'none', got {self.position!r}")
        if not (isinstance(self.rope_base, int | float) and self.rope_base > 1):
            raise ValueError(f"rope_base must be > 1, got {self.rope_base!r}")
        _check_opt_int("window", self.window)
        _check_opt_int("train_length", self.train_length)
        _check_opt_int("rerope_window", self.rerope_window)
        if isinstance(self.scale, str):
            if self.scale not in SCALE_POLICIES:
                raise ValueError(f"scale must be one of {SCALE_POLICIES} or a number, got {self.scale!r}")
        elif isinstance(self.scale, bool) or not isinstance(self.scale, int | float) or not self.scale > 0:
            raise ValueError(f"a numeric scale must be > 0, got {self.scale!r}")
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        if self.cos_scale is not None and not (
            isinstance(self.cos_scale, int | float) and self.cos_scale > 0
        ):
            raise ValueError(f"cos_scale (lambda) must be > 0, got {self.cos_scale!r}")
        if self.cos_scale is not None and self.qk_norm != "both":
            raise ValueError("cos_scale only applies to cosine attention (qk_norm='both')")
        if self.scale in ("logn", "gradient") and (self.train_length is None or self.train_length < 4):
            raise ValueError(f"scale={self.scale!r} needs train_length >= 4, got {self.train_length!r}")
        if self.scale == "gradient" and self.qk_norm in ("key", "query"):
            raise ValueError("scale='gradient' is defined for plain (Gaussian) or cosine scores, not KNA/QNA")
        if self.qk_norm == "both" and self.cos_scale is None and self.train_length is None:
            raise ValueError(
                "cosine attention needs cos_scale or train_length (for alpha*(train_length/2, d))"
            )
        if self.leaky_factor is not None and self.rerope_window is None:
            raise ValueError("leaky_factor needs rerope_window")
        if self.rerope_window is not None and self.position != "rope":
            raise ValueError("rerope_window needs position='rope'")
        if self.leaky_factor is not None and not self.leaky_factor > 0:
            raise ValueError(f"leaky_factor must be > 0, got {self.leaky_factor!r}")


@dataclass(frozen=True)
class Extrapolation:
    """Inference-time position treatment, replacing the trained one in every RoPE layer.

    ``scaling``: frequency recipe (:class:`~kexue.nn.rope.RopeScaling`; None = plain RoPE).
    ``rerope_window`` / ``leaky_factor``: ReRoPE / Leaky ReRoPE in full-attention RoPE layers (window
    layers keep plain RoPE: their distances were all seen in training); None = no rectification, which
    also switches off a rectification used in training (InvLeaky -> plain RoPE). ``logn_dagger``:
    multiply queries by ``max(1, log(i+1)/log(train_length))``. ``train_length`` (or the layer's) is
    used by the dagger and to reject lengths a finite Leaky factor cannot reach.
    """

    scaling: RopeScaling | None = None
    rerope_window: int | None = None
    leaky_factor: float | None = None
    logn_dagger: bool = False
    train_length: int | None = None

    def __post_init__(self) -> None:
        if self.scaling is not None and not isinstance(self.scaling, RopeScaling):
            raise TypeError(f"scaling must be a RopeScaling, got {type(self.scaling).__name__}")
        _check_opt_int("rerope_window", self.rerope_window)
        _check_opt_int("train_length", self.train_length)
        if self.leaky_factor is not None and (self.rerope_window is None or not self.leaky_factor > 0):
            raise ValueError(f"leaky_factor must be > 0 and needs rerope_window, got {self.leaky_factor!r}")


@dataclass
class LayerKVCache:
    """Raw (pre-RoPE) keys, values and their positions for one layer; window layers keep only
    the last ``window - 1`` entries between calls."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def update(
        self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, keep_last: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        k_all = k if self.k is None else torch.cat([self.k, k], dim=-2)
        v_all = v if self.v is None else torch.cat([self.v, v], dim=-2)
        p_all = torch.cat([self.positions.to(positions.device), positions])
        if keep_last is None:
            self.k, self.v, self.positions = k_all, v_all, p_all
        else:
            n = p_all.shape[0]
            start = max(0, n - keep_last)
            self.k, self.v, self.positions = k_all[..., start:, :], v_all[..., start:, :], p_all[start:]
        return k_all, v_all, p_all


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention configured by :class:`AttentionConfig`."""

    def __init__(self, d_model: int, n_heads: int, config: AttentionConfig | None = None) -> None:
        super().__init__()
        for name, val in (("d_model", d_model), ("n_heads", n_heads)):
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be an int >= 1, got {val!r}")
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.config = config or AttentionConfig()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        if self.config.position == "rope" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head dimension, got {self.head_dim}")
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.proj = nn.Linear(d_model, d_model, bias=False)
        self._base_scale = self._compute_base_scale()

    def _compute_base_scale(self) -> float:
        c = self.config
        if c.qk_norm in ("key", "query"):
            base = 1.0
        elif c.qk_norm == "both":
            if c.cos_scale is not None:
                return float(c.cos_scale)
            assert c.train_length is not None
            base = cosine_optimal_scale(max(2.0, c.train_length / 2), self.head_dim)
            return base * (float(c.scale) if not isinstance(c.scale, str) else 1.0)
        else:
            base = 1.0 / math.sqrt(self.head_dim)
            if c.scale == "gradient":
                assert c.train_length is not None
                base *= gaussian_optimal_scale(max(2.0, c.train_length / 2))
        if not isinstance(c.scale, str):
            base *= float(c.scale)
        return base

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: LayerKVCache | None = None,
        extrapolation: Extrapolation | None = None,
    ) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"x must have shape (batch, time, d_model), got {tuple(x.shape)}")
        b, t, _ = x.shape
        c = self.config
        positions = torch.arange(t, device=x.device) if positions is None else positions
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if c.qk_norm in ("key", "both"):
            k = F.normalize(k, dim=-1, eps=1e-6)
        if c.qk_norm in ("query", "both"):
            q = F.normalize(q, dim=-1, eps=1e-6)
        kp = positions
        if cache is not None:
            keep = None if c.window is None else c.window - 1
            k, v, kp = cache.update(k, v, positions, keep)
        total = int(kp.max()) + 1

        q_scale = None
        if c.scale == "logn":
            assert c.train_length is not None
            q_scale = logn_factor(positions, c.train_length)
        inv_freq = rerope_w = leaky = None
        if c.position == "rope":
            scaling = None if extrapolation is None else extrapolation.scaling
            if scaling is None:
                inv_freq = RopeScaling().inv_freq(self.head_dim, c.rope_base)
            else:
                scaling.check_length(total)
                inv_freq = scaling.inv_freq(self.head_dim, c.rope_base, seq_len=total)
                if scaling.logit_scale != 1.0:
                    q_scale = _mul(q_scale, torch.full((t,), scaling.logit_scale, dtype=torch.float64))
            if extrapolation is None:
                rerope_w, leaky = c.rerope_window, c.leaky_factor
            elif c.window is None:
                rerope_w, leaky = extrapolation.rerope_window, extrapolation.leaky_factor
            train_length = (
                c.train_length if extrapolation is None else extrapolation.train_length or c.train_length
            )
            if rerope_w is not None and leaky is not None and train_length is not None:
                reach = rectified_max_position(total, rerope_w, leaky)
                if reach > train_length - 1 and leaky >= 1:
                    raise ValueError(
                        f"Leaky ReRoPE (window {rerope_w}, k={leaky:g}) reaches relative position {reach:g} "
                        f"at length {total}, beyond the trained range {train_length - 1}; use a larger k"
                    )
        if extrapolation is not None and extrapolation.logn_dagger:
            ref = extrapolation.train_length or c.train_length
            if ref is None:
                raise ValueError("logn_dagger needs train_length (in Extrapolation or the layer config)")
            if c.scale == "logn":
                raise ValueError(
                    "logn_dagger is for models trained without log n; this layer uses scale='logn'"
                )
            q_scale = _mul(q_scale, logn_factor(positions, ref, clip=True))

        y = causal_attention(
            q,
            k,
            v,
            scale=self._base_scale,
            q_scale=q_scale,
            window=c.window,
            inv_freq=inv_freq,
            rerope_window=rerope_w,
            leaky_factor=leaky,
            q_positions=positions,
            k_positions=kp,
        )
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def _mul(a: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    return b if a is None else a * b
