"""Rotary position embedding (RoPE) and its length-extrapolation variants.

RoPE rotates each pair of query/key features by an angle proportional to the position:
for position m and frequency index i (0 <= i < d/2), theta_i = base^(-2i/d) and the pair
(x_i, x_{i+d/2}) becomes (x_i cos(m theta_i) - x_{i+d/2} sin(m theta_i),
x_i sin(m theta_i) + x_{i+d/2} cos(m theta_i)) — the "rotate half" layout used by GPT-NeoX / LLaMA.
Then <R_m q, R_n k> depends only on m - n.

Frequency changes for a model trained at length L and run at k*L (``k = factor``; ``d`` = head dim):

* ``"linear"`` — position interpolation (PI): theta_i / k.
* ``"ntk-old"`` — base conversion of post 9675: base -> base * k.
* ``"ntk"`` — bloc97's NTK-aware scaling: base -> base * k^(d/(d-2)) (lowest frequency exactly / k).
* ``"ntk-fixed"`` — post 9706: (base * k)^(-2i/d) / k^(2/d).
* ``"ntk-mixed"`` — post 9706: digit m = i+1 divided by exp(a m^b), a = ln k / (d/2)^b
  (b = 1: ntk-fixed, b = 0: linear).
* ``"dynamic"`` — HF transformers' dynamic NTK: base * (f T / L - (f - 1))^(d/(d-2)) for the current
  total length T > L (f = factor), recomputed per forward pass.
* ``"yarn"`` — HF transformers' YaRN frequencies (linear ramp over the pair index between the
  beta_fast / beta_slow rotation counts) with logits multiplied by (0.1 ln k + 1)^2.
* ``"llama3"`` — HF transformers' Llama-3.1 wavelength-band interpolation.

The ``linear``, ``dynamic``, ``yarn`` and ``llama3`` frequencies equal those of
``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` (computed here in float64).

ReRoPE / Leaky ReRoPE replace the relative position i - j by min(i - j, w), respectively by
i - j inside the window and w + (i - j - w) / k outside it. Because that matrix is not of the
form "position of i minus position of j", prefill needs two logit passes
(:func:`rerope_logits`); a single query can instead re-rotate raw keys (:func:`rectified_rope_logits`).

Posts: "Transformer升级之路：2、博采众长的旋转式位置编码" (2021-03-23, kexue.fm/archives/8265);
"Transformer升级之路：10、RoPE是一种β进制编码" (2023-07-06, kexue.fm/archives/9675);
"Transformer升级之路：11、将β进制位置进行到底" (2023-07-31, kexue.fm/archives/9706);
"Transformer升级之路：12、无限外推的ReRoPE？" (2023-08-07, kexue.fm/archives/9708);
"Transformer升级之路：13、逆用Leaky ReRoPE" (2023-08-14, kexue.fm/archives/9728);
"Transformer升级之路：16、“复盘”长度外推技术" (2024-01-26, kexue.fm/archives/9948).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ROPE_SCALINGS",
    "RopeScaling",
    "apply_rope",
    "apply_rotary",
    "dynamic_ntk_inv_freq",
    "leaky_rerope_factor",
    "linear_inv_freq",
    "llama3_inv_freq",
    "ntk_inv_freq",
    "ntk_mixed_inv_freq",
    "ntk_mixed_lambdas",
    "rectified_max_position",
    "rectified_relative_positions",
    "rectified_rope_logits",
    "rerope_logits",
    "rope_angles",
    "rope_cos_sin",
    "rope_inv_freq",
    "rotate_half",
    "yarn_attention_factor",
    "yarn_inv_freq",
]

ROPE_SCALINGS: tuple[str, ...] = (
    "none",
    "linear",
    "ntk-old",
    "ntk",
    "ntk-fixed",
    "ntk-mixed",
    "dynamic",
    "yarn",
    "llama3",
)


def rope_inv_freq(dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Frequencies ``theta_i = base^(-2i/dim)`` for ``i = 0 .. dim/2 - 1`` (``dim`` must be even)."""
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2 or dim % 2:
        raise ValueError(f"rope dim must be an even int >= 2, got {dim!r}")
    if not base > 1:
        raise ValueError(f"rope base must be > 1, got {base}")
    exponent = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    return (float(base) ** -exponent).to(dtype)


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of ``positions[..., None] * inv_freq``, repeated to full width ``dim``."""
    ang = positions.to(inv_freq.dtype)[..., None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``(x1, x2) -> (-x2, x1)`` on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` of shape ``(..., L, dim)`` by the angles of ``positions`` (shape ``(L,)`` or
    broadcastable to ``x.shape[:-1]``)."""
    if x.shape[-1] != 2 * inv_freq.shape[-1]:
        raise ValueError(
            f"last dim of x ({x.shape[-1]}) must be twice the number of frequencies ({inv_freq.shape[-1]})"
        )
    cos, sin = rope_angles(positions, inv_freq.to(torch.float32 if x.dtype != torch.float64 else x.dtype))
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


