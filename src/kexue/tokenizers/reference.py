"""Pure-Python reference of the compiled BytePiece core (``kexue.tokenizers._core``).

Same classes, same methods, same floating-point operations in the same order, so the two agree
exactly (tests drive both with random inputs). Slow; used by tests, and as the fallback when the
extension is not built.

* :class:`UnigramCore` -- Unigram Viterbi decoding and the exact sampler of "随机分词再探：从Viterbi
  Sampling到完美采样算法" (2023-10-16, kexue.fm/archives/9811). Edges are visited by end position
  ``e`` ascending and, within one end, shortest piece first:

  decoding   ``score[e] = max_s score[s] + l(x[s:e])`` (ties: the longest piece wins, as in BytePiece);
  sampling   ``Z[e] = log sum_s exp(c_s)`` with ``c_s = Z[s] + alpha * l(x[s:e])``, and ``back[e] = s``
             with probability ``exp(c_s - Z[e])`` (one uniform per end, inverse CDF over the candidates
             in visiting order; an end with one candidate draws nothing). This is the conditional law of
             post 9811's weighted reservoir, so a segmentation is drawn with probability
             ``exp(alpha * S(seg) - Z[n])``.

* :class:`NgramTable` / :func:`expand_windows` -- counts of the ``order``-byte windows at each position,
  keyed by a packed ``uint64`` (:func:`pack_gram`), and the n-gram counts derived from them.
* :class:`BNLMCore` -- the byte n-gram LM segmentation of "【中文分词系列】 5. 基于语言模型的无监督分词"
  (2016-09-12, kexue.fm/archives/3956) used by BytePiece training (kexue.fm/archives/9752).
* :class:`Rng` -- xoshiro256** seeded by splitmix64 from ``(seed, stream)``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

_M64 = (1 << 64) - 1
_NEG_INF = -math.inf


# --- random numbers --------------------------------------------------------------------------


def _splitmix_next(state: list[int]) -> int:
    state[0] = (state[0] + 0x9E3779B97F4A7C15) & _M64
    z = state[0]
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _rotl(v: int, k: int) -> int:
    return ((v << k) | (v >> (64 - k))) & _M64


class Rng:
    """xoshiro256** seeded from ``(seed, stream)``; :meth:`uniform` returns 53-bit doubles in [0, 1)."""

    def __init__(self, seed: int, stream: int = 0) -> None:
        x = [stream & _M64]
        mixed = _splitmix_next(x)
        x = [(seed & _M64) ^ mixed]
        self.s = [_splitmix_next(x) for _ in range(4)]

    def uniform(self) -> float:
        s = self.s
        result = (_rotl((s[1] * 5) & _M64, 7) * 9) & _M64
        t = (s[1] << 17) & _M64
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = _rotl(s[3], 45)
        return (result >> 11) * (1.0 / 9007199254740992.0)


def uniforms(seed: int, stream: int, n: int) -> list[float]:
    """The first ``n`` uniforms of the stream ``(seed, stream)``."""
    r = Rng(seed, stream)
    return [r.uniform() for _ in range(n)]


def logaddexp(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` for ``a, b > -inf``, computed as the compiled core does."""
    if a < b:
        a, b = b, a
    return a + math.log1p(math.exp(b - a))


def split_chunks(data: bytes) -> list[tuple[int, int]]:
    """``(start, end)`` of each chunk: a run of non-newline bytes followed by its newlines."""
    out = []
    a, n = 0, len(data)
    while a < n:
        b = a
        while b < n and data[b] != 10:
            b += 1
        while b < n and data[b] == 10:
            b += 1
        out.append((a, b))
        a = b
    return out


MAX_CHUNK_CHARS = 10_000
MAX_CHUNK_NEWLINES = 100


