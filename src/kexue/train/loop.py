"""The small shared training loop of the reproductions: device, seed, precision, clipping, curves.

One update = ``accumulate_steps`` micro-batches: forward under :func:`precision_context`, backward of
``scaler.scale(loss / k)``; then unscale (before clipping — the order matters for fp16), clip, step
every optimizer through the scaler (a step with inf/NaN gradients is skipped and the scheduler is
not advanced), ``zero_grad(set_to_none=True)``, log.

Distributed: nothing here assumes a single process. Wrap the model in DistributedDataParallel
yourself and give each rank its own batches; on non-boundary micro-steps the loop uses the model's
``no_sync()`` if it has one, so gradients are all-reduced once per update. Gradients are identical on
all ranks after the all-reduce, so clipping and skipping agree across ranks. Logged losses are local
unless ``reduce_loss=True`` (then averaged over ranks with ``torch.distributed``).

Progress: pass ``progress`` — any ``(iterable, description) -> iterable`` wrapper (for example
``kexue.repro.base.track``, or ``tqdm``-like) — the library does not import the reproductions.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from kexue.train.compile import maybe_compile
from kexue.train.precision import make_grad_scaler, precision_context, resolve_dtype

__all__ = ["TrainConfig", "TrainLog", "move_to", "resolve_device", "seed_everything", "train"]

Progress = Callable[[Iterable[Any], str], Iterable[Any]]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (every rank the same seed)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: this rank's GPU (``LOCAL_RANK`` under torchrun) when CUDA is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}") from exc


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors inside (nested) tuples, lists and dicts to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(move_to(x, device) for x in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


@dataclass
class TrainConfig:
    """Options of :func:`train`.

    Attributes:
        steps: parameter updates to run.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        seed: seeds the global generators before training (None: leave them alone).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (autocast; weights and state stay fp32).
        loss_scale: None (dynamic for fp16, none otherwise), ``"dynamic"`` or a number (static).
        clip_grad_norm: max global gradient norm (after unscaling), or None.
        accumulate_steps: micro-batches per update (ordinary ``.grad`` accumulation of loss / k).
        compile: wrap the model with ``torch.compile`` (falls back to eager on failure).
        log_every: record the loss every this many updates (and on the last one).
        reduce_loss: average the logged loss over ranks when ``torch.distributed`` is initialised.
        description: label for the progress wrapper.
    """

    steps: int
    device: str | torch.device = "cpu"
    seed: int | None = 0
    precision: str | torch.dtype = "fp32"
    loss_scale: float | str | None = None
    clip_grad_norm: float | None = None
    accumulate_steps: int = 1
    compile: bool = False
    log_every: int = 1
    reduce_loss: bool = False
    description: str = "train"

    def __post_init__(self) -> None:
        for name in ("steps", "accumulate_steps", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        resolve_dtype(self.precision)
        if self.clip_grad_norm is not None and not (
            self.clip_grad_norm > 0 and math.isfinite(self.clip_grad_norm)
        ):
            raise ValueError(f"clip_grad_norm must be a positive number or None, got {self.clip_grad_norm}")


@dataclass
class TrainLog:
    """Curves recorded by :func:`train` (one entry per logged update)."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    skipped_steps: int = 0
    updates: int = 0
    seconds: float = 0.0
    model: nn.Module | None = None

    @property
    def final_loss(self) -> float:
        return self.loss[-1] if self.loss else math.nan


def _as_list(
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
) -> list[torch.optim.Optimizer]:
    opts = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    if not opts or not all(isinstance(o, torch.optim.Optimizer) for o in opts):
        raise TypeError("optimizer must be a torch.optim.Optimizer or a non-empty sequence of them")
    return opts


def _reduce_mean(x: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        x = x.clone()
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Iterable[Any],
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    config: TrainConfig,
    *,
    scheduler: Any | None = None,
    progress: Progress | None = None,
    step_kwargs: Callable[[torch.optim.Optimizer, Any], dict[str, Any]] | None = None,
    callback: Callable[[int, TrainLog], None] | None = None,
) -> TrainLog:
    """Train ``model`` for ``config.steps`` updates and return the logged curves.

    Args:
        model: the module (possibly DDP-wrapped); moved to ``config.device``.
        loss_fn: ``loss_fn(model, batch) -> scalar loss``.
        batches: micro-batches; iteration stops early if it runs out.
        optimizer: one optimizer or several (e.g. AdamW for embeddings + Tiger elsewhere).
        config: see :class:`TrainConfig`.
        scheduler: stepped after every update that was not skipped.
        progress: ``(iterable, description) -> iterable`` wrapper for a progress display.
        step_kwargs: extra keyword arguments per optimizer and (last) batch, e.g. Tiger's
            ``present_rows``.
        callback: ``callback(update_index, log)`` after each update (evaluation, early curves).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    opts = _as_list(optimizer)
    device = resolve_device(config.device)
    if config.seed is not None:
        seed_everything(config.seed)
    model.to(device)
    model.train()
    net = maybe_compile(model, config.compile)
    scaler = make_grad_scaler(device, config.precision, config.loss_scale)
    params = [p for o in opts for g in o.param_groups for p in g["params"]]
    k = config.accumulate_steps
    log = TrainLog(model=net)
    it: Iterator[Any] = iter(batches)
    steps: Iterable[int] = range(config.steps)
    if progress is not None:
        steps = progress(steps, config.description)
    t0 = time.perf_counter()
    for update in steps:
        total = torch.zeros((), device=device)
        batch = None
        for micro in range(k):
            try:
                batch = move_to(next(it), device)
            except StopIteration:
                batch = None
                break
            sync = contextlib.nullcontext()
            if micro < k - 1 and hasattr(net, "no_sync"):
                sync = net.no_sync()
            with sync:
                with precision_context(device, config.precision):
                    loss = loss_fn(net, batch)
                if loss.ndim != 0:
                    raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
                scaler.scale(loss / k).backward()
            total += loss.detach().float()
        if batch is None:
            break
        grad_norm = math.nan
        if config.clip_grad_norm is not None:
            for o in opts:
                scaler.unscale_(o)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm))
        scale_before = scaler.get_scale() if scaler.is_enabled() else 1.0
        skipped_before = getattr(scaler, "skipped_steps", 0)
        for o in opts:
            kwargs = step_kwargs(o, batch) if step_kwargs is not None else {}
            scaler.step(o, **kwargs)
        scaler.update()
        skipped = (
            getattr(scaler, "skipped_steps", 0) > skipped_before
            if not isinstance(scaler, torch.amp.GradScaler)
            else scaler.is_enabled() and scaler.get_scale() < scale_before
        )
        if skipped:
            log.skipped_steps += 1
        elif scheduler is not None:
            scheduler.step()
        for o in opts:
            o.zero_grad(set_to_none=True)
        log.updates += 1
        if (update + 1) % config.log_every == 0 or update + 1 == config.steps:
            mean = total / k
            if config.reduce_loss:
                mean = _reduce_mean(mean)
            log.step.append(update + 1)
            log.loss.append(float(mean))
            log.lr.append(float(opts[0].param_groups[0]["lr"]))
            log.grad_norm.append(grad_norm)
        if callback is not None:
            callback(update + 1, log)
    log.seconds = time.perf_counter() - t0
    return log
