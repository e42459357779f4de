"""Byte n-gram counts and the pruned n-gram language model of BytePiece training.

From "BytePiece：更纯粹、更高压缩率的Tokenizer" (2023-09-07, kexue.fm/archives/9752), whose trainer uses
the unsupervised segmentation of "【中文分词系列】 5. 基于语言模型的无监督分词" (2016-09-12,
kexue.fm/archives/3956):

* count ``c(g)`` for every byte string ``g`` with ``0 <= |g| <= order`` inside a chunk
  (``c(empty)`` = number of byte positions). Shards count only the windows ``x[i:i+order]`` (clipped at
  the chunk end), one per position; ``c(g)`` is the sum over the windows that start with ``g``
  (:func:`expand_windows`);
* give every unseen single byte count 1 (and add 1 to ``c(empty)`` for each);
* keep all 1-grams and every longer ``g`` with ``c(g) >= min_count``;
* ``L(g) = log c(g) - log c(g[:-1])`` (float64): the log-probability of the last byte given the others.

An n-gram is packed into one ``uint64``: its bytes big-endian in the high 56 bits and its length in the
low byte, so ``order <= 7``. Counts are exact integers, so merging shard counts in any order gives the
same table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

MAX_ORDER = 7


@dataclass(frozen=True)
class NgramCounts:
    """Exact n-gram counts: ``keys`` (packed ``uint64``, sorted, unique) and ``counts`` (``int64``)."""

    keys: np.ndarray
    counts: np.ndarray

    def __post_init__(self) -> None:
        if self.keys.dtype != np.uint64 or self.counts.dtype != np.int64:
            raise TypeError("NgramCounts needs uint64 keys and int64 counts")
        if self.keys.shape != self.counts.shape or self.keys.ndim != 1:
            raise ValueError(
                f"keys {self.keys.shape} and counts {self.counts.shape} must be equal 1-D shapes"
            )

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.counts.nbytes)

    @classmethod
    def empty(cls) -> NgramCounts:
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def from_table(cls, table) -> NgramCounts:
        """Sorted arrays from an ``NgramTable`` (compiled or reference)."""
        n = len(table)
        keys = np.empty(n, np.uint64)
        counts = np.empty(n, np.int64)
        table.export_sorted(keys, counts)
        return cls(keys, counts)


def merge_ngram_counts(a: NgramCounts, b: NgramCounts) -> NgramCounts:
    """Reduce step: the sum of two count tables (exact, commutative and associative)."""
    if len(a) == 0:
        return b
    if len(b) == 0:
        return a
    keys = np.concatenate([a.keys, b.keys])
    counts = np.concatenate([a.counts, b.counts])
    order = np.argsort(keys)
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return NgramCounts(keys[starts], np.add.reduceat(counts, starts).astype(np.int64))


def gram_lengths(keys: np.ndarray) -> np.ndarray:
    return (keys & np.uint64(0xFF)).astype(np.int64)


def prefix_keys(keys: np.ndarray) -> np.ndarray:
    """Packed ``g[:-1]`` for each packed ``g`` with ``|g| >= 1``."""
    ln = keys & np.uint64(0xFF)
    shift = (np.uint64(64) - np.uint64(8) * ln).astype(np.uint64)
    body = keys & ~np.uint64(0xFF)
    body = body & ~(np.uint64(0xFF) << shift)
    return body | (ln - np.uint64(1))


def expand_windows(windows: NgramCounts, core) -> NgramCounts:
    """Every n-gram count from window counts: ``c(g) = sum of the counts of the windows starting with g``."""
    total = int(gram_lengths(windows.keys).sum()) + 1
    keys = np.empty(total, np.uint64)
    counts = np.empty(total, np.int64)
    m = core.expand_windows(windows.keys, windows.counts, keys, counts)
    return NgramCounts(keys[:m].copy(), counts[:m].copy())


@dataclass(frozen=True)
class NgramLM:
    """The pruned n-gram LM, ready for the segmentation core.

    ``keys``: every kept gram with ``1 <= |g| <= order`` (packed, sorted); ``L[i]`` its conditional
    log-probability. ``token`` identifies the table (worker processes cache the core built from it).
    """

    keys: np.ndarray
    L: np.ndarray
    order: int
    num_counted: int
    token: str = field(default_factory=lambda: os.urandom(16).hex())

    def __len__(self) -> int:
        return len(self.L)

    @property
    def nbytes(self) -> int:
        return int(self.keys.nbytes + self.L.nbytes)

    def log_prob(self, gram: bytes) -> float | None:
        """``L(gram)`` or ``None`` when pruned."""
        from kexue.tokenizers.reference import pack_gram

        if not 1 <= len(gram) <= self.order:
            return None
        key = np.uint64(pack_gram(gram))
        i = int(np.searchsorted(self.keys, key))
        return float(self.L[i]) if i < len(self.keys) and self.keys[i] == key else None


def build_lm(counts: NgramCounts, order: int, min_count: int, core=None) -> NgramLM:
    """Prune n-gram counts (all lengths, see :func:`expand_windows`) and condition them into an LM.

    ``core``: the module computing ``L`` (:func:`conditional_log_probs` of the compiled core or of the
    reference; the default is the compiled one when built).
    """
    if core is None:
        from kexue.tokenizers._backend import resolve_core

        core = resolve_core("auto")
    keys, cnt = counts.keys, counts.counts
    if len(keys) == 0 or keys[0] != 0 or cnt[0] <= 0:
        raise ValueError("the corpus is empty: no byte was counted")
    byte_keys = (np.arange(256, dtype=np.uint64) << np.uint64(56)) | np.uint64(1)
    pos = np.minimum(np.searchsorted(keys, byte_keys), len(keys) - 1)
    missing = byte_keys[keys[pos] != byte_keys]
    if len(missing):
        keys = np.concatenate([keys, missing])
        cnt = np.concatenate([cnt, np.ones(len(missing), np.int64)])
        cnt[0] += len(missing)
        o = np.argsort(keys)
        keys, cnt = keys[o], cnt[o]
    keep = ((keys & np.uint64(0xFF)) <= np.uint64(1)) | (cnt >= min_count)
    if not keep.all():
        keys, cnt = keys[keep], cnt[keep]
    keys, cnt = np.ascontiguousarray(keys), np.ascontiguousarray(cnt)
    L = np.empty(len(keys) - 1, np.float64)
    core.conditional_log_probs(keys, cnt, L)
    return NgramLM(keys=keys[1:], L=L, order=order, num_counted=len(counts))
