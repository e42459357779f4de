"""Multitask sparse parity: labels are the parities of each task's subset; seeded; trainer runs."""

from __future__ import annotations

import pytest
import torch

from kexue.sim.sparse_parity import SparseParityTask, train_sparse_parity_mlp


def test_labels_are_subset_parities() -> None:
    task = SparseParityTask(n_tasks=5, n_bits=8, k=3, seed=1)
    x, y, t = task.sample(500, torch.Generator().manual_seed(0))
    assert x.shape == (500, 13)
    assert torch.equal(x[:, :5].argmax(1), t)
    bits = x[:, 5:].long()
    subsets = task.subsets
    assert subsets.shape == (5, 3) and all(len(set(s.tolist())) == 3 for s in subsets)
    expected = torch.stack([bits[i, subsets[t[i]]].sum() % 2 for i in range(500)])
    assert torch.equal(y, expected)


def test_task_frequencies_follow_zipf() -> None:
    task = SparseParityTask(n_tasks=8, zipf_exponent=1.4)
    p = task.probabilities()
    assert torch.all(p[1:] < p[:-1]) and p.sum().item() == pytest.approx(1.0)
    assert (p[0] / p[1]).item() == pytest.approx(2**1.4)
    _, _, t = task.sample(20_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(t, minlength=8).double() / 20_000
    assert torch.allclose(freq, p, atol=0.01)


def test_training_is_seeded_and_learns_frequent_tasks_first() -> None:
    task = SparseParityTask(n_tasks=4, n_bits=6, k=2, seed=0)
    r1 = train_sparse_parity_mlp(task, 32, steps=100, batch=128, lr=1e-2, n_test=4000)
    r2 = train_sparse_parity_mlp(task, 32, steps=20, batch=128, lr=1e-2, n_test=4000)
    r3 = train_sparse_parity_mlp(task, 32, steps=20, batch=128, lr=1e-2, n_test=4000)
    assert r2["test_loss"] == r3["test_loss"]
    assert torch.equal(r2["per_task_loss"], r3["per_task_loss"])
    # the most frequent task is learned, the rarest is not yet (chance level is ln 2 = 0.69)
    assert r1["per_task_loss"][0] < 0.2
    assert r1["per_task_loss"][-1] > r1["per_task_loss"][0] + 0.2
    assert r1["params"] == (10 * 32 + 32) + (32 * 2 + 2)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        SparseParityTask(n_bits=2, k=3)
    with pytest.raises(ValueError, match="n_tasks"):
        SparseParityTask(n_tasks=0)
    with pytest.raises(ValueError, match="width"):
        train_sparse_parity_mlp(SparseParityTask(), 0)