# --- float64 angles -------------------------------------------------------------------------


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos``/``sin`` of ``positions[..., None] * inv_freq`` at full width, angles computed in float64.

    Positions may be non-integer (interpolated). Only the result is cast to ``dtype``: angles reach
    ``n * theta_0 = n`` radians, where float32 would lose several digits for long contexts.
    """
    if not isinstance(positions, torch.Tensor):
        raise TypeError(f"positions must be a tensor, got {type(positions).__name__}")
    ang = positions.to(torch.float64)[..., None] * inv_freq.to(device=positions.device, dtype=torch.float64)
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with ``cos``/``sin`` from :func:`rope_cos_sin`."""
    if x.shape[-1] != cos.shape[-1] or cos.shape != sin.shape:
        raise ValueError(
            f"cos/sin of shape {tuple(cos.shape)}/{tuple(sin.shape)} do not fit x of shape {tuple(x.shape)}"
        )
    return x * cos + rotate_half(x) * sin


# --- frequency variants ---------------------------------------------------------------------


def _check_dim(dim: int, minimum: int = 2) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < minimum or dim % 2:
        raise ValueError(f"rope head dim must be an even int >= {minimum}, got {dim!r}")
    return dim


def _check_base(base: float) -> float:
    if isinstance(base, bool) or not isinstance(base, int | float) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"rope base must be a finite number > 1, got {base!r}")
    return float(base)


