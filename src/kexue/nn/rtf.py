"""RTF: the rational transfer-function state-space layer (state-free kernels by FFT).

A linear time-invariant SSM ``x_{k+1} = A x_k + B u_k``, ``y_k = C^T x_k`` is a causal convolution with
kernel ``K_k = C^T A^k B``. On the ``L``-th roots of unity (``z^L = 1``) its truncated generating function
is a rational function of degree ``d-1`` over degree ``d``::

    G_L(z) = sum_{k<L} K_k z^k = C~^T (I - zA)^{-1} B
           = (b_1 + b_2 z + ... + b_d z^{d-1}) / (1 + a_1 z + ... + a_d z^d),   C~^T = C^T (I - A^L).

Parameterising a channel directly by the ``2d`` coefficients ``(a, b)``, the kernel is the ratio of two
zero-padded FFTs, ``K = irfft(rfft(b, n=L) / rfft([1, a], n=L), n=L)``: ``O(L log L)`` time and ``O(L)``
memory whatever the state size ``d < L`` (:func:`rtf_kernel`). For step-by-step generation the same
coefficients define a companion-matrix recurrence (:func:`companion_matrix`) with ``B = e_1`` and the
corrected read-out ``C = (I - A^L)^{-T} b`` (:func:`recurrent_readout`); one step costs ``O(d)``
(:func:`rtf_step`). Any dense SSM maps to an RTF through characteristic polynomials
(:func:`rtf_coefficients_from_ssm`).

Two kernel conventions are supported:

* ``"post"``: ``K_k = C^T A^k B`` (``k = 0..L-1``); the layer adds the skip term ``h0 * u``.
* ``"paper"`` (what users of the official ``rtf.py`` expect): ``H(z) = h0 + (b_1 z^-1 + ... + b_d z^-d) /
  (1 + a_1 z^-1 + ... + a_d z^-d)``, i.e. ``k_0 = h0`` and ``k_j = C^T A^{j-1} B``. It is computed exactly as
  ``[h0, g_0, ..., g_{L-2}]`` with ``g`` the post-convention kernel at length ``L`` (no wrap-around term).

Stability: the poles are the roots of ``lambda^d + a_1 lambda^{d-1} + ... + a_d``; ``sum |a_i| < 1`` is
sufficient for all of them to lie strictly inside the unit circle (the ``"l1_montel"`` constraint
enforces it). The default ``a = 0`` makes the layer a length-``d`` shift register, i.e. an FIR filter ``b``.

Post: "重温SSM(四):有理生成函数的新视角" (Revisiting SSMs (IV): the rational generating-function view),
2024-06-27, kexue.fm/archives/10180. Paper: Parnichkun et al., "State-Free Inference of State-Space Models:
The Transfer Function Approach", ICML 2024 (arXiv 2405.06147).
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "RTF",
    "RTFSequenceModel",
    "companion_matrix",
    "denominator_min_modulus",
    "rtf_coefficients_from_ssm",
    "rtf_kernel",
    "rtf_kernel_recurrent",
    "rtf_recurrent_scan",
    "rtf_step",
    "recurrent_readout",
    "s4d_init",
    "s4d_vandermonde_kernel",
    "ssm_param_groups",
]

Convention = Literal["post", "paper"]
_CONVENTIONS = ("post", "paper")


# --- validation -----------------------------------------------------------------------------


def _check_length(length: object, state_size: int) -> int:
    if isinstance(length, bool) or not isinstance(length, int):
        raise TypeError(f"length must be an int, got {type(length).__name__}")
    if length <= state_size:
        raise ValueError(
            f"length must be greater than the state size d={state_size} (RTF needs d < L), got {length}"
        )
    return length


def _check_state_size(state_size: object) -> int:
    if isinstance(state_size, bool) or not isinstance(state_size, int):
        raise TypeError(f"state_size must be an int, got {type(state_size).__name__}")
    if state_size < 1:
        raise ValueError(f"state_size must be >= 1, got {state_size}")
    return state_size


def _check_float(name: str, t: object) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    return t


def _check_finite(name: str, t: torch.Tensor) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf")


def _check_coefficients(a: torch.Tensor, b: torch.Tensor) -> int:
    _check_float("a", a)
    _check_float("b", b)
    if a.dim() < 1 or b.dim() < 1:
        raise ValueError(
            f"a and b must have a last dimension d, got shapes {tuple(a.shape)}, {tuple(b.shape)}"
        )
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(
            f"a and b must have the same state size (last dim), got {a.shape[-1]} and {b.shape[-1]}"
        )
    d = a.shape[-1]
    if d < 1:
        raise ValueError(f"state size must be >= 1, got {d}")
    _check_finite("a", a)
    _check_finite("b", b)
    return d


def _check_convention(convention: str) -> None:
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")


def _default_min_denominator(dtype: torch.dtype) -> float:
    return 10.0 * torch.finfo(dtype).eps


# --- kernels --------------------------------------------------------------------------------


def denominator_min_modulus(a: torch.Tensor, length: int) -> float:
    """``min_z |1 + a_1 z + ... + a_d z^d|`` over the ``length``-th roots of unity (0 means a pole on them)."""
    _check_float("a", a)
    d = a.shape[-1]
    _check_length(length, d)
    den = torch.cat([torch.ones_like(a[..., :1]), a], dim=-1)
    return float(torch.fft.rfft(den.detach(), n=length).abs().min())


def rtf_kernel(
    a: torch.Tensor,
    b: torch.Tensor,
    length: int,
    h0: torch.Tensor | None = None,
    *,
    convention: Convention = "post",
    min_denominator: float | None = None,
) -> torch.Tensor:
    """Convolution kernel of the RTF with denominators ``a`` and numerators ``b`` (``(..., d)`` each).

    ``post``: ``K = irfft(rfft(b, n=L) / rfft([1, a], n=L), n=L)``, the exact truncated impulse response
    ``K_k = C^T A^k B`` of the companion realisation with ``C = (I - A^L)^{-T} b``. ``paper``: ``[h0,
    K_0, ..., K_{L-2}]`` (``h0`` of shape ``a.shape[:-1]`` required). Returns shape ``(..., L)``; leading
    dims of ``a`` and ``b`` broadcast. Raises ``ValueError`` when ``1 + a(z)`` (nearly) vanishes on a root of
    unity (modulus below ``min_denominator``, default ``10 * eps`` of the dtype).
    """
    _check_convention(convention)
    d = _check_coefficients(a, b)
    _check_length(length, d)
    den = torch.cat([torch.ones_like(a[..., :1]), a], dim=-1)
    den_f = torch.fft.rfft(den, n=length)
    num_f = torch.fft.rfft(b, n=length)
    smallest = float(den_f.detach().abs().min())
    floor = _default_min_denominator(den_f.real.dtype) if min_denominator is None else float(min_denominator)
    if not smallest > floor:
        raise ValueError(
            f"the denominator 1 + a(z) nearly vanishes on the unit circle (min modulus {smallest:.3e} <= "
            f"{floor:.3e}): a pole lies on a {length}-th root of unity; move a away from it"
        )
    g = torch.fft.irfft(num_f / den_f, n=length)
    if convention == "post":
        return g
    if h0 is None:
        raise ValueError("convention='paper' needs h0 (the direct term k_0)")
    _check_float("h0", h0)
    h0 = h0.expand(g.shape[:-1])
    return torch.cat([h0.unsqueeze(-1).to(g.dtype), g[..., : length - 1]], dim=-1)


def companion_matrix(a: torch.Tensor) -> torch.Tensor:
    """Companion matrix ``[[-a_1 .. -a_d], [1, 0 ..], .., [0 .. 1, 0]]`` of shape ``(..., d, d)``.

    Its characteristic polynomial is ``lambda^d + a_1 lambda^{d-1} + ... + a_d``.
    """
    _check_float("a", a)
    d = a.shape[-1]
    if d < 1:
        raise ValueError(f"state size must be >= 1, got {d}")
    A = torch.zeros(*a.shape, d, dtype=a.dtype, device=a.device)
    A[..., 0, :] = -a
    if d > 1:
        idx = torch.arange(d - 1, device=a.device)
        A[..., idx + 1, idx] = 1.0
    return A


def recurrent_readout(
    a: torch.Tensor, b: torch.Tensor, length: int, *, warn_unstable: bool = True
) -> torch.Tensor:
    """Read-out ``C = (I - A^L)^{-T} b`` that makes the companion recurrence reproduce :func:`rtf_kernel`.

    ``A^L`` is formed by repeated squaring; one ``d x d`` solve per channel. Warns when a pole lies outside
    the unit circle (the two forms then agree algebraically but diverge numerically).
    """
    d = _check_coefficients(a, b)
    _check_length(length, d)
    a, b = torch.broadcast_tensors(a, b)
    A = companion_matrix(a)
    if warn_unstable:
        radius = float(torch.linalg.eigvals(A.detach()).abs().max())
        if radius > 1.0 + 1e-9:
            warnings.warn(
                f"RTF denominator has a pole of modulus {radius:.4g} > 1: the recurrence is unstable and will "
                "drift from the FFT kernel; use recurrent inference only for stable systems",
                RuntimeWarning,
                stacklevel=2,
            )
    eye = torch.eye(d, dtype=a.dtype, device=a.device)
    M = (eye - torch.linalg.matrix_power(A, length)).transpose(-1, -2)
    return torch.linalg.solve(M, b.unsqueeze(-1)).squeeze(-1)


def rtf_step(
    state: torch.Tensor,
    u: torch.Tensor,
    a: torch.Tensor,
    c: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    convention: Convention = "post",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One ``O(d)`` step of the companion recurrence: returns ``(y_k, x_{k+1})``.

    ``x_{k+1} = (u_k - a . x_k, x_k[0], ..., x_k[d-2])``. ``paper``: ``y_k = c . x_k + h0 u_k``;
    ``post``: ``y_k = c . x_{k+1}`` (plus ``h0 u_k`` when ``h0`` is given, as in the layer's skip term).
    ``state`` has shape ``(..., d)``, ``u`` shape ``(...)``; ``a`` and ``c`` broadcast against ``state``.
    """
    _check_convention(convention)
    head = u - (a * state).sum(-1)
    new_state = torch.cat([head.unsqueeze(-1), state[..., :-1]], dim=-1)
    if convention == "paper":
        if h0 is None:
            raise ValueError("convention='paper' needs h0 (the direct term)")
        y = (c * state).sum(-1) + h0 * u
    else:
        y = (c * new_state).sum(-1)
        if h0 is not None:
            y = y + h0 * u
    return y, new_state


