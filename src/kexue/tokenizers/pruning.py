"""Vocabulary pruning of the BytePiece trainer (kexue.fm/archives/9752, step 5).

Given the piece counts ``n(w)`` of the n-gram LM segmentation:

(a) every single byte gets at least count 1;
(b) keep ``w`` if ``|w| = 1`` or (``|w| <= max_piece_length`` and ``n(w) >= min_count``); every dropped ``w``
    is segmented by the Unigram decoder of the kept set and ``n(w)`` is added to each piece it splits into;
(c) redundancy loop: segment every kept piece with the decoder of the kept set; a piece survives only if it
    decodes to itself, otherwise its count moves to its parts; repeat until the size stops changing;
(d) for each target size (largest first), if more than ``size - 3`` pieces remain, sort by
    ``(multi-byte, -count, -length, bytes)``, keep the first ``size - 3``, split the rest as in (b), redo (c).

The decoder uses ``l(w) = log n(w) - log sum n`` in float64, exactly as the tokenizer does. Splitting is
exact integer arithmetic, so the result does not depend on the number of threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np


def split_pieces(
    keep: dict[bytes, int], items: list[tuple[bytes, int]], core: ModuleType, threads: int = 1
) -> dict[bytes, int]:
    """Counts obtained by segmenting each ``(piece, count)`` of ``items`` with the decoder of ``keep``."""
    keys = list(keep)
    counts = np.fromiter(keep.values(), dtype=np.int64, count=len(keys))
    total = sum(keep.values())
    logp = np.ascontiguousarray(np.log(counts.astype(np.float64)) - np.log(total))
    dec = core.UnigramCore(keys, logp)
    words = [w for w, _ in items]
    weights = np.fromiter((c for _, c in items), dtype=np.int64, count=len(items))
    threads = max(1, min(threads, len(words) // 1000 + 1))
    if threads == 1:
        out = np.zeros(len(keys), np.int64)
        dec.split_counts(words, weights, out)
    else:
        bounds = np.linspace(0, len(words), threads + 1).astype(int).tolist()

        def run(k: int) -> np.ndarray:
            part = np.zeros(len(keys), np.int64)
            lo, hi = bounds[k], bounds[k + 1]
            dec.split_counts(words[lo:hi], np.ascontiguousarray(weights[lo:hi]), part)
            return part

        with ThreadPoolExecutor(max_workers=threads) as pool:
            out = np.sum(list(pool.map(run, range(threads))), axis=0)
    return {keys[i]: int(out[i]) for i in np.flatnonzero(out).tolist()}


def remove_redundant(keep: dict[bytes, int], core: ModuleType, threads: int = 1) -> dict[bytes, int]:
    """Step (c): iterate until every kept piece decodes to itself."""
    while True:
        size = len(keep)
        keep = split_pieces(keep, list(keep.items()), core, threads)
        if len(keep) == size:
            return keep


def prune_pieces(
    pieces: dict[bytes, int],
    max_vocab_sizes: list[int],
    min_count: int,
    max_piece_length: int,
    core: ModuleType,
    threads: int = 1,
) -> list[dict[bytes, int]]:
    """Steps (a)-(d); one vocabulary (piece -> count) per size in ``max_vocab_sizes`` (largest first)."""
    pieces = dict(pieces)
    for b in range(256):
        pieces.setdefault(bytes([b]), 1)
    keep: dict[bytes, int] = {}
    drop: list[tuple[bytes, int]] = []
    for w, c in pieces.items():
        if len(w) == 1 or (len(w) <= max_piece_length and c >= min_count):
            keep[w] = c
        else:
            drop.append((w, c))
    for w, c in split_pieces(keep, drop, core, threads).items():
        keep[w] += c
    keep = remove_redundant(keep, core, threads)
    finals = []
    for size in sorted(max_vocab_sizes, reverse=True):
        if len(keep) > size - 3:
            ranked = sorted(keep.items(), key=lambda t: (len(t[0]) > 1, -t[1], -len(t[0]), t[0]))
            keep = dict(ranked[: size - 3])
            for w, c in split_pieces(keep, ranked[size - 3 :], core, threads).items():
                keep[w] += c
            keep = remove_redundant(keep, core, threads)
        finals.append(dict(keep))
    return finals
