"""Private harness shared by the mla, pre-post-norm and shared-embedding reproductions: byte-level data
from the standard library, a seeded AdamW training loop with warmup + cosine, and windowed evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F

from kexue.data import byte_tokens
from kexue.repro.base import track


@lru_cache(maxsize=4)
def byte_split(n_bytes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` byte streams: the first 90% / last 10% of ``byte_tokens(n_bytes, seed)``."""
    tokens = byte_tokens(max_bytes=n_bytes, seed=seed)
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:]


def windows(tokens: torch.Tensor, batch: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` random windows of ``seq_len + 1`` tokens, shape ``(batch, seq_len + 1)``."""
    starts = torch.randint(0, len(tokens) - seq_len - 1, (batch,), generator=gen)
    return torch.stack([tokens[s : s + seq_len + 1] for s in starts.tolist()])


def lm_loss(model: torch.nn.Module, win: torch.Tensor, **kwargs) -> torch.Tensor:
    logits = model(win[:, :-1], **kwargs)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), win[:, 1:].reshape(-1))


@dataclass
class TrainLog:
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)


def train_lm(
    model: torch.nn.Module,
    train: torch.Tensor,
    steps: int,
    *,
    batch: int = 16,
    seq_len: int = 64,
    lr: float = 1e-3,
    warmup: int = 100,
    clip: float = 1.0,
    weight_decay: float = 0.1,
    seed: int = 0,
    evaluate: Callable[[], float] | None = None,
    eval_every: int = 0,
    description: str = "training",
) -> TrainLog:
    """AdamW (betas 0.9/0.95), linear warmup then cosine to 10%, gradient clipping; seeded batches."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * prog))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    log = TrainLog()
    model.train()
    for step in track(range(steps), description):
        if evaluate is not None and eval_every and step % eval_every == 0:
            log.eval_steps.append(step)
            log.eval_loss.append(evaluate())
            model.train()
        loss = lm_loss(model, windows(train, batch, seq_len, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        sched.step()
        log.steps.append(step)
        log.train_loss.append(float(loss.detach()))
    if evaluate is not None and eval_every:
        log.eval_steps.append(steps)
        log.eval_loss.append(evaluate())
    model.eval()
    return log


def fixed_windows(tokens: torch.Tensor, n: int, seq_len: int, seed: int = 123) -> torch.Tensor:
    """``n`` evaluation windows at seeded positions (the same for every model)."""
    return windows(tokens, n, seq_len, torch.Generator().manual_seed(seed))


@torch.no_grad()
def eval_loss(model: torch.nn.Module, wins: torch.Tensor, **kwargs) -> float:
    """Mean next-token loss (nats) over the windows, in eval mode."""
    was = model.training
    model.eval()
    try:
        return float(lm_loss(model, wins, **kwargs))
    finally:
        model.train(was)