def rtf_recurrent_scan(
    u: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    h0: torch.Tensor | None = None,
    *,
    length: int | None = None,
    convention: Convention = "post",
) -> torch.Tensor:
    """Run the recurrence over ``u`` of shape ``(..., T)`` (channel dims broadcast with ``a``'s leading dims).

    The read-out is corrected for the kernel length ``length`` (default ``T``), so the result equals the
    causal convolution with ``rtf_kernel(a, b, length)`` on the first ``T <= length`` steps.
    """
    _check_float("u", u)
    d = _check_coefficients(a, b)
    steps = u.shape[-1]
    length = steps if length is None else length
    _check_length(length, d)
    if steps > length:
        raise ValueError(f"u has {steps} steps but the read-out was built for length {length}")
    c = recurrent_readout(a, b, length)
    a_b = a.expand_as(c)
    state = torch.zeros(
        *torch.broadcast_shapes(u.shape[:-1], c.shape[:-1]), d, dtype=u.dtype, device=u.device
    )
    ys = []
    for k in range(steps):
        y, state = rtf_step(state, u[..., k], a_b, c, h0, convention=convention)
        ys.append(y)
    return torch.stack(ys, dim=-1)


def rtf_kernel_recurrent(
    a: torch.Tensor,
    b: torch.Tensor,
    length: int,
    h0: torch.Tensor | None = None,
    *,
    convention: Convention = "post",
) -> torch.Tensor:
    """The kernel as the impulse response of the explicit companion recurrence (``O(L d)``; a reference)."""
    d = _check_coefficients(a, b)
    _check_length(length, d)
    shape = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    impulse = torch.zeros(*shape, length, dtype=a.dtype, device=a.device)
    impulse[..., 0] = 1.0
    if convention == "paper" and h0 is None:
        raise ValueError("convention='paper' needs h0 (the direct term k_0)")
    return rtf_recurrent_scan(impulse, a, b, h0 if convention == "paper" else None, convention=convention)


