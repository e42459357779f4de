"""Multitask sparse parity: the neural toy of the quantization model of scaling.

Each of ``n_tasks`` subtasks owns a fixed random ``k``-subset of ``n_bits`` bits. An input is the one-hot
code of a subtask followed by ``n_bits`` random bits; the label is the parity of that subtask's subset.
Subtasks are drawn with probability ``∝ i^{-zipf_exponent}`` (``zipf_exponent = gamma + 1``; 1.4 in the
paper, i.e. ``gamma = 0.4``). Each subtask is a "quantum": a network either has learned its parity or
predicts at chance, so the mean loss over a Zipf mixture falls as a power law in width while the per-task
losses switch on one by one in frequency order.

Post: "基于量子化假设推导模型的尺度定律(Scaling Law)", 2023-05-18, kexue.fm/archives/9607. Paper: Michaud et
al., "The Quantization Model of Neural Scaling", NeurIPS 2023 (arXiv 2303.13506).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import nn

__all__ = ["SparseParityTask", "train_sparse_parity_mlp"]


@dataclass(frozen=True)
class SparseParityTask:
    """The task: ``n_tasks`` subtasks, ``n_bits`` random bits, parities of ``k`` bits, Zipf task frequencies."""

    n_tasks: int = 32
    n_bits: int = 16
    k: int = 3
    zipf_exponent: float = 1.4
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_tasks", "n_bits", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.k > self.n_bits:
            raise ValueError(f"k ({self.k}) must not exceed n_bits ({self.n_bits})")
        if not self.zipf_exponent > 0:
            raise ValueError(f"zipf_exponent must be > 0, got {self.zipf_exponent}")

    @property
    def input_dim(self) -> int:
        return self.n_tasks + self.n_bits

    def probabilities(self) -> torch.Tensor:
        w = torch.arange(1, self.n_tasks + 1, dtype=torch.float64) ** (-self.zipf_exponent)
        return w / w.sum()

    @cached_property
    def subsets(self) -> torch.Tensor:
        """``(n_tasks, k)`` bit indices, fixed by ``seed``."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.stack([torch.randperm(self.n_bits, generator=g)[: self.k] for _ in range(self.n_tasks)])

    @cached_property
    def _probs(self) -> torch.Tensor:
        return self.probabilities()

    def sample(
        self, n: int, generator: torch.Generator, task: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` examples: ``(x float32 (n, n_tasks + n_bits), label int64 (n,), task int64 (n,))``."""
        if task is None:
            task = torch.multinomial(self._probs, n, replacement=True, generator=generator)
        bits = torch.randint(0, 2, (n, self.n_bits), generator=generator)
        label = bits.gather(1, self.subsets[task]).sum(1) % 2
        x = torch.cat([nn.functional.one_hot(task, self.n_tasks), bits], dim=1).float()
        return x, label, task


def train_sparse_parity_mlp(
    task: SparseParityTask,
    width: int,
    *,
    steps: int = 3000,
    batch: int = 1024,
    lr: float = 1e-3,
    n_test: int = 50_000,
    seed: int = 0,
) -> dict[str, object]:
    """Train a one-hidden-layer ReLU MLP with Adam on fresh batches (single epoch: the "steps" law).

    Returns ``{"test_loss": mean CE, "per_task_loss": (n_tasks,) tensor, "params": int}``; the test set is
    drawn from the same Zipf mixture.
    """
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    model = nn.Sequential(nn.Linear(task.input_dim, width), nn.ReLU(), nn.Linear(width, 2))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        x, y, _ = task.sample(batch, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    g_test = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        x, y, t = task.sample(n_test, g_test)
        ce = nn.functional.cross_entropy(model(x), y, reduction="none")
        per_task = torch.zeros(task.n_tasks).index_add_(0, t, ce) / torch.bincount(
            t, minlength=task.n_tasks
        ).clamp(min=1)
    return {
        "test_loss": float(ce.mean()),
        "per_task_loss": per_task,
        "params": sum(p.numel() for p in model.parameters()),
    }
