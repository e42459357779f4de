"""Mixed precision for PyTorch: autocast contexts, loss scaling, safe constants and fp32 islands.

Post: "在bert4keras中使用混合精度和XLA加速训练" (2022-04-28, kexue.fm/archives/9059) — its TF lessons
translated to ``torch.autocast`` / ``torch.amp.GradScaler``; background Micikevicius et al.,
"Mixed Precision Training" (arXiv 1710.03740).

* Mixed precision = low-precision compute, fp32 storage: parameters and optimizer state stay fp32
  (bf16 weights lose small updates: 1 + 1e-3 rounds to 1 in bf16).
* fp16's range (subnormals from 6e-8, max 65504) makes overflow and gradient underflow the risks: an
  additive mask constant like 1e12 becomes inf and 0·inf = NaN (use :func:`masked_fill_min` or
  boolean masks); gradients below 6e-8 flush to 0 unless the loss is scaled by S and the gradients
  unscaled by 1/S before clipping and the optimizer (:class:`StaticLossScaler` or the dynamic
  ``torch.amp.GradScaler``). Adam on S·L with ε equals Adam on L with ε/S, so scaling *without*
  unscaling only changes Adam's effective ε.
* Which ops stay fp32: under **CPU** autocast (torch 2.13) ``softmax``, ``log_softmax`` and
  ``layer_norm`` return the low-precision dtype while ``cross_entropy`` / ``mse_loss`` return fp32;
  CUDA autocast keeps softmax / layer_norm in fp32. :func:`probe_autocast_dtypes` measures it on the
  running build, and :func:`softmax_fp32`, :func:`log_softmax_fp32`, :func:`layer_norm_fp32`,
  :func:`cross_entropy_fp32` are explicit fp32 islands (inputs upcast, autocast off inside).
* bf16 keeps fp32's exponent range (no scaling needed) with an 8-bit mantissa. On CPUs without
  AVX512-BF16/AMX it is emulated and slow — never a default there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "DTYPE_NAMES",
    "StaticLossScaler",
    "cross_entropy_fp32",
    "layer_norm_fp32",
    "log_softmax_fp32",
    "make_grad_scaler",
    "masked_fill_min",
    "masked_softmax",
    "precision_context",
    "probe_autocast_dtypes",
    "resolve_device_type",
    "resolve_dtype",
    "safe_eps",
    "softmax_fp32",
]

DTYPE_NAMES: dict[str, torch.dtype] = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "bf16-mixed": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "16-mixed": torch.float16,
}
_SUPPORTED = (torch.float32, torch.bfloat16, torch.float16)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (and common aliases), a torch dtype, or None (fp32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        key = dtype.lower()
        if key not in DTYPE_NAMES:
            raise ValueError(f"unsupported precision {dtype!r}; use one of {sorted(set(DTYPE_NAMES))}")
        return DTYPE_NAMES[key]
    if isinstance(dtype, torch.dtype):
        if dtype not in _SUPPORTED:
            raise ValueError(
                f"unsupported precision dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16"
            )
        return dtype
    raise TypeError(f"dtype must be a string, torch.dtype or None, got {type(dtype).__name__}")


def resolve_device_type(device: str | torch.device) -> str:
    """The device type (``"cpu"``, ``"cuda"``, ...) of a device or device string; bad strings raise ValueError."""
    if isinstance(device, torch.device):
        return device.type
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    try:
        return torch.device(device).type
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc


def precision_context(
    device: str | torch.device, dtype: str | torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast(device_type, dtype)`` for bf16 / fp16, a no-op context for fp32.

    Only the compute dtype changes: parameters and optimizer state stay fp32.
    """
    device_type = resolve_device_type(device)
    dt = resolve_dtype(dtype)
    if dt == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dt)


def safe_eps(dtype: str | torch.dtype | None, default: float = 1e-8) -> float:
    """An ε that survives ``dtype``: at least 1e-4 for fp16 (1e-8 rounds to 0 there), else ``default``."""
    dt = resolve_dtype(dtype)
    if default <= 0 or not math.isfinite(default):
        raise ValueError(f"default must be a positive finite number, got {default}")
    if dt == torch.float16:
        return max(default, 1e-4)
    return max(default, torch.finfo(dt).tiny)


# --- masking and fp32 islands ----------------------------------------------------------------


def masked_fill_min(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace entries where ``mask`` is False by ``finfo(x.dtype).min`` (finite in every dtype).

    Never write ``x - (1 - mask) * 1e12``: 1e12 overflows fp16 to inf and 0·inf is NaN.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = keep), got {mask.dtype}")
    return x.masked_fill(~mask, torch.finfo(x.dtype).min)


def _no_autocast(t: torch.Tensor) -> contextlib.AbstractContextManager:
    return torch.autocast(device_type=t.device.type, enabled=False)


def masked_softmax(
    logits: torch.Tensor, mask: torch.Tensor, dim: int = -1, fully_masked: str = "zeros"
) -> torch.Tensor:
    """Softmax over ``dim`` ignoring positions where ``mask`` is False, computed in fp32.

    A row with every position masked returns zeros (``fully_masked="zeros"``) or the uniform
    distribution (``"uniform"``); the result has ``logits.dtype`` and is always finite.
    """
    if fully_masked not in ("zeros", "uniform"):
        raise ValueError(f"fully_masked must be 'zeros' or 'uniform', got {fully_masked!r}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = keep), got {mask.dtype}")
    with _no_autocast(logits):
        x = masked_fill_min(logits.float(), mask)
        p = torch.softmax(x, dim=dim)
        if fully_masked == "zeros":
            p = p.masked_fill(~mask, 0.0)
    return p.to(logits.dtype)


