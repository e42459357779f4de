"""Shared pieces of the fine-tuning / loss reproductions (``lora-ga-pro``, ``tvd-loss``, ``emo-loss``).

Small MLP classifiers on offline data, a seeded minibatch training loop that takes any loss function,
and classification metrics (accuracy, expected calibration error, noisy-label memorisation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from kexue.data import digits

__all__ = [
    "digits_split",
    "ece",
    "flip_labels",
    "mlp",
    "predict_proba",
    "train_classifier",
]


def mlp(sizes: Sequence[int], seed: int) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` with PyTorch's default init under ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def digits_split(test_size: float = 0.3, random_state: int = 0) -> tuple[torch.Tensor, ...]:
    """scikit-learn digits (``[0, 1]``-scaled, flattened), stratified train/test split.

    Returns ``(x_train, y_train, x_test, y_test)``.
    """
    from sklearn.model_selection import train_test_split

    x, y = digits("all", flatten=True)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, stratify=y.numpy(), random_state=random_state)
    tr_t, te_t = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return x[tr_t], y[tr_t], x[te_t], y[te_t]


def flip_labels(
    y: torch.Tensor, n_classes: int, fraction: float, seed: int, groups: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace ``fraction`` of the labels by a uniformly random *other* class (seeded).

    With ``groups`` (class -> group id) the new class is drawn from a *different group*. Returns
    ``(noisy labels, boolean mask of flipped positions)``.
    """
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=g)[: int(round(fraction * n))]] = True
    noisy = y.clone()
    for i in flipped.nonzero().flatten().tolist():
        if groups is None:
            choices = [c for c in range(n_classes) if c != int(y[i])]
        else:
            choices = [c for c in range(n_classes) if int(groups[c]) != int(groups[int(y[i])])]
        noisy[i] = choices[int(torch.randint(len(choices), (1,), generator=g))]
    return noisy, flipped


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    p = torch.softmax(model(x), dim=-1)
    model.train()
    return p


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width confidence bins."""
    conf, pred = probs.max(dim=-1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    total = 0.0
    confd = conf.double()
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (confd > lo) & (confd <= hi)
        if m.any():
            total += float(m.double().mean() * (correct[m].mean() - confd[m].mean()).abs())
    return total


def train_classifier(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    on_epoch: Callable[[int], None] | None = None,
) -> None:
    """Adam on shuffled minibatches (order seeded by ``seed``); ``on_epoch(e)`` after each epoch."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for e in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), batch_size):
            idx = perm[i : i + batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(e + 1)


def plot_epoch_curves(
    hists: dict[str, list[dict[str, list[float]]]],
    variants: Sequence[str],
    panels: Sequence[tuple[str, str]],
    epochs: int,
    suptitle: str,
):
    """One panel per ``(history key, title)``: the first seed's per-epoch curve of every variant."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for name in variants:
        h = hists[name][0]
        for ax, (key, _) in zip(axes, panels):
            ax.plot(range(1, epochs + 1), h[key], label=name)
    for ax, (_, title) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.suptitle(suptitle)
    return fig