def rtf_coefficients_from_ssm(
    A: np.ndarray | torch.Tensor, B: np.ndarray | torch.Tensor, C: np.ndarray | torch.Tensor, length: int
) -> tuple[np.ndarray, np.ndarray]:
    """RTF coefficients ``(a, b)`` of a dense single-input single-output SSM ``(A, B, C)`` at length ``L``.

    ``a`` = coefficients of ``det(lambda I - A)`` without the leading 1, ``b`` = coefficients (high to low
    degree) of ``det(lambda I - A + B C~^T) - det(lambda I - A)`` with ``C~ = (I - A^L)^T C``, so that
    ``rtf_kernel(a, b, L)`` equals ``K_k = C^T A^k B``. Float64 NumPy arrays in and out.
    """
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64).reshape(-1)
    C = np.asarray(C, dtype=np.float64).reshape(-1)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {A.shape}")
    d = A.shape[0]
    _check_state_size(d)
    if B.shape != (d,) or C.shape != (d,):
        raise ValueError(f"B and C must have {d} entries, got {B.shape} and {C.shape}")
    if not (np.isfinite(A).all() and np.isfinite(B).all() and np.isfinite(C).all()):
        raise ValueError("A, B, C must be finite")
    _check_length(length, d)
    c_tilde = (np.eye(d) - np.linalg.matrix_power(A, length)).T @ C
    den = np.poly(A)
    num = np.poly(A - np.outer(B, c_tilde)) - den
    return den[1:].real.copy(), num[1:].real.copy()