def softmax_fp32(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax computed in fp32 (autocast off), returned in ``x.dtype``."""
    with _no_autocast(x):
        return torch.softmax(x.float(), dim=dim).to(x.dtype)


def log_softmax_fp32(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax computed and returned in fp32."""
    with _no_autocast(x):
        return F.log_softmax(x.float(), dim=dim)


def layer_norm_fp32(
    x: torch.Tensor,
    normalized_shape: tuple[int, ...] | int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """LayerNorm with statistics in fp32, returned in ``x.dtype``."""
    if isinstance(normalized_shape, int):
        normalized_shape = (normalized_shape,)
    with _no_autocast(x):
        w = None if weight is None else weight.float()
        b = None if bias is None else bias.float()
        return F.layer_norm(x.float(), normalized_shape, w, b, eps).to(x.dtype)


def cross_entropy_fp32(logits: torch.Tensor, target: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``F.cross_entropy`` on fp32 logits with autocast off; the loss is fp32."""
    with _no_autocast(logits):
        return F.cross_entropy(logits.float(), target, **kwargs)


def probe_autocast_dtypes(
    device: str | torch.device = "cpu", dtype: str | torch.dtype = "bf16"
) -> dict[str, torch.dtype]:
    """Output dtype of common ops under ``torch.autocast`` on this build (what runs in low precision)."""
    dt = resolve_dtype(dtype)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    x = torch.randn(4, 8, device=dev)
    w = torch.randn(8, 8, device=dev)
    y = torch.zeros(4, dtype=torch.long, device=dev)
    out: dict[str, torch.dtype] = {}
    with precision_context(dev, dt):
        h = x @ w
        out["matmul"] = h.dtype
        out["linear"] = F.linear(x, w).dtype
        out["softmax"] = torch.softmax(h, -1).dtype
        out["log_softmax"] = F.log_softmax(h, -1).dtype
        out["layer_norm"] = F.layer_norm(h, (8,)).dtype
        out["cross_entropy"] = F.cross_entropy(h, y).dtype
        out["mse_loss"] = F.mse_loss(h, torch.zeros_like(h)).dtype
        out["tanh"] = torch.tanh(h).dtype
        out["sum"] = h.sum().dtype
    return out


# --- loss scaling ----------------------------------------------------------------------------


class StaticLossScaler:
    """A fixed loss scale S with ``torch.amp.GradScaler``'s interface (scale / unscale_ / step / update).

    ``scale(loss)`` returns S·loss; ``unscale_(optimizer)`` multiplies the gradients by 1/S (once per
    step) and records whether any is inf/NaN; ``step(optimizer)`` then skips the step if so.
    The post found a well-chosen manual factor more reliable than dynamic scaling in its setting.
    """

    def __init__(self, scale: float = 1.0) -> None:
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not math.isfinite(scale)
            or scale <= 0
        ):
            raise ValueError(f"loss scale must be a positive finite number, got {scale!r}")
        self._scale = float(scale)
        self._found_inf: dict[int, bool] = {}
        self.skipped_steps = 0

    def get_scale(self) -> float:
        return self._scale

    def is_enabled(self) -> bool:
        return True

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self._scale if self._scale != 1.0 else loss

    def unscale_(self, optimizer: torch.optim.Optimizer) -> bool:
        """Unscale the gradients of ``optimizer``'s parameters in place; return True if any is inf/NaN."""
        key = id(optimizer)
        if key in self._found_inf:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update()")
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        found = self.unscale_grads_(grads)
        self._found_inf[key] = found
        return found

    def unscale_grads_(self, grads: Iterable[torch.Tensor]) -> bool:
        found = False
        inv = 1.0 / self._scale
        for grad in grads:
            g = grad.coalesce().values() if grad.is_sparse else grad
            if inv != 1.0:
                g.mul_(inv)
            if not bool(torch.isfinite(g).all()):
                found = True
        return found

    def step(self, optimizer: torch.optim.Optimizer, *args: Any, **kwargs: Any) -> Any:
        """Unscale if not done yet, then ``optimizer.step()`` unless a gradient was inf/NaN."""
        if id(optimizer) not in self._found_inf:
            self.unscale_(optimizer)
        if self._found_inf[id(optimizer)]:
            self.skipped_steps += 1
            return None
        return optimizer.step(*args, **kwargs)

    def update(self) -> None:
        self._found_inf.clear()

    @property
    def found_inf(self) -> bool:
        """Whether the last unscaled optimizer had an inf/NaN gradient (valid until :meth:`update`)."""
        return any(self._found_inf.values())


def make_grad_scaler(
    device: str | torch.device, dtype: str | torch.dtype | None, loss_scale: float | str | None = None
) -> torch.amp.GradScaler | StaticLossScaler:
    """The scaler for a precision: dynamic ``GradScaler`` for fp16 by default, a static one for a number.

    ``loss_scale``: None (fp16: dynamic; otherwise a disabled GradScaler, i.e. no scaling),
    ``"dynamic"`` (``torch.amp.GradScaler`` with its defaults: init 2^16, growth 2, backoff 0.5,
    interval 2000) or a positive number (:class:`StaticLossScaler`).
    """
    device_type = resolve_device_type(device)
    dt = resolve_dtype(dtype)
    if isinstance(loss_scale, str):
        if loss_scale != "dynamic":
            raise ValueError(f"loss_scale must be None, 'dynamic' or a positive number, got {loss_scale!r}")
        return torch.amp.GradScaler(device_type)
    if loss_scale is not None:
        return StaticLossScaler(loss_scale)
    return torch.amp.GradScaler(device_type, enabled=dt == torch.float16)