def split_training_chunks(
    data: bytes, max_chars: int = MAX_CHUNK_CHARS, max_newlines: int = MAX_CHUNK_NEWLINES
) -> list[tuple[int, int]]:
    """``(start, end)`` of the training chunks of UTF-8 ``data``: at most ``max_chars`` characters other
    than a newline, then (only when a newline follows) up to ``max_newlines`` newlines."""
    if max_chars < 1 or max_newlines < 1:
        raise ValueError("max_chars and max_newlines must be >= 1")
    out = []
    a, n = 0, len(data)
    while a < n:
        b, chars = a, 0
        while b < n and data[b] != 10:
            if data[b] & 0xC0 != 0x80:
                if chars == max_chars:
                    break
                chars += 1
            b += 1
        else:
            nl = 0
            while b < n and data[b] == 10 and nl < max_newlines:
                b += 1
                nl += 1
        out.append((a, b))
        a = b
    return out


def _check_bytes_list(items: list, what: str) -> None:
    for i, x in enumerate(items):
        if not isinstance(x, bytes):
            raise TypeError(f"{what} {i} must be bytes, got {type(x).__name__}")


# --- Unigram lattice -------------------------------------------------------------------------


class UnigramCore:
    """Unigram lattice over ``pieces`` with log-probabilities ``logp`` (reference implementation)."""

    def __init__(self, pieces: list[bytes], logp: Sequence[float]) -> None:
        if len(logp) != len(pieces):
            raise ValueError(f"logp has {len(logp)} entries but there are {len(pieces)} pieces")
        for p in pieces:
            if not isinstance(p, bytes) or not p:
                raise TypeError("pieces must be non-empty bytes")
        self.pieces = list(pieces)
        self.num_pieces = len(pieces)
        self._index = {p: i for i, p in enumerate(self.pieces)}
        self._logp = [float(v) for v in logp]
        self.max_piece_length = max((len(p) for p in self.pieces), default=0)
        for i in range(256):
            if bytes([i]) not in self._index:
                raise ValueError(f"the vocabulary must contain every single byte; {bytes([i])!r} is missing")

    def set_logp(self, logp: Sequence[float]) -> None:
        if len(logp) != self.num_pieces:
            raise ValueError(f"logp has {len(logp)} entries but there are {self.num_pieces} pieces")
        values = [float(v) for v in logp]
        for i, v in enumerate(values):
            if math.isnan(v) or v == math.inf:
                raise ValueError(f"logp[{i}] must be finite or -inf, got {v}")
        for i in range(256):
            if values[self._index[bytes([i])]] == _NEG_INF:
                raise ValueError(f"the single byte {bytes([i])!r} cannot be removed")
        self._logp = values

    def _lattice(self, x: bytes, sample: bool, alpha: float, rng: Rng) -> list[int]:
        n = len(x)
        score = [0.0] * (n + 1)
        mult = [1.0] * (n + 1)  # sampling: Z[e] = exp(score[e]) * mult[e] (see the compiled core)
        back = [0] * (n + 1)
        piece = [0] * (n + 1)
        index, logp, maxlen = self._index, self._logp, self.max_piece_length
        for e in range(1, n + 1):
            best = _NEG_INF
            bs = bp = -1
            cands: list[tuple[float, int, int]] = []
            for p in range(e - 1, max(e - maxlen, 0) - 1, -1):
                v = index.get(x[p:e])
                if v is None:
                    continue
                if not sample:
                    c = score[p] + logp[v]
                    if c >= best:
                        best, bs, bp = c, p, v
                else:
                    cands.append((score[p] + alpha * logp[v], p, v))
            if sample:
                if len(cands) == 1:
                    best, bs, bp = cands[0]
                    w = mult[bs]
                else:
                    cmax = max(c for c, _, _ in cands)
                    weights = [mult[p] * math.exp(c - cmax) for c, p, _ in cands]
                    w = 0.0
                    for wk in weights:
                        w += wk
                    best = cmax
                    u = rng.uniform() * w
                    j, acc = 0, weights[0]
                    while acc <= u and j < len(cands) - 1:
                        j += 1
                        acc += weights[j]
                    while weights[j] == 0.0 and j > 0:
                        j -= 1
                    _, bs, bp = cands[j]
                if w > 1e30:
                    best, w = best + math.log(w), 1.0
                mult[e] = w
            score[e] = best
            back[e] = bs
            piece[e] = bp
        out = []
        e = n
        while e > 0:
            out.append(piece[e])
            e = back[e]
        self._last_score = score[n] + math.log(mult[n]) if sample else score[n]
        return out[::-1]

    def _encode(self, data: bytes, chunked: bool, sample: bool, alpha: float, rng: Rng) -> list[int]:
        spans = split_chunks(data) if chunked else ([(0, len(data))] if data else [])
        out: list[int] = []
        for a, b in spans:
            out.extend(self._lattice(data[a:b], sample, alpha, rng))
        return out

    def encode(
        self,
        data: bytes,
        chunked: bool = True,
        sample: bool = False,
        alpha: float = 0.0,
        seed: int = 0,
        stream: int = 0,
        offset: int = 0,
        bos: int = -1,
        eos: int = -1,
    ) -> list[int]:
        ids = [i + offset for i in self._encode(data, chunked, sample, alpha, Rng(seed, stream))]
        return ([bos] if bos >= 0 else []) + ids + ([eos] if eos >= 0 else [])

    def tokenize(
        self,
        data: bytes,
        chunked: bool = True,
        sample: bool = False,
        alpha: float = 0.0,
        seed: int = 0,
        stream: int = 0,
    ) -> list[bytes]:
        out, pos = [], 0
        for i in self._encode(data, chunked, sample, alpha, Rng(seed, stream)):
            ln = len(self.pieces[i])
            out.append(data[pos : pos + ln])
            pos += ln
        return out

    def encode_many(
        self,
        datas: list[bytes],
        chunked: bool = True,
        sample: bool = False,
        alpha: float = 0.0,
        seed: int = 0,
        first_stream: int = 0,
        offset: int = 0,
        bos: int = -1,
        eos: int = -1,
    ) -> list[list[int]]:
        for i, d in enumerate(datas):
            if not isinstance(d, bytes):
                raise TypeError(f"item {i} must be bytes, got {type(d).__name__}")
        return [
            self.encode(d, chunked, sample, alpha, seed, first_stream + i, offset, bos, eos)
            for i, d in enumerate(datas)
        ]

    def split_counts(self, keys: list[bytes], weights: Sequence[int], out: np.ndarray) -> None:
        if len(weights) != len(keys):
            raise ValueError(f"weights has {len(weights)} entries but there are {len(keys)} keys")
        if len(out) != self.num_pieces:
            raise ValueError(f"out must have {self.num_pieces} entries, got {len(out)}")
        rng = Rng(0, 0)
        for k, w in zip(keys, weights):
            if not isinstance(k, bytes):
                raise TypeError(f"key must be bytes, got {type(k).__name__}")
            for i in self._lattice(k, False, 0.0, rng):
                out[i] += w

    def split_spans(
        self, buf: bytes, starts: np.ndarray, lens: np.ndarray, weights: np.ndarray, out: np.ndarray
    ) -> None:
        if not len(starts) == len(lens) == len(weights):
            raise ValueError(
                f"starts, lens and weights must have the same length ({len(starts)}, {len(lens)}, "
                f"{len(weights)})"
            )
        data = bytes(buf)
        spans = list(zip(np.asarray(starts).tolist(), np.asarray(lens).tolist()))
        for i, (a, n) in enumerate(spans):
            if a < 0 or n < 0 or a + n > len(data):
                raise ValueError(f"span {i} ({a}, {n}) is outside the buffer of {len(data)} bytes")
        self.split_counts([data[a : a + n] for a, n in spans], np.asarray(weights).tolist(), out)

    def log_partition(self, data: bytes, alpha: float) -> float:
        self._lattice(data, True, alpha, Rng(0, 0))
        return self._last_score if data else 0.0