# --- S4D baseline (for the state-size comparison) -------------------------------------------


def s4d_init(
    channels: int,
    state_size: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S4D-Lin parameters for ``channels`` channels of real state size ``state_size`` (``state_size // 2``
    complex conjugate modes): ``(log_dt (H,), A (H, N/2) complex, C (H, N/2) complex)``."""
    _check_state_size(state_size)
    n = max(state_size // 2, 1)
    log_dt = torch.rand(channels, generator=generator, dtype=dtype) * (
        math.log(0.1) - math.log(1e-3)
    ) + math.log(1e-3)
    a_re = -0.5 * torch.ones(channels, n, dtype=dtype)
    a_im = math.pi * torch.arange(n, dtype=dtype).expand(channels, n)
    c = torch.complex(
        torch.randn(channels, n, generator=generator, dtype=dtype),
        torch.randn(channels, n, generator=generator, dtype=dtype),
    ) * math.sqrt(0.5)
    return log_dt, torch.complex(a_re, a_im), c


def s4d_vandermonde_kernel(
    log_dt: torch.Tensor, A: torch.Tensor, C: torch.Tensor, length: int
) -> torch.Tensor:
    """S4D kernel ``K_l = 2 Re sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l)`` by a Vandermonde product.

    Materialises an ``(H, N, L)`` complex tensor: ``O(H N L)`` time and memory, growing with the state size.
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be a positive int, got {length!r}")
    dtA = A * log_dt.exp().unsqueeze(-1)
    steps = torch.arange(length, dtype=log_dt.dtype, device=log_dt.device)
    vander = torch.exp(dtA.unsqueeze(-1) * steps)
    coef = C * (torch.exp(dtA) - 1.0) / A
    return 2 * torch.einsum("hn,hnl->hl", coef, vander).real


# --- the layer ------------------------------------------------------------------------------


_INITS = ("zeros", "xavier", "montel")
_CONSTRAINTS = ("none", "l1_montel")


