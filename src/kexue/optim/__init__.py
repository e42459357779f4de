"""Optimizers and optimizer analysis from kexue.fm posts.

* :class:`Tiger`, :class:`Lion` — sign-momentum optimizers with the embedding-anomaly remedies
  (kexue.fm/archives/9512, 9736); :func:`tiger_param_groups`, :func:`tiger_lr_from_adamw`.
* :class:`SGDM`, :class:`Adam`, :class:`AdamW` — gradient accumulation hidden in the momentum
  (kexue.fm/archives/8634); :func:`beta_tilde`.
* :class:`LoraOptimizer`, :class:`RandomProjectionOptimizer` — LoRA as an optimizer and resampled
  random projections (kexue.fm/archives/9590).
* :mod:`kexue.optim.scaling` — learning rate vs batch size for SGD / SignSGD / Adam-with-ε
  (kexue.fm/archives/10542, 10563).
* :mod:`kexue.optim.hessian` — Adam's second moment as a Hessian estimate (kexue.fm/archives/10588).
"""

from __future__ import annotations

import torch

from kexue.optim._common import beta_tilde
from kexue.optim.accumulation import SGDM, Adam, AdamW
from kexue.optim.hessian import HessianAlignment, SecondMomentAverager, hessian_alignment
from kexue.optim.lion import Lion
from kexue.optim.lora_projection import LoraOptimizer, RandomProjectionOptimizer, linear_weights
from kexue.optim.scaling import LRScaling, estimate_noise_scale, optimal_lr
from kexue.optim.tiger import Tiger, piecewise_linear, tiger_lr_from_adamw, tiger_param_groups

__all__ = [
    "SGDM",
    "Adam",
    "AdamW",
    "HessianAlignment",
    "LRScaling",
    "Lion",
    "LoraOptimizer",
    "RandomProjectionOptimizer",
    "SecondMomentAverager",
    "Tiger",
    "beta_tilde",
    "estimate_noise_scale",
    "hessian_alignment",
    "linear_weights",
    "optimal_lr",
    "optimizer_state_bytes",
    "piecewise_linear",
    "tiger_lr_from_adamw",
    "tiger_param_groups",
]


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the tensors in ``optimizer.state`` (all parameters, all entries)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
    return total