# --- n-gram counting -------------------------------------------------------------------------


def pack_gram(g: bytes) -> int:
    """``sum_i g[i] << (56 - 8 i) | len(g)`` for ``len(g) <= 7``."""
    if len(g) > 7:
        raise ValueError(f"a packed n-gram has at most 7 bytes, got {len(g)}")
    key = len(g)
    for i, b in enumerate(g):
        key |= b << (56 - 8 * i)
    return key


def unpack_gram(key: int) -> bytes:
    """Inverse of :func:`pack_gram`."""
    n = key & 0xFF
    return bytes((key >> (56 - 8 * i)) & 0xFF for i in range(n))


def _mix(key: int) -> int:
    z = key ^ (key >> 29)
    z = (z * 0xBF58476D1CE4E5B9) & _M64
    return z ^ (z >> 32)


def window_part(key: int, parts: int) -> int:
    """The class in ``range(parts)`` of a packed window: a hash of its first two bytes."""
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    return ((_mix(key >> 48) >> 32) * parts) >> 32  # the high 32 bits of the hash scaled to [0, parts)


class NgramTable:
    """Counts of the windows ``x[i:i+order]`` (clipped at the chunk end), keyed by :func:`pack_gram`."""

    def __init__(self, capacity: int = 1 << 16, order: int = 0) -> None:
        if not 0 <= order <= 7:
            raise ValueError(f"order must be in [1, 7] (or 0: set by the first window), got {order}")
        self._counts: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def add_chunks(self, chunks: list[bytes], order: int) -> None:
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        for ci, x in enumerate(chunks):
            if not isinstance(x, bytes):
                raise TypeError(f"chunk {ci} must be bytes, got {type(x).__name__}")
        c = self._counts
        for x in chunks:
            for i in range(len(x)):
                key = pack_gram(x[i : i + order])
                c[key] = c.get(key, 0) + 1

    def add_counts(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if len(keys) != len(counts):
            raise ValueError("keys and counts must have the same length")
        keys, counts = np.asarray(keys, np.uint64), np.asarray(counts, np.int64)
        if np.any(keys == 0):
            raise ValueError("key 0 (the empty gram) is not a window")
        for k in keys.tolist():
            ln = k & 0xFF
            if not 1 <= ln <= 7 or k & ~0xFF & ((1 << (64 - 8 * ln)) - 1):
                raise ValueError(f"key {k:#x} is not a packed window (length 1..7, zero bytes past it)")
        if np.any(counts < 1):
            raise ValueError(f"counts must be >= 1, got {int(counts.min())}")
        c = self._counts
        for k, v in zip(keys.tolist(), counts.tolist()):
            c[k] = c.get(k, 0) + v

    def export(self, keys_out: np.ndarray, counts_out: np.ndarray) -> None:
        if len(keys_out) != len(self._counts) or len(counts_out) != len(self._counts):
            raise ValueError(f"output arrays must have length {len(self._counts)}")
        for j, (k, v) in enumerate(self._counts.items()):
            keys_out[j] = k
            counts_out[j] = v

    def export_sorted(self, keys_out: np.ndarray, counts_out: np.ndarray) -> None:
        self.export(keys_out, counts_out)
        order = np.argsort(keys_out, kind="stable")
        keys_out[:] = keys_out[order]
        counts_out[:] = counts_out[order]

    def add_texts(
        self,
        texts: list[bytes],
        order: int,
        max_chars: int = MAX_CHUNK_CHARS,
        max_newlines: int = MAX_CHUNK_NEWLINES,
        part: int = 0,
        parts: int = 1,
    ) -> None:
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        if max_chars < 1 or max_newlines < 1:
            raise ValueError("max_chars and max_newlines must be >= 1")
        if parts < 1 or not 0 <= part < parts:
            raise ValueError(f"need 0 <= part < parts, got part={part}, parts={parts}")
        _check_bytes_list(texts, "text")
        chunks = [x[a:b] for x in texts for a, b in split_training_chunks(x, max_chars, max_newlines)]
        if parts == 1:
            self.add_chunks(chunks, order)
            return
        c = self._counts
        for x in chunks:
            for i in range(len(x)):
                key = pack_gram(x[i : i + order])
                if window_part(key, parts) == part:
                    c[key] = c.get(key, 0) + 1

    def merge(self, other: NgramTable) -> None:
        if other is self:
            raise ValueError("cannot merge a table into itself")
        c = self._counts
        for k, v in other._counts.items():
            c[k] = c.get(k, 0) + v

    def pruned_grams(self, min_count: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._counts)
        keys, counts = np.empty(n, np.uint64), np.empty(n, np.int64)
        self.export_sorted(keys, counts)
        self.clear()
        if n == 0:
            return np.zeros(1, np.uint64), np.zeros(1, np.int64)
        return prune_windows(keys, counts, min_count)

    def clear(self) -> None:
        self._counts = {}

    @property
    def nbytes(self) -> int:
        return 16 * len(self._counts)


def expand_windows(
    wkeys: np.ndarray, wcounts: np.ndarray, out_keys: np.ndarray, out_counts: np.ndarray
) -> int:
    """All n-gram counts from window counts: ``c(g) = sum of the windows starting with g`` (sorted output)."""
    if len(wkeys) != len(wcounts):
        raise ValueError("keys and counts must have the same length")
    wk = wkeys.tolist()
    if any(b <= a for a, b in zip(wk, wk[1:])):
        raise ValueError("window keys must be sorted and unique")
    if any((k & 0xFF) > 7 for k in wk):
        raise ValueError("window keys must have length <= 7")
    total = sum(k & 0xFF for k in wk)
    if len(out_keys) < total + 1 or len(out_counts) < total + 1:
        raise ValueError(f"output arrays need at least {total + 1} entries")
    c: dict[int, int] = {}
    for k, v in zip(wk, wcounts.tolist()):
        g = unpack_gram(k)
        for j in range(len(g) + 1):
            p = pack_gram(g[:j])
            c[p] = c.get(p, 0) + v
    keys = sorted(c)
    for i, k in enumerate(keys):
        out_keys[i] = k
        out_counts[i] = c[k]
    return len(keys)


def release_memory() -> bool:
    """No C heap to trim in the reference."""
    return False


def sort_pairs(keys: np.ndarray, counts: np.ndarray) -> None:
    """Sort ``keys`` in place, ascending, moving ``counts`` along."""
    if len(keys) != len(counts):
        raise ValueError("keys and counts must have the same length")
    order = np.argsort(keys, kind="stable")
    keys[:] = keys[order]
    counts[:] = counts[order]


def prune_windows(wkeys: np.ndarray, wcounts: np.ndarray, min_count: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`expand_windows`, then keep the grams with ``|g| <= 1`` or ``c(g) >= min_count`` (sorted)."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    total = int(sum(int(k) & 0xFF for k in wkeys.tolist())) + 1
    keys = np.empty(total, np.uint64)
    counts = np.empty(total, np.int64)
    m = expand_windows(wkeys, wcounts, keys, counts)
    keys, counts = keys[:m], counts[:m]
    keep = ((keys & np.uint64(0xFF)) <= 1) | (counts >= min_count)
    return keys[keep].copy(), counts[keep].copy()


class PieceCounter:
    """Counts of byte strings (reference of the compiled hash table: a dict). Merges into a counter hold
    its lock, as the compiled one's do."""

    def __init__(self) -> None:
        self._c: dict[bytes, int] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._c)

    @property
    def nbytes(self) -> int:
        return sum(len(k) + 32 for k in self._c)

    def add(self, piece: bytes, count: int = 1) -> None:
        if not isinstance(piece, bytes):
            raise TypeError(f"pieces must be bytes, got {type(piece).__name__}")
        self._c[piece] = self._c.get(piece, 0) + count

    def add_dict(self, counts: dict) -> None:
        for k, v in counts.items():
            self.add(k, v)

    def merge(self, other: PieceCounter) -> None:
        if other is self:
            raise ValueError("cannot merge a counter into itself")
        with self._lock:
            self.add_dict(other._c)

    def clear(self) -> None:
        self._c = {}

    def to_dict(self) -> dict[bytes, int]:
        return dict(self._c)

    def items(self) -> tuple[list[bytes], np.ndarray]:
        return list(self._c), np.fromiter(self._c.values(), np.int64, count=len(self._c))

    def packed(self) -> tuple[bytes, np.ndarray, np.ndarray]:
        keys, counts = self.items()
        offsets = np.zeros(len(keys) + 1, np.int64)
        np.cumsum([len(k) for k in keys], out=offsets[1:])
        return b"".join(keys), offsets, counts


def count_all_ngrams(chunks: list[bytes], order: int) -> dict[bytes, int]:
    """Direct count of every n-gram ``0 <= |g| <= order`` inside the chunks (the definition; for tests)."""
    c: dict[bytes, int] = {}
    for x in chunks:
        for i in range(len(x)):
            for k in range(0, min(order, len(x) - i) + 1):
                g = x[i : i + k]
                c[g] = c.get(g, 0) + 1
    return c


# --- byte n-gram LM segmentation -------------------------------------------------------------


class BNLMCore:
    """Viterbi segmentation of chunks under a byte n-gram LM (reference implementation).

    States ``j = 0..order-1`` at byte ``i``: byte ``i`` is the ``(j+1)``-th byte of the current piece
    (context capped at ``order-1``). Emission ``E[i, j] = L(x[i-j..i])``; transitions ``j -> 0`` and
    ``j -> min(j+1, order-1)`` have weight 0; with ``ensure_unicode`` a piece may not start on a UTF-8
    continuation byte. Where every state of a byte is unreachable (a character whose n-grams were all
    pruned) the current piece continues through it instead of the whole rest of the chunk collapsing
    into single bytes, as it does in bytepiece 0.6.3.
    """

    def __init__(self, keys: Sequence[int], L: Sequence[float], order: int, ensure_unicode: bool) -> None:
        if order < 1 or order > 7:
            raise ValueError(f"order must be in [1, 7], got {order}")
        if len(L) != len(keys):
            raise ValueError(f"L has {len(L)} entries but there are {len(keys)} keys")
        self.order = order
        self.ensure_unicode = bool(ensure_unicode)
        self._L: dict[bytes, float] = {}
        for i, k in enumerate(np.asarray(keys).tolist()):
            if not 1 <= (k & 0xFF) <= order:
                raise ValueError(f"key {i} has length {k & 0xFF}; expected 1..{order}")
            g = unpack_gram(k)
            if g in self._L:
                raise ValueError("keys must be unique")
            self._L[g] = float(L[i])
        for i in range(256):
            if bytes([i]) not in self._L:
                raise ValueError(
                    f"the n-gram table must contain every single byte; {bytes([i])!r} is missing"
                )

    def _step(self, prev: list[float], E: list[float]) -> tuple[list[float], list[int]]:
        order = self.order
        cur = [_NEG_INF] * order
        route = [0] * order
        best, arg = prev[0] + E[0], 0
        for jp in range(1, order):
            c = prev[jp] + E[0]
            if c > best:
                best, arg = c, jp
        cur[0], route[0] = best, arg
        if order >= 2:
            for j in range(1, order - 1):
                cur[j], route[j] = prev[j - 1] + E[j], j - 1
            a = prev[order - 2] + E[order - 1]
            b = prev[order - 1] + E[order - 1]
            if b > a:
                cur[order - 1], route[order - 1] = b, order - 1
            else:
                cur[order - 1], route[order - 1] = a, order - 2
        return cur, route

    def segment(self, chunk: bytes) -> list[bytes]:
        if not isinstance(chunk, bytes):
            raise TypeError(f"chunks must be bytes, got {type(chunk).__name__}")
        n, order = len(chunk), self.order
        if n == 0:
            return []
        routes: list[list[int]] = []
        prev: list[float] = []
        for i in range(n):
            E = [_NEG_INF] * order
            for j in range(min(order, i + 1)):
                v = self._L.get(chunk[i - j : i + 1])
                if v is None:
                    break
                E[j] = v
            unmasked0 = E[0]
            if self.ensure_unicode and (chunk[i] & 0xC0) == 0x80:
                E[0] = _NEG_INF
            if i == 0:
                cur = list(E)
                if cur[0] == _NEG_INF:
                    cur[0] = unmasked0
                route = [0] * order
            else:
                cur, route = self._step(prev, E)
                if all(c == _NEG_INF for c in cur):
                    E2 = [E[0]] + [e if e > _NEG_INF else 0.0 for e in E[1:]]
                    cur, route = self._step(prev, E2)
                    if all(c == _NEG_INF for c in cur):
                        E2[0] = unmasked0
                        cur, route = self._step(prev, E2)
            routes.append(route)
            prev = cur
        state = 0
        for j in range(1, order):
            if prev[j] > prev[state]:
                state = j
        starts = []
        for i in range(n - 1, -1, -1):
            if state == 0 or i == 0:
                starts.append(i)
            if i > 0:
                state = routes[i][state]
        starts = starts[::-1] + [n]
        return [chunk[a:b] for a, b in zip(starts, starts[1:])]

    def count_texts(
        self,
        texts: list[bytes],
        counter: PieceCounter,
        max_chars: int = MAX_CHUNK_CHARS,
        max_newlines: int = MAX_CHUNK_NEWLINES,
        total: PieceCounter | None = None,
        flush_at: int = 1 << 14,
    ) -> None:
        if not isinstance(counter, PieceCounter):
            raise TypeError(f"counter must be a PieceCounter, got {type(counter).__name__}")
        if max_chars < 1 or max_newlines < 1:
            raise ValueError("max_chars and max_newlines must be >= 1")
        if total is not None and (total is counter or flush_at < 1):
            raise ValueError("total must be another counter and flush_at >= 1")
        _check_bytes_list(texts, "text")
        for x in texts:
            for a, b in split_training_chunks(x, max_chars, max_newlines):
                for p in self.segment(x[a:b]):
                    counter.add(p)
                if total is not None and len(counter) >= flush_at:
                    total.merge(counter)
                    counter.clear()

    def count_pieces(self, chunks: list[bytes], counter: dict[bytes, int] | None = None) -> dict[bytes, int]:
        if counter is None:
            counter = {}
        for ch in chunks:
            for p in self.segment(ch):
                counter[p] = counter.get(p, 0) + 1
        return counter


def conditional_log_probs(keys: np.ndarray, counts: np.ndarray, out: np.ndarray) -> None:
    """``out[i - 1] = log c(g_i) - log c(g_i[:-1])`` for sorted unique packed grams (``keys[0]`` empty)."""
    if len(counts) != len(keys) or len(out) != len(keys) - 1:
        raise ValueError("need len(counts) == len(keys) and len(out) == len(keys) - 1")
    if len(keys) == 0 or keys[0] != 0:
        raise ValueError("keys[0] must be the empty gram")
    if np.any(counts <= 0):
        raise ValueError("counts must be positive")
    if np.any(keys[1:] <= keys[:-1]):
        raise ValueError("keys must be sorted and unique")
    ln = keys[1:] & np.uint64(0xFF)
    if np.any((ln < 1) | (ln > 7)):
        raise ValueError("keys must have length 1..7")
    gk = keys[1:]
    shift = (np.uint64(64) - np.uint64(8) * ln).astype(np.uint64)
    body = (gk & ~np.uint64(0xFF)) & ~(np.uint64(0xFF) << shift)
    pk = body | (ln - np.uint64(1))
    idx = np.searchsorted(keys, pk)
    if np.any(keys[np.minimum(idx, len(keys) - 1)] != pk):
        raise ValueError("n-gram counts are inconsistent: a kept n-gram's prefix is missing")
    logc = np.log(counts.astype(np.float64))
    out[:] = logc[1:] - logc[idx]