def _check_factor(factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not math.isfinite(factor):
        raise ValueError(f"scaling factor must be a finite number >= 1, got {factor!r}")
    if factor < 1:
        raise ValueError(f"scaling factor k = L_test / L_train must be >= 1, got {factor}")
    return float(factor)


def _check_length(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def linear_inv_freq(dim: int, base: float, factor: float) -> torch.Tensor:
    """Position interpolation (Chen et al. 2023, HF ``"linear"``): ``theta_i / k`` (float64)."""
    return rope_inv_freq(_check_dim(dim), _check_base(base), torch.float64) / _check_factor(factor)


def ntk_inv_freq(dim: int, base: float, factor: float, variant: str = "bloc97") -> torch.Tensor:
    """NTK-aware base changes (float64).

    ``variant="old"``: base ``b -> b k`` (post 9675); ``"bloc97"``: ``b -> b k^(d/(d-2))`` (the
    library "NTK"; the lowest frequency becomes exactly ``theta_{d/2-1} / k``); ``"fixed"``:
    ``(b k)^(-2i/d) / k^(2/d)`` (post 9706).
    """
    _check_dim(dim, 4 if variant == "bloc97" else 2)
    base, factor = _check_base(base), _check_factor(factor)
    if variant == "old":
        return rope_inv_freq(dim, base * factor, torch.float64)
    if variant == "bloc97":
        return rope_inv_freq(dim, base * factor ** (dim / (dim - 2)), torch.float64)
    if variant == "fixed":
        return rope_inv_freq(dim, base * factor, torch.float64) / factor ** (2.0 / dim)
    raise ValueError(f"NTK variant must be 'old', 'bloc97' or 'fixed', got {variant!r}")


def ntk_mixed_lambdas(dim: int, factor: float, b_mix: float = 0.625) -> torch.Tensor:
    """Per-digit base multipliers ``lambda_m`` (m = 1..d/2) of NTK-RoPE-mixed (post 9706).

    ``prod_{l<=m} lambda_l = exp(a m^b)`` with ``a = ln k / (d/2)^b``, so ``prod_m lambda_m = k``.
    """
    _check_dim(dim)
    factor = _check_factor(factor)
    if isinstance(b_mix, bool) or not isinstance(b_mix, int | float) or not 0.0 <= b_mix <= 1.0:
        raise ValueError(f"b_mix must be in [0, 1], got {b_mix!r}")
    m = torch.arange(1, dim // 2 + 1, dtype=torch.float64)
    a = math.log(factor) / (dim / 2) ** b_mix
    cum = a * m.pow(b_mix)
    prev = torch.cat([torch.zeros(1, dtype=torch.float64), cum[:-1]])
    return torch.exp(cum - prev)


def ntk_mixed_inv_freq(dim: int, base: float, factor: float, b_mix: float = 0.625) -> torch.Tensor:
    """NTK-RoPE-mixed: ``theta_m = beta^-(m-1) / exp(a m^b)``, ``beta = base^(2/d)`` (float64).

    Digits are counted from ``m = 1``, so even the highest frequency is divided by ``exp(a)``.
    ``b_mix = 1`` gives ``ntk-fixed``, ``b_mix = 0`` gives linear interpolation.
    """
    lam = ntk_mixed_lambdas(dim, factor, b_mix)
    return rope_inv_freq(dim, _check_base(base), torch.float64) / torch.cumprod(lam, 0)


def dynamic_ntk_inv_freq(
    dim: int, base: float, factor: float, seq_len: int, original_length: int
) -> torch.Tensor:
    """HF ``"dynamic"`` NTK: ``base * (f T/L - (f - 1))^(d/(d-2))`` with ``T = max(seq_len, L)``."""
    _check_dim(dim, 4)
    base, factor = _check_base(base), _check_factor(factor)
    seq_len = max(_check_length("seq_len", seq_len), _check_length("original_length", original_length))
    scaled = base * (factor * seq_len / original_length - (factor - 1)) ** (dim / (dim - 2))
    return rope_inv_freq(dim, scaled, torch.float64)


def yarn_attention_factor(factor: float, mscale: float = 1.0) -> float:
    """YaRN's cos/sin multiplier ``0.1 mscale ln k + 1`` (1 for ``k <= 1``); logits get its square."""
    factor = _check_factor(factor)
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(
    dim: int,
    base: float,
    factor: float,
    original_length: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> torch.Tensor:
    """YaRN frequencies as in HF transformers (float64).

    Pair index ``i`` keeps ``theta_i`` when ``L theta_i / (2 pi) >= beta_fast`` turns fit in the
    training length and is interpolated to ``theta_i / k`` when fewer than ``beta_slow`` turns fit; in
    between the mix is a linear ramp in ``i`` (ends rounded outwards when ``truncate``).
    """
    dim = _check_dim(dim)
    base, factor = _check_base(base), _check_factor(factor)
    original_length = _check_length("original_length", original_length)
    if not 0 < beta_slow < beta_fast:
        raise ValueError(f"need 0 < beta_slow < beta_fast, got beta_slow={beta_slow}, beta_fast={beta_fast}")

    def pair_index(turns: float) -> float:
        return dim * math.log(original_length / (turns * 2 * math.pi)) / (2 * math.log(base))

    low, high = pair_index(beta_fast), pair_index(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    inv = rope_inv_freq(dim, base, torch.float64)
    return inv / factor * ramp + inv * (1 - ramp)


def llama3_inv_freq(
    dim: int,
    base: float,
    factor: float,
    original_length: int,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> torch.Tensor:
    """HF ``"llama3"``: wavelengths above ``L / low_freq_factor`` are interpolated by ``k``, below
    ``L / high_freq_factor`` kept, and smoothly mixed in between (float64)."""
    dim = _check_dim(dim)
    base, factor = _check_base(base), _check_factor(factor)
    original_length = _check_length("original_length", original_length)
    if not 0 < low_freq_factor < high_freq_factor:
        raise ValueError(
            f"need 0 < low_freq_factor < high_freq_factor, got {low_freq_factor}, {high_freq_factor}"
        )
    inv = rope_inv_freq(dim, base, torch.float64)
    wavelen = 2 * math.pi / inv
    smooth = (original_length / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    mixed = (1 - smooth) * inv / factor + smooth * inv
    out = torch.where(wavelen > original_length / low_freq_factor, inv / factor, inv)
    medium = (wavelen >= original_length / high_freq_factor) & (wavelen <= original_length / low_freq_factor)
    return torch.where(medium, mixed, out)


_HF_KINDS = {"default": "none", "linear": "linear", "dynamic": "dynamic", "yarn": "yarn", "llama3": "llama3"}


@dataclass(frozen=True)
class RopeScaling:
    """A frequency-scaling recipe: ``kind`` (one of :data:`ROPE_SCALINGS`) and its parameters.

    ``factor`` is ``k = L_test / L_train``; ``original_length`` is the training length ``L`` (required
    by ``dynamic``, ``yarn`` and ``llama3``; with ``linear`` it also bounds the usable length to
    ``k L``). ``RopeScaling("ntk", 4.0).inv_freq(32)`` gives bloc97's frequencies for head dim 32.
    """

    kind: str = "none"
    factor: float = 1.0
    original_length: int | None = None
    b_mix: float = 0.625
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALINGS:
            raise ValueError(f"unknown RoPE scaling {self.kind!r}; choose one of {ROPE_SCALINGS}")
        _check_factor(self.factor)
        if self.original_length is not None:
            _check_length("original_length", self.original_length)
        elif self.kind in ("dynamic", "yarn", "llama3"):
            raise ValueError(f"RoPE scaling {self.kind!r} needs original_length (the training length)")

    def inv_freq(self, dim: int, base: float = 10000.0, seq_len: int | None = None) -> torch.Tensor:
        """Frequencies for head dim ``dim`` (float64); ``seq_len`` (total length) is used by ``dynamic``."""
        k = self.kind
        if k == "none":
            return rope_inv_freq(_check_dim(dim), _check_base(base), torch.float64)
        if k == "linear":
            return linear_inv_freq(dim, base, self.factor)
        if k in ("ntk-old", "ntk", "ntk-fixed"):
            return ntk_inv_freq(dim, base, self.factor, {"ntk-old": "old", "ntk": "bloc97"}.get(k, "fixed"))
        if k == "ntk-mixed":
            return ntk_mixed_inv_freq(dim, base, self.factor, self.b_mix)
        assert self.original_length is not None
        if k == "dynamic":
            t = self.original_length if seq_len is None else seq_len
            return dynamic_ntk_inv_freq(dim, base, self.factor, t, self.original_length)
        if k == "yarn":
            return yarn_inv_freq(
                dim, base, self.factor, self.original_length, self.beta_fast, self.beta_slow, self.truncate
            )
        return llama3_inv_freq(
            dim, base, self.factor, self.original_length, self.low_freq_factor, self.high_freq_factor
        )

    @property
    def logit_scale(self) -> float:
        """Multiplier of the attention logits: ``(0.1 ln k + 1)^2`` for YaRN, else 1."""
        return yarn_attention_factor(self.factor) ** 2 if self.kind == "yarn" else 1.0

    def check_length(self, seq_len: int) -> None:
        """Raise if ``seq_len`` is beyond what the recipe covers (linear interpolation: ``k L``)."""
        if self.kind == "linear" and self.original_length is not None:
            limit = self.factor * self.original_length
            if seq_len > limit:
                raise ValueError(
                    f"linear interpolation with factor {self.factor} covers {limit:g} positions "
                    f"(factor x original_length {self.original_length}), got a sequence of {seq_len}"
                )

    @classmethod
    def from_hf(cls, params: dict[str, Any], max_position_embeddings: int | None = None) -> RopeScaling:
        """Build from a transformers ``rope_scaling`` / ``rope_parameters`` dict
        (``rope_type`` in ``default``, ``linear``, ``dynamic``, ``yarn``, ``llama3``)."""
        if not isinstance(params, dict):
            raise TypeError(f"params must be a dict, got {type(params).__name__}")
        rope_type = params.get("rope_type", params.get("type", "default"))
        if rope_type not in _HF_KINDS:
            raise ValueError(f"unsupported rope_type {rope_type!r}; supported: {sorted(_HF_KINDS)}")
        original = params.get("original_max_position_embeddings", max_position_embeddings)
        kw: dict[str, Any] = {"kind": _HF_KINDS[rope_type], "factor": float(params.get("factor", 1.0))}
        if original is not None:
            kw["original_length"] = int(original)
        for key in ("beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor", "truncate"):
            if params.get(key) is not None:
                kw[key] = params[key]
        return cls(**kw)


# --- ReRoPE / Leaky ReRoPE ------------------------------------------------------------------


def _check_window(window: int) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"ReRoPE window must be an int >= 1, got {window!r}")
    return window


def _check_leaky(leaky_factor: float | None) -> float | None:
    if leaky_factor is None or leaky_factor == math.inf:
        return None
    if isinstance(leaky_factor, bool) or not isinstance(leaky_factor, int | float) or not leaky_factor > 0:
        raise ValueError(f"Leaky ReRoPE factor k must be > 0 (or None for ReRoPE), got {leaky_factor!r}")
    return float(leaky_factor)


def rectified_relative_positions(
    rel: torch.Tensor, window: int, leaky_factor: float | None = None
) -> torch.Tensor:
    """ReRoPE ``min(rel, w)`` (``leaky_factor=None``) or Leaky ``rel`` if ``rel < w`` else
    ``w + (rel - w) / k``. ``k = 1`` is plain RoPE; ``k < 1`` (InvLeaky training) stretches."""
    window, leaky = _check_window(window), _check_leaky(leaky_factor)
    rel = rel.to(torch.float64)
    far = torch.full_like(rel, float(window)) if leaky is None else window + (rel - window) / leaky
    return torch.where(rel < window, rel, far)


def rectified_max_position(seq_len: int, window: int, leaky_factor: float | None = None) -> float:
    """Largest rectified relative position in a causal sequence of ``seq_len`` tokens."""
    seq_len = _check_length("seq_len", seq_len)
    rel = torch.tensor([float(seq_len - 1)])
    return float(rectified_relative_positions(rel, window, leaky_factor)[0])


def leaky_rerope_factor(max_length: int, window: int, train_length: int, fraction: float = 0.5) -> float:
    """Smallest integer ``k`` with ``w + (max_length - 1 - w) / k <= fraction * train_length``
    (post 9708's rule with fraction 1/2), at least 1."""
    _check_length("max_length", max_length)
    _check_window(window)
    _check_length("train_length", train_length)
    room = fraction * train_length - window
    if room <= 0:
        raise ValueError(f"window {window} leaves no room below {fraction} x train_length {train_length}")
    return float(max(1, math.ceil((max_length - 1 - window) / room)))


def _positions(p: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    if p is None:
        return torch.arange(n, device=device, dtype=torch.float64)
    if p.shape != (n,):
        raise ValueError(f"positions must have shape ({n},), got {tuple(p.shape)}")
    return p.to(torch.float64)


def rerope_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    window: int,
    leaky_factor: float | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Two-pass (Leaky) ReRoPE logits ``q_i . R^{-p_ij} k_j`` for raw (un-rotated) ``q``, ``k``.

    ``q``: ``(..., Tq, d)``, ``k``: ``(..., Tk, d)``; returns ``(..., Tq, Tk)`` without any scale.
    Pass 1 is plain RoPE ``(R^i q_i).(R^j k_j)``; pass 2 is ``(R^w q_i).k_j`` (ReRoPE) or
    ``(R^{(i-w)/k + w} q_i).(R^{j/k} k_j)`` (Leaky); entries with ``i - j < w`` take pass 1.
    """
    window, leaky = _check_window(window), _check_leaky(leaky_factor)
    if q.shape[-1] != k.shape[-1] or q.shape[-1] != 2 * inv_freq.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and {inv_freq.shape[-1]} frequencies disagree"
        )
    qp = _positions(q_positions, q.shape[-2], q.device)
    kp = _positions(k_positions, k.shape[-2], k.device)
    a1 = apply_rotary(q, *rope_cos_sin(qp, inv_freq, q.dtype)) @ apply_rotary(
        k, *rope_cos_sin(kp, inv_freq, k.dtype)
    ).transpose(-1, -2)
    if leaky is None:
        qw = apply_rotary(q, *rope_cos_sin(torch.full_like(qp[:1], window), inv_freq, q.dtype))
        a2 = qw @ k.transpose(-1, -2)
    else:
        q2 = apply_rotary(q, *rope_cos_sin((qp - window) / leaky + window, inv_freq, q.dtype))
        k2 = apply_rotary(k, *rope_cos_sin(kp / leaky, inv_freq, k.dtype))
        a2 = q2 @ k2.transpose(-1, -2)
    near = (qp[:, None] - kp[None, :]) < window
    return torch.where(near, a1, a2)


def rectified_rope_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    inv_freq: torch.Tensor,
    window: int,
    leaky_factor: float | None = None,
    q_positions: torch.Tensor | None = None,
    k_positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Direct form of :func:`rerope_logits`: every key is rotated by ``-p_ij`` relative to its query.

    This is the decoding path (one query against cached raw keys); its memory is
    ``Tq * Tk * d``, so for prefill use the two-pass :func:`rerope_logits`.
    """
    if q.shape[-1] != k.shape[-1] or q.shape[-1] != 2 * inv_freq.shape[-1]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)} and {inv_freq.shape[-1]} frequencies disagree"
        )
    qp = _positions(q_positions, q.shape[-2], q.device)
    kp = _positions(k_positions, k.shape[-2], k.device)
    rel = rectified_relative_positions(qp[:, None] - kp[None, :], window, leaky_factor)
    cos, sin = rope_cos_sin(-rel, inv_freq, k.dtype)  # (Tq, Tk, d)
    k_rot = apply_rotary(k.unsqueeze(-3), cos, sin)  # (..., Tq, Tk, d)
    return (q.unsqueeze(-2) * k_rot).sum(-1)
