"""The shared training loop, mixed precision and compile helpers (kexue.fm/archives/9059).

* :func:`train` / :class:`TrainConfig` / :class:`TrainLog` — device, seed, precision, clipping,
  accumulation, progress and curve logging; DDP-agnostic.
* :mod:`kexue.train.precision` — autocast contexts, static and dynamic loss scaling, fp32 islands,
  safe masking constants.
* :func:`maybe_compile` — ``torch.compile`` with an eager fallback.
"""

from __future__ import annotations

from kexue.train.compile import CompiledModule, maybe_compile
from kexue.train.loop import TrainConfig, TrainLog, move_to, resolve_device, seed_everything, train
from kexue.train.precision import (
    StaticLossScaler,
    cross_entropy_fp32,
    layer_norm_fp32,
    log_softmax_fp32,
    make_grad_scaler,
    masked_fill_min,
    masked_softmax,
    precision_context,
    probe_autocast_dtypes,
    resolve_dtype,
    safe_eps,
    softmax_fp32,
)

__all__ = [
    "CompiledModule",
    "StaticLossScaler",
    "TrainConfig",
    "TrainLog",
    "cross_entropy_fp32",
    "layer_norm_fp32",
    "log_softmax_fp32",
    "make_grad_scaler",
    "masked_fill_min",
    "masked_softmax",
    "maybe_compile",
    "move_to",
    "precision_context",
    "probe_autocast_dtypes",
    "resolve_device",
    "resolve_dtype",
    "safe_eps",
    "seed_everything",
    "softmax_fp32",
    "train",
]
