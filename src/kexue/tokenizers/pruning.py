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


def _split_counts(
    keys: list[bytes],
    counts: np.ndarray,
    words: list[bytes],
    weights: np.ndarray,
    core: ModuleType,
    threads: int = 1,
) -> np.ndarray:
    """``out[i]``: total weight landing on ``keys[i]`` when each word is segmented by the decoder of
    ``(keys, counts)`` (``l(w) = log n(w) - log sum n``)."""
    total = int(counts.sum())
    logp = np.ascontiguousarray(np.log(counts.astype(np.float64)) - np.log(total))
    dec = core.UnigramCore(keys, logp)
    weights = np.ascontiguousarray(weights, dtype=np.int64)
    threads = max(1, min(threads, len(words) // 1000 + 1))
    if threads == 1:
        out = np.zeros(len(keys), np.int64)
        dec.split_counts(words, weights, out)
        return out
    bounds = np.linspace(0, len(words), threads + 1).astype(int).tolist()

    def run(k: int) -> np.ndarray:
        part = np.zeros(len(keys), np.int64)
        lo, hi = bounds[k], bounds[k + 1]
        dec.split_counts(words[lo:hi], np.ascontiguousarray(weights[lo:hi]), part)
        return part

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return np.sum(list(pool.map(run, range(threads))), axis=0)


def split_pieces(
    keep: dict[bytes, int], items: list[tuple[bytes, int]], core: ModuleType, threads: int = 1
) -> dict[bytes, int]:
    """Counts obtained by segmenting each ``(piece, count)`` of ``items`` with the decoder of ``keep``."""
    keys = list(keep)
    counts = np.fromiter(keep.values(), dtype=np.int64, count=len(keys))
    words = [w for w, _ in items]
    weights = np.fromiter((c for _, c in items), dtype=np.int64, count=len(items))
    out = _split_counts(keys, counts, words, weights, core, threads)
    return {keys[i]: int(out[i]) for i in np.flatnonzero(out).tolist()}


class _Decoder:
    """One trie over a superset of pieces, re-weighted for each kept subset (the others at ``-inf``).

    Decoding with ``-inf`` pieces equals decoding with a trie of the subset: the single byte ending at each
    position is always a finite candidate, so a removed piece can never be chosen. Building the trie once
    instead of at every pruning round saves most of the pruning time.
    """

    def __init__(self, keys: list[bytes], core: ModuleType, threads: int) -> None:
        self.keys = keys
        self.dec = core.UnigramCore(keys, np.zeros(len(keys)))
        self.threads = threads

    def split(
        self,
        idx: np.ndarray,
        counts: np.ndarray,
        words: list[bytes] | tuple[bytes, np.ndarray, np.ndarray],
        weights: np.ndarray,
    ) -> np.ndarray:
        """Like :func:`_split_counts` with the kept pieces ``keys[idx]`` (counts ``counts``): per kept piece.

        ``words``: a list of ``bytes``, or spans ``(buf, starts, lens)`` of one buffer.
        """
        total = int(counts.sum())
        logp = np.full(len(self.keys), -np.inf)
        logp[idx] = np.log(counts.astype(np.float64)) - np.log(total)
        self.dec.set_logp(np.ascontiguousarray(logp))
        weights = np.ascontiguousarray(weights, dtype=np.int64)
        spans = isinstance(words, tuple)
        m = len(words[1]) if spans else len(words)
        threads = max(1, min(self.threads, m // 1000 + 1))
        bounds = np.linspace(0, m, threads + 1).astype(int).tolist()

        def run(k: int) -> np.ndarray:
            part = np.zeros(len(self.keys), np.int64)
            lo, hi = bounds[k], bounds[k + 1]
            w = np.ascontiguousarray(weights[lo:hi])
            if spans:
                buf, starts, lens = words
                self.dec.split_spans(buf, starts[lo:hi], lens[lo:hi], w, part)
            else:
                self.dec.split_counts(words[lo:hi], w, part)
            return part

        if threads == 1:
            out = run(0)
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                out = np.sum(list(pool.map(run, range(threads))), axis=0)
        return out[idx]

    def remove_redundant(self, idx: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step (c) on the kept subset ``idx``."""
        while True:
            out = self.split(idx, counts, [self.keys[i] for i in idx.tolist()], counts)
            nz = np.flatnonzero(out)
            if len(nz) == len(idx):
                return idx, out
            idx, counts = idx[nz], out[nz]


def _remove_redundant(
    keys: list[bytes], counts: np.ndarray, core: ModuleType, threads: int
) -> tuple[list[bytes], np.ndarray]:
    """Step (c): iterate until every kept piece decodes to itself."""
    dec = _Decoder(keys, core, threads)
    idx, counts = dec.remove_redundant(np.arange(len(keys)), counts)
    return [keys[i] for i in idx.tolist()], counts


def remove_redundant(keep: dict[bytes, int], core: ModuleType, threads: int = 1) -> dict[bytes, int]:
    """Step (c) on a dict ``piece -> count``."""
    keys, counts = _remove_redundant(
        list(keep), np.fromiter(keep.values(), np.int64, count=len(keep)), core, threads
    )
    return dict(zip(keys, counts.tolist()))


def _first(n: int, keys: list[bytes], idx: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Positions in ``idx`` of its first ``n`` pieces ranked by ``(multi-byte, -count, -length, bytes)``.

    A stable sort on the numbers, then the bytes order only inside the group of ties at the cut: the kept
    set is the same as with the full order.
    """
    lens = np.fromiter((len(keys[i]) for i in idx.tolist()), np.int64, count=len(idx))
    multi = lens > 1
    order = np.lexsort((-lens, -counts, multi))
    if n >= len(order):
        return order
    m, c, ln = multi[order], counts[order], lens[order]
    change = np.flatnonzero((m[1:] != m[:-1]) | (c[1:] != c[:-1]) | (ln[1:] != ln[:-1])) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(order)]])
    g = int(np.searchsorted(starts, n - 1, side="right")) - 1
    lo, hi = int(starts[g]), int(ends[g])
    if hi > n:  # ties straddle the cut: rank them by their bytes
        tied = order[lo:hi].tolist()
        tied.sort(key=lambda j: keys[idx[j]])
        order[lo:hi] = tied
    return order[:n]


def prune_pieces(
    pieces: dict[bytes, int],
    max_vocab_sizes: list[int],
    min_count: int,
    max_piece_length: int,
    core: ModuleType,
    threads: int = 1,
) -> list[dict[bytes, int]]:
    """Steps (a)-(d); one vocabulary (piece -> count) per size in ``max_vocab_sizes`` (largest first)."""
    keys = list(pieces)
    counts = np.fromiter(pieces.values(), dtype=np.int64, count=len(keys))
    return prune_piece_arrays(keys, counts, max_vocab_sizes, min_count, max_piece_length, core, threads)


def prune_piece_arrays(
    keys: list[bytes],
    counts: np.ndarray,
    max_vocab_sizes: list[int],
    min_count: int,
    max_piece_length: int,
    core: ModuleType,
    threads: int = 1,
) -> list[dict[bytes, int]]:
    """:func:`prune_pieces` of unique ``keys`` with ``counts`` (``int64``)."""
    offsets = np.zeros(len(keys) + 1, np.int64)
    np.cumsum(np.fromiter(map(len, keys), np.int64, count=len(keys)), out=offsets[1:])
    return prune_packed(
        b"".join(keys), offsets, counts, max_vocab_sizes, min_count, max_piece_length, core, threads
    )


def prune_packed(
    buf: bytes,
    offsets: np.ndarray,
    counts: np.ndarray,
    max_vocab_sizes: list[int],
    min_count: int,
    max_piece_length: int,
    core: ModuleType,
    threads: int = 1,
) -> list[dict[bytes, int]]:
    """:func:`prune_pieces` of unique pieces packed in one buffer (piece ``i`` is
    ``buf[offsets[i]:offsets[i + 1]]``, as ``PieceCounter.packed`` gives them). The dropped pieces, most
    of them, are split straight from the buffer: no Python object per piece."""
    offsets = np.asarray(offsets, np.int64)
    counts = np.asarray(counts, np.int64)
    lens = np.diff(offsets)
    data = np.frombuffer(buf, np.uint8)
    present = np.zeros(256, bool)
    present[data[offsets[:-1][lens == 1]]] = True
    missing = np.flatnonzero(~present)
    if len(missing):
        buf = buf + bytes(missing.tolist())
        offsets = np.concatenate([offsets, offsets[-1] + 1 + np.arange(len(missing), dtype=np.int64)])
        counts = np.concatenate([counts, np.ones(len(missing), np.int64)])
        lens = np.concatenate([lens, np.ones(len(missing), np.int64)])
    kept = (lens == 1) | ((lens <= max_piece_length) & (counts >= min_count))
    ki, di = np.flatnonzero(kept), np.flatnonzero(~kept)
    kk, kc = [buf[a:b] for a, b in zip(offsets[ki].tolist(), offsets[ki + 1].tolist())], counts[ki]
    dec = _Decoder(kk, core, threads)  # every later kept set is a subset of kk
    idx = np.arange(len(kk))
    kc = kc + dec.split(idx, kc, (buf, offsets[di], lens[di]), counts[di])
    idx, kc = dec.remove_redundant(idx, kc)
    finals = []
    for size in sorted(max_vocab_sizes, reverse=True):
        if len(idx) > size - 3:
            top = _first(size - 3, kk, idx, kc)
            rest = np.ones(len(idx), bool)
            rest[top] = False
            rest = np.flatnonzero(rest)
            nidx, nc = idx[top], kc[top]
            nc = nc + dec.split(nidx, nc, [kk[i] for i in idx[rest].tolist()], kc[rest])
            idx, kc = dec.remove_redundant(nidx, nc)
        finals.append(dict(zip([kk[i] for i in idx.tolist()], kc.tolist())))
    return finals
