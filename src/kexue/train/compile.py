"""A ``torch.compile`` switch that falls back to eager execution when compilation fails.

Post: "在bert4keras中使用混合精度和XLA加速训练" (2022-04-28, kexue.fm/archives/9059): XLA (graph
compilation with op fusion) gave about +15% on an RTX 3090; ``torch.compile`` is its PyTorch analogue.
Compilation happens on the first call (and again on new input shapes — pad variable lengths to
buckets or pass ``dynamic=True``); :class:`CompiledModule` records that first call's time separately so
step timings can exclude it.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch import nn

__all__ = ["CompiledModule", "maybe_compile"]


class CompiledModule(nn.Module):
    """Calls ``torch.compile(module)``; on a compilation error warns once and runs ``module`` eagerly.

    ``module`` is registered as a submodule (the parameters are the original ones, so optimizers
    built on ``module.parameters()`` keep working). ``compile_seconds`` is the wall time of the first
    call; ``fallback_reason`` is None while the compiled path works.
    """

    def __init__(self, module: nn.Module, **compile_kwargs: Any) -> None:
        super().__init__()
        self.module = module
        # kept out of the module tree so that state_dict() has the original keys only once
        self.__dict__["_compiled"] = torch.compile(module, **compile_kwargs)
        self.compile_seconds: float | None = None
        self.fallback_reason: str | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.fallback_reason is not None:
            return self.module(*args, **kwargs)
        if self.compile_seconds is not None:
            return self._compiled(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            out = self._compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "run eagerly"
            self.fallback_reason = f"{type(exc).__name__}: {exc}"[:500]
            warnings.warn(f"torch.compile failed, running eagerly: {self.fallback_reason}", stacklevel=2)
            return self.module(*args, **kwargs)
        self.compile_seconds = time.perf_counter() - t0
        return out


def maybe_compile(module: nn.Module, enabled: bool = True, **compile_kwargs: Any) -> nn.Module:
    """``module`` itself when ``enabled`` is False, else a :class:`CompiledModule` around it."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    return CompiledModule(module, **compile_kwargs) if enabled else module