def _causal_fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Linear (zero-padded) causal convolution along the last dim: ``u (..., H, L)``, ``k (H, L)``."""
    length = u.shape[-1]
    n = 2 * length
    y = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)
    return y[..., :length]


class RTF(nn.Module):
    """Rational transfer-function SSM layer: input ``(B, L, H)`` -> output ``(B, L, H)``.

    Per channel ``2d + 1`` parameters (``b``, ``h0`` and the denominators ``a``, optionally shared by
    ``num_a`` groups of channels). The kernel is recomputed for the length of each input (any ``L > d``).

    Args:
        d_model: number of channels ``H``.
        state_size: ``d`` (>= 1), the degree of the denominator.
        num_a: number of distinct denominators (``H`` must be divisible by it); default one per channel.
        dropout: dropout probability applied to the kernel during training.
        bidirectional: add an anti-causal kernel with its own coefficients (no recurrent form then).
        init: ``"zeros"`` (a = b = 0; the paper default), ``"xavier"`` (uniform +-1/sqrt(d), may start
            unstable) or ``"montel"`` (uniform +-1/d, so ``sum |a| < 1``). ``h0 ~ N(0, 1)``.
        constraint: ``"none"`` or ``"l1_montel"`` (``a <- a / (||a||_1 + |s| + 1e-6)`` with a learnable
            scalar ``s`` initialised to 1, which keeps every pole strictly inside the unit circle).
        convention: ``"paper"`` (``k_0 = h0``, one-step delay on the rational part) or ``"post"``
            (``y = K * u + h0 u`` with ``K_k = C^T A^k B``).
    """

    def __init__(
        self,
        d_model: int,
        state_size: int,
        *,
        num_a: int | None = None,
        dropout: float = 0.0,
        bidirectional: bool = False,
        init: str = "zeros",
        constraint: str = "none",
        convention: Convention = "paper",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        _check_state_size(state_size)
        num_a = d_model if num_a is None else num_a
        if isinstance(num_a, bool) or not isinstance(num_a, int) or num_a < 1 or d_model % num_a:
            raise ValueError(f"num_a must be a positive divisor of d_model={d_model}, got {num_a!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}, got {init!r}")
        if constraint not in _CONSTRAINTS:
            raise ValueError(f"constraint must be one of {_CONSTRAINTS}, got {constraint!r}")
        _check_convention(convention)
        self.d_model, self.state_size, self.num_a = d_model, state_size, num_a
        self.bidirectional, self.init, self.constraint, self.convention = (
            bidirectional,
            init,
            constraint,
            convention,
        )
        n_dir = 2 if bidirectional else 1
        kw = {"dtype": dtype, "device": device}
        self.a = nn.Parameter(torch.empty(n_dir, num_a, state_size, **kw))
        self.b = nn.Parameter(torch.empty(n_dir, d_model, state_size, **kw))
        self.h0 = nn.Parameter(torch.empty(d_model, **kw))
        self.s = nn.Parameter(torch.ones((), **kw)) if constraint == "l1_montel" else None
        self.kernel_dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        d = self.state_size
        with torch.no_grad():
            if self.init == "zeros":
                self.a.zero_()
                self.b.zero_()
            else:
                bound = 1.0 / math.sqrt(d) if self.init == "xavier" else 1.0 / d
                self.a.uniform_(-bound, bound)
                self.b.uniform_(-bound, bound)
            self.h0.normal_()
            if self.s is not None:
                self.s.fill_(1.0)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, state_size={self.state_size}, num_a={self.num_a}, "
            f"bidirectional={self.bidirectional}, init={self.init!r}, constraint={self.constraint!r}, "
            f"convention={self.convention!r}"
        )

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Effective ``(a, b)``, each ``(directions, H, d)`` (constraint applied, shared ``a`` expanded)."""
        a = self.a
        if self.s is not None:
            a = a / (a.abs().sum(-1, keepdim=True) + self.s.abs() + 1e-6)
        a = a.repeat_interleave(self.d_model // self.num_a, dim=1)
        return a, self.b

    def kernel(self, length: int) -> torch.Tensor:
        """Causal kernel ``(H, L)`` (with ``h0`` at index 0 in the paper convention, without in post)."""
        a, b = self.coefficients()
        if self.convention == "paper":
            return rtf_kernel(a[0], b[0], length, self.h0, convention="paper")
        return rtf_kernel(a[0], b[0], length)

    def _anticausal_kernel(self, length: int) -> torch.Tensor:
        a, b = self.coefficients()
        g = rtf_kernel(a[1], b[1], length)
        return torch.cat([torch.zeros_like(g[..., :1]), g[..., : length - 1]], dim=-1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        _check_float("input", u)
        if u.dim() != 3:
            raise ValueError(f"RTF input must have shape (batch, length, d_model), got {tuple(u.shape)}")
        if u.shape[-1] != self.d_model:
            raise ValueError(f"RTF input has {u.shape[-1]} channels, expected d_model={self.d_model}")
        length = u.shape[1]
        _check_length(length, self.state_size)
        x = u.transpose(1, 2)
        k = self.kernel_dropout(self.kernel(length))
        y = _causal_fft_conv(x, k)
        if self.convention == "post":
            y = y + self.h0.unsqueeze(-1) * x
        if self.bidirectional:
            k_rev = self.kernel_dropout(self._anticausal_kernel(length))
            y = y + _causal_fft_conv(x.flip(-1), k_rev).flip(-1)
        return y.transpose(1, 2)

    # --- recurrent inference ---------------------------------------------------------------

    def step_readout(self, length: int) -> torch.Tensor:
        """Cache for :meth:`step`: the corrected read-out ``C (H, d)`` for sequences of length ``length``."""
        if self.bidirectional:
            raise ValueError("a bidirectional RTF has no causal recurrence; use forward()")
        a, b = self.coefficients()
        return recurrent_readout(a[0], b[0], length)

    def init_state(self, batch_size: int) -> torch.Tensor:
        """Zero state ``(batch, H, d)``."""
        return torch.zeros(
            batch_size, self.d_model, self.state_size, dtype=self.b.dtype, device=self.b.device
        )

    def step(
        self, u: torch.Tensor, state: torch.Tensor, readout: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ``O(H d)`` generation step: ``u (B, H)`` -> ``(y (B, H), new state (B, H, d))``."""
        if self.bidirectional:
            raise ValueError("a bidirectional RTF has no causal recurrence; use forward()")
        if u.dim() != 2 or u.shape[-1] != self.d_model:
            raise ValueError(f"step input must have shape (batch, {self.d_model}), got {tuple(u.shape)}")
        a, _ = self.coefficients()
        return rtf_step(state, u, a[0], readout, self.h0, convention=self.convention)

    def recurrent_forward(self, u: torch.Tensor) -> torch.Tensor:
        """Same output as :meth:`forward` (without kernel dropout), computed step by step in ``O(L H d)``."""
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"RTF input must have shape (batch, length, {self.d_model}), got {tuple(u.shape)}"
            )
        length = u.shape[1]
        readout = self.step_readout(length)
        state = self.init_state(u.shape[0]).to(u.dtype)
        ys = []
        for t in range(length):
            y, state = self.step(u[:, t], state, readout)
            ys.append(y)
        return torch.stack(ys, dim=1)


def ssm_param_groups(model: nn.Module, *, lr: float = 1e-3, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer parameter groups giving every :class:`RTF` parameter its own ``lr`` and ``weight_decay``
    (the S4 / RTF training convention: SSM coefficients at lr 1e-3 without weight decay); the rest keep the
    optimizer's defaults. Use as ``torch.optim.AdamW(ssm_param_groups(model), lr=3e-3)``."""
    ssm = [p for m in model.modules() if isinstance(m, RTF) for p in m.parameters(recurse=False)]
    ids = {id(p) for p in ssm}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups: list[dict] = [{"params": rest}] if rest else []
    if ssm:
        groups.append({"params": ssm, "lr": lr, "weight_decay": weight_decay})
    return groups


class RTFSequenceModel(nn.Module):
    """A small sequence classifier/regressor built from residual RTF blocks.

    ``x (B, L, d_input) -> Linear -> n_layers x [x + Linear(GELU(RTF(LayerNorm(x))))] -> pool -> Linear``.
    ``pool="mean"`` gives ``(B, d_output)``; ``pool="none"`` gives per-step outputs ``(B, L, d_output)``.
    ``mixer="identity"`` replaces every RTF by the identity (no sequence mixing), a baseline. ``b`` is
    initialised ``N(0, 1/d)`` (``a = 0``) so the blocks start as random FIR filters.
    """

    def __init__(
        self,
        d_input: int,
        d_model: int,
        d_output: int,
        *,
        state_size: int = 32,
        n_layers: int = 2,
        pool: str = "mean",
        mixer: str = "rtf",
        dropout: float = 0.0,
        convention: Convention = "paper",
    ) -> None:
        super().__init__()
        for name, v in (
            ("d_input", d_input),
            ("d_model", d_model),
            ("d_output", d_output),
            ("n_layers", n_layers),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if pool not in ("mean", "none"):
            raise ValueError(f"pool must be 'mean' or 'none', got {pool!r}")
        if mixer not in ("rtf", "identity"):
            raise ValueError(f"mixer must be 'rtf' or 'identity', got {mixer!r}")
        _check_state_size(state_size)
        self.pool = pool
        self.embed = nn.Linear(d_input, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(n_layers))
        self.mixers = nn.ModuleList(
            RTF(d_model, state_size, convention=convention) if mixer == "rtf" else nn.Identity()
            for _ in range(n_layers)
        )
        self.outs = nn.ModuleList(nn.Linear(d_model, d_model) for _ in range(n_layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(d_model, d_output)
        with torch.no_grad():
            for m in self.mixers:
                if isinstance(m, RTF):
                    m.b.normal_(0.0, 1.0 / math.sqrt(state_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3:
            raise ValueError(f"input must have shape (batch, length, d_input), got {tuple(x.shape)}")
        h = self.embed(x)
        for norm, mix, out in zip(self.norms, self.mixers, self.outs):
            h = h + self.drop(out(nn.functional.gelu(mix(norm(h)))))
        if self.pool == "mean":
            h = h.mean(dim=1)
        return self.head(h)
