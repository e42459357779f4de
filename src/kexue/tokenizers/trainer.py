"""BytePiece trainer: byte n-gram LM segmentation + pruning, as a streaming map-reduce.

From "BytePiece：更纯粹、更高压缩率的Tokenizer" (2023-09-07, kexue.fm/archives/9752); the segmentation is
that of "【中文分词系列】 5. 基于语言模型的无监督分词" (2016-09-12, kexue.fm/archives/3956).

1. pass 1: exact counts of the ``order``-byte *windows* at every position of every training chunk
   (:mod:`kexue.tokenizers.text`; one hash-table update per byte, in batches whose slots are prefetched),
   sorted (radix), then expanded into the counts ``c(g)`` of every n-gram ``|g| <= order`` and pruned
   (``c(g) >= lm_min_count``) in one post-order scan that never materialises the pruned grams
   (``prune_windows``);
2. :func:`kexue.tokenizers.ngrams.build_lm`: ``L(g) = log c(g) - log c(g[:-1])`` (one stack scan of the
   sorted grams);
3. pass 2: segment every chunk by the Viterbi path of the n-gram LM restarted at each piece (states
   ``j = 0..order-1``, emission ``L(x[i-j..i])``, no piece starting on a UTF-8 continuation byte with
   ``ensure_unicode``), the grams ending at each byte found by walking a double-array trie, and count
   pieces in a byte-string hash table;
4. :func:`kexue.tokenizers.pruning.prune_pieces`: prune to ``max_vocab_size``.

Both passes run in the compiled core without the GIL (chunking included), so ``backend="local"`` uses
``workers`` *threads*; nothing is pickled or copied between processes. In pass 1 every thread reads every
shard and counts the windows of its own class (a hash of their first two bytes), so the tables are
disjoint; in pass 2 the threads share the LM and one piece table: each counts the pieces of its share of
each shard in a small table of its own (16k pieces) that it merges into the shared one, under its lock,
whenever it is full. Threads are not synchronised per shard: one may run up to 3 shards ahead.
``backend="ray"`` runs the map functions :func:`count_ngrams_shard` / :func:`count_pieces_shard` as Ray
tasks (``pip install ray``) and reduces their results as they arrive. At most ``2 * workers`` shards of
text are in flight; the corpus is streamed twice and never held.

Memory: the window tables (8 bytes a window of ``order`` bytes, load <= 0.7, plus a small side table for
the shorter windows and for counts past a word's count field; one per worker during pass 1, sized from a
sample of a list corpus so that a corpus of a few MB needs no doubling), then the sorted windows (in
place) and the kept n-grams; in pass 2 the LM trie (16 bytes a trie slot), the shared piece table (32
bytes a slot plus the piece bytes) and one small buffer per worker; for pruning, the pieces packed in one
buffer (no Python object per piece). Large buffers get pages of their own, returned to the system when
freed. On the 6 MB benchmark corpus training allocates about 28 MB (SentencePiece BPE: 124 MB).
Results are exact integers: they do not depend on ``workers``, ``shard_chars`` or the backend.
"""

from __future__ import annotations

import gc
import sys
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np

from kexue.tokenizers._backend import core_name, resolve_core
from kexue.tokenizers.corpus import check_reiterable, shards
from kexue.tokenizers.ngrams import MAX_ORDER, NgramCounts, NgramLM, build_lm, merge_ngram_counts
from kexue.tokenizers.pruning import prune_packed
from kexue.tokenizers.text import training_chunks
from kexue.tokenizers.tokenizer import Tokenizer

__all__ = [
    "Trainer",
    "count_ngrams_shard",
    "count_pieces_shard",
    "merge_ngram_counts",
    "merge_piece_counts",
]

BACKENDS = ("local", "ray")
_IN_FLIGHT = 3  # shards a local worker may run ahead of the slowest one
# pieces a pass-2 thread counts on its own before it flushes them into the shared table
_FLUSH_PIECES = 1 << 14

# --- map and reduce functions (module level: picklable for processes and Ray) ----------------


def prepare_texts(texts: list[str], isolate_digits: bool) -> list[bytes]:
    """What the core chunks: NFC-normalised UTF-8 texts (with ``isolate_digits``, their regex chunks)."""
    if isolate_digits:
        return [c for t in texts for c in training_chunks(t, True)]
    normalize = unicodedata.normalize
    try:
        return [normalize("NFC", t).encode() for t in texts]
    except UnicodeEncodeError as exc:
        raise ValueError(f"a corpus item is not encodable as UTF-8 ({exc.reason})") from exc


def count_ngrams_shard(texts: list[str], order: int, isolate_digits: bool, core: str = "auto") -> NgramCounts:
    """Map step of pass 1 (Ray): exact counts of the ``order``-byte windows of one shard of texts."""
    table = resolve_core(core).NgramTable(capacity=max(1024, sum(len(t) for t in texts) // 4))
    table.add_texts(prepare_texts(texts, isolate_digits), order)
    return NgramCounts.from_table(table)


_LM_CACHE: dict[tuple[str, bool, str], Any] = {}  # per-process cache of the core built from one LM


def _bnlm(lm: NgramLM, ensure_unicode: bool, core: str) -> Any:
    key = (lm.token, bool(ensure_unicode), core)
    if key not in _LM_CACHE:
        _LM_CACHE.clear()
        _LM_CACHE[key] = resolve_core(core).BNLMCore(lm.keys, lm.L, lm.order, ensure_unicode)
    return _LM_CACHE[key]


def count_pieces_shard(
    texts: list[str], lm: NgramLM, isolate_digits: bool, ensure_unicode: bool, core: str = "auto"
) -> dict[bytes, int]:
    """Map step of pass 2 (Ray): piece counts of the n-gram LM segmentation of one shard."""
    mod = resolve_core(core)
    counter = mod.PieceCounter()
    _bnlm(lm, ensure_unicode, core).count_texts(prepare_texts(texts, isolate_digits), counter)
    return counter.to_dict()


def merge_piece_counts(a: dict[bytes, int], b: dict[bytes, int]) -> dict[bytes, int]:
    """Reduce step of pass 2: the sum of two piece counters (updates and returns the larger one)."""
    if len(a) < len(b):
        a, b = b, a
    for k, v in b.items():
        a[k] = a.get(k, 0) + v
    return a


# --- progress ------------------------------------------------------------------------------


@contextmanager
def _progress(enabled: bool, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda n: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeElapsedColumn()]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def _estimated_bytes(corpus: Iterable) -> int | None:
    """About how many UTF-8 bytes a list/tuple corpus or a ``FileCorpus`` holds (cheap: sampled), else None."""
    total = getattr(corpus, "total_bytes", None)
    if isinstance(total, int):
        return total
    if not isinstance(corpus, (list, tuple)) or not corpus:
        return None
    step = max(1, len(corpus) // 512)
    sample = [t for t in corpus[::step] if isinstance(t, (str, bytes))]
    chars = sum(len(t) for t in sample)
    if not sample or chars == 0:
        return None
    nbytes = sum(len(t.encode("utf-8", "replace")) if isinstance(t, str) else len(t) for t in sample)
    return int(nbytes / chars * sum(len(t) for t in corpus if isinstance(t, (str, bytes))))


def _window_capacity(corpus: Iterable, parts: int) -> int:
    """Initial capacity of each window table: room for about a fifth of its share of the byte positions
    (6 MB of mixed text has 0.2 distinct 6-byte windows a position), between 2**16 and 2**20, so that a
    table of a corpus of a few MB does not grow (every doubling rehashes and maps fresh pages)."""
    est = _estimated_bytes(corpus)
    if est is None:
        return 1 << 16
    return int(min(max(est // parts // 5, 1 << 16), 1 << 20))


def _corpus_size(corpus: Iterable) -> int | None:
    total = getattr(corpus, "total_bytes", None)
    if isinstance(total, int):
        return total
    if isinstance(corpus, (list, tuple)) and len(corpus) < 10_000_000:
        try:
            return sum(len(t.encode("utf-8")) if isinstance(t, str) else len(t) for t in corpus)
        except (TypeError, AttributeError):
            return None
    return None


# --- executors -------------------------------------------------------------------------------


class _Ray:
    """The same map functions as Ray tasks, at most ``2 * workers`` in flight."""

    def __init__(self, workers: int) -> None:
        import ray

        self.ray = ray
        self.limit = 2 * workers
        self.pending: list[Any] = []
        self.remotes: dict[Callable, Any] = {}

    def put(self, obj: Any) -> Any:
        return self.ray.put(obj)

    def submit(self, fn: Callable, *args: Any) -> list[Any]:
        if fn not in self.remotes:
            self.remotes[fn] = self.ray.remote(fn)
        out = []
        while len(self.pending) >= self.limit:
            done, self.pending = self.ray.wait(self.pending, num_returns=1)
            out.extend(self.ray.get(done))
        self.pending.append(self.remotes[fn].remote(*args))
        return out

    def drain(self) -> Iterator[Any]:
        while self.pending:
            done, self.pending = self.ray.wait(self.pending, num_returns=1)
            yield from self.ray.get(done)

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref)
        self.pending = []


def _ray_start(workers: int) -> bool:
    """Start a local Ray instance unless one is running; return whether we started it."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("backend='ray' needs Ray: pip install 'ray>=2'") from exc
    if ray.is_initialized():
        return False
    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


# --- the trainer -------------------------------------------------------------------------------


def _int(name: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {rng}, got {value}")
    return value


class Trainer:
    """BytePiece trainer (options as in ``bytepiece.Trainer``).

    ``lm_min_count`` (default ``min_count``, as in BytePiece) prunes the n-grams of the segmentation LM
    separately from the pieces. A sparser LM (``2 * min_count``) gives more reusable pieces: on the mixed
    6 MB benchmark corpus (vocabulary 16k) bytes/token on held-out English rose from 3.37 to 4.02 and on
    Python code from 3.43 to 3.97, Chinese from 4.62 to 4.51 (``benchmarks/tokenizers.py``).

    ``max_vocab_size`` counts the 3 special tokens and may be a list (one model per size, trained
    together); the final size can be below the target. ``order <= 7`` (n-grams are packed in 64 bits).
    ``core`` selects the compiled core or the pure-Python reference (identical results).
    """

    def __init__(
        self,
        order: int = 6,
        max_vocab_size: int | list[int] = 10000,
        max_piece_length: int = 36,
        min_count: int = 2,
        isolate_digits: bool = False,
        ensure_unicode: bool = True,
        core: str = "auto",
        lm_min_count: int | None = None,
    ) -> None:
        self.order = _int("order", order, 1, MAX_ORDER)
        sizes = max_vocab_size if isinstance(max_vocab_size, (list, tuple)) else [max_vocab_size]
        if not sizes:
            raise ValueError("max_vocab_size must not be an empty list")
        for s in sizes:
            _int("max_vocab_size", s, 259)
        self.max_vocab_sizes = sorted(sizes, reverse=True)
        self._single = not isinstance(max_vocab_size, (list, tuple))
        self.max_piece_length = _int("max_piece_length", max_piece_length, 1)
        self.min_count = _int("min_count", min_count, 1)
        self.lm_min_count = self.min_count if lm_min_count is None else _int("lm_min_count", lm_min_count, 1)
        for name, v in (("isolate_digits", isolate_digits), ("ensure_unicode", ensure_unicode)):
            if not isinstance(v, bool):
                raise TypeError(f"{name} must be a bool, got {type(v).__name__}")
        self.isolate_digits = isolate_digits
        self.ensure_unicode = ensure_unicode
        self.core = core_name(resolve_core(core))
        self.lm: NgramLM | None = None
        self._pieces: tuple[bytes, np.ndarray, np.ndarray] | None = None  # PieceCounter.packed()
        self.vocabularies: list[dict[bytes, int]] = []
        self.stats: dict[str, float] = {}

    @property
    def piece_counts(self) -> dict[bytes, int] | None:
        """The piece counts of the last training's LM segmentation (before pruning), or ``None``."""
        if self._pieces is None:
            return None
        buf, offsets, counts = self._pieces
        bounds = offsets.tolist()
        return {buf[a:b]: c for a, b, c in zip(bounds[:-1], bounds[1:], counts.tolist())}

    def options(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "max_vocab_size": self.max_vocab_sizes[0] if self._single else list(self.max_vocab_sizes),
            "max_piece_length": self.max_piece_length,
            "min_count": self.min_count,
            "lm_min_count": self.lm_min_count,
            "isolate_digits": self.isolate_digits,
            "ensure_unicode": self.ensure_unicode,
        }

    def train(
        self,
        corpus: Iterable[str | bytes],
        *,
        workers: int = 1,
        backend: str = "local",
        shard_chars: int = 1 << 18,
        progress: bool | None = None,
    ) -> Tokenizer | list[Tokenizer]:
        """Train on a re-iterable corpus of ``str``/``bytes`` (UTF-8) items; see the module docstring.

        Returns one :class:`Tokenizer`, or one per size when ``max_vocab_size`` was a list (largest first).
        ``progress=None`` shows a progress bar only when stderr is a terminal. With ``backend="ray"`` a
        running Ray instance is used (``ray.init(address=...)`` first to use a cluster); otherwise a local
        one with ``workers`` CPUs is started for the call and shut down after it.
        """
        check_reiterable(corpus)
        workers = _int("workers", workers, 1)
        shard_chars = _int("shard_chars", shard_chars, 1)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if progress is None:
            progress = sys.stderr.isatty()
        total = _corpus_size(corpus) if progress else None
        own_ray = backend == "ray" and _ray_start(workers)
        gc_was_enabled = gc.isenabled()
        gc.disable()  # training makes no reference cycles; the collector would only re-scan the corpus
        try:
            return self._train(corpus, workers, backend, shard_chars, progress, total)
        finally:
            if gc_was_enabled:
                gc.enable()
            if own_ray:
                import ray

                ray.shutdown()

    def _train(
        self,
        corpus: Iterable,
        workers: int,
        backend: str,
        shard_chars: int,
        progress: bool,
        total: int | None,
    ) -> Tokenizer | list[Tokenizer]:
        mod = resolve_core(self.core)
        order, digits = self.order, self.isolate_digits
        t0 = time.perf_counter()
        if backend == "ray":
            table = mod.NgramTable()
            ray = _Ray(workers)
            for r in self._ray_pass(
                ray,
                corpus,
                shard_chars,
                progress,
                "count n-grams",
                total,
                count_ngrams_shard,
                (order, digits, self.core),
            ):
                table.add_counts(r.keys, r.counts)
            tables = [table]
        else:
            # every thread reads every shard and counts the windows of its own hash class: disjoint tables
            cap = _window_capacity(corpus, workers)
            tables = [mod.NgramTable(cap) for _ in range(workers)]
            self._local_pass(
                corpus,
                shard_chars,
                progress,
                "count n-grams",
                total,
                digits,
                lambda k, texts: tables[k].add_texts(texts, order, part=k, parts=workers),
                workers,
            )
        n = sum(len(t) for t in tables)
        if n == 0:
            raise ValueError("the corpus is empty: no text to train on")
        self.stats["seconds_count_windows"] = time.perf_counter() - t0
        self.stats["windows_counted"] = n
        self.stats["window_table_bytes"] = sum(t.nbytes for t in tables)
        # each table holds every window of its grams (>= 2 bytes): prune them apart, in parallel; the
        # counts of the empty gram and the single bytes are partial and are summed below
        if len(tables) > 1:
            with ThreadPoolExecutor(max_workers=len(tables)) as pool:
                parts = list(pool.map(lambda t: t.pruned_grams(self.lm_min_count), tables))
        else:
            parts = [tables[0].pruned_grams(self.lm_min_count)]
        tables.clear()
        mod.release_memory()
        keys = np.concatenate([k for k, _ in parts])
        counts = np.concatenate([c for _, c in parts])
        del parts
        mod.sort_pairs(keys, counts)
        if np.any(keys[1:] == keys[:-1]):
            starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            counts = np.add.reduceat(counts, starts).astype(np.int64)
            keys = keys[starts]
        lm = build_lm(NgramCounts(keys, counts), order, self.lm_min_count, mod)
        del keys, counts
        mod.release_memory()  # the pass-1 arrays freed since the last trim
        self.lm = lm
        self.stats["ngrams_kept"] = len(lm)
        t1 = time.perf_counter()
        if backend == "ray":
            counter = mod.PieceCounter()
            lm_ref = ray.put(lm)
            for r in self._ray_pass(
                ray,
                corpus,
                shard_chars,
                progress,
                "count pieces",
                total,
                count_pieces_shard,
                (lm_ref, digits, self.ensure_unicode, self.core),
            ):
                counter.add_dict(r)
        else:
            counter = self._count_pieces_local(mod, lm, corpus, workers, shard_chars, progress, total)
        self.stats["seconds_segment"] = time.perf_counter() - t1
        buf, offsets, counts = counter.packed()
        del counter
        mod.release_memory()
        self._pieces = (buf, offsets, counts)
        self.stats["pieces_counted"] = len(counts)
        t2 = time.perf_counter()
        self.vocabularies = prune_packed(
            buf,
            offsets,
            counts,
            self.max_vocab_sizes,
            self.min_count,
            self.max_piece_length,
            mod,
            threads=workers,
        )
        t3 = time.perf_counter()
        self.stats.update(seconds_ngrams=t1 - t0, seconds_pieces=t2 - t1, seconds_prune=t3 - t2)
        tokenizers = [Tokenizer._from_trainer(v, self.core, self.options()) for v in self.vocabularies]
        return tokenizers[0] if self._single else tokenizers

    def _count_pieces_local(
        self,
        mod: Any,
        lm: NgramLM,
        corpus: Iterable,
        workers: int,
        shard_chars: int,
        progress: bool,
        total: int | None,
    ) -> Any:
        """Pass 2 on threads sharing one LM core and one piece table: each thread counts into a small table
        of its own (``_FLUSH_PIECES`` pieces, cache-sized) that it flushes into the shared one when full, so
        the pieces are held once, not once per thread."""
        seg = mod.BNLMCore(lm.keys, lm.L, lm.order, self.ensure_unicode)
        counter = mod.PieceCounter()
        if workers == 1:
            work = lambda k, texts: seg.count_texts(texts, counter)
            buffers = []
        else:
            buffers = [mod.PieceCounter() for _ in range(workers)]
            work = lambda k, texts: seg.count_texts(
                texts[k::workers], buffers[k], total=counter, flush_at=_FLUSH_PIECES
            )
        self._local_pass(
            corpus, shard_chars, progress, "count pieces", total, self.isolate_digits, work, workers
        )
        for b in buffers:
            counter.merge(b)
            b.clear()
        return counter

    @staticmethod
    def _local_pass(
        corpus: Iterable,
        shard_chars: int,
        progress: bool,
        description: str,
        total: int | None,
        isolate_digits: bool,
        work: Callable[[int, list[bytes]], None],
        workers: int,
    ) -> None:
        """``work(k, texts)`` for ``k < workers``, shard by shard (the core releases the GIL).

        Worker ``k`` runs its calls in corpus order on its own thread; the workers are not synchronised per
        shard, so one can run ahead of another by up to ``_IN_FLIGHT`` shards (which bounds the memory).
        """
        if workers == 1:
            with _progress(progress, description, total) as advance:
                for shard in shards(corpus, shard_chars):
                    texts = prepare_texts(shard, isolate_digits)
                    work(0, texts)
                    advance(sum(len(t) for t in texts) if progress else 0)
            return
        lanes = [ThreadPoolExecutor(max_workers=1) for _ in range(workers)]
        pending: deque[tuple[list[Future], int]] = deque()
        try:
            with _progress(progress, description, total) as advance:
                for shard in shards(corpus, shard_chars):
                    texts = prepare_texts(shard, isolate_digits)
                    futures = [lane.submit(work, k, texts) for k, lane in enumerate(lanes)]
                    pending.append((futures, sum(len(t) for t in texts) if progress else 0))
                    while len(pending) > _IN_FLIGHT or (pending and all(f.done() for f in pending[0][0])):
                        futures, size = pending.popleft()
                        for f in futures:
                            f.result()
                        advance(size)
                while pending:
                    futures, size = pending.popleft()
                    for f in futures:
                        f.result()
                    advance(size)
        finally:
            for lane in lanes:
                lane.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _ray_pass(
        ex: _Ray,
        corpus: Iterable,
        shard_chars: int,
        progress: bool,
        description: str,
        total: int | None,
        fn: Callable,
        args: tuple,
    ) -> Iterator[Any]:
        try:
            with _progress(progress, description, total) as advance:
                for shard in shards(corpus, shard_chars):
                    yield from ex.submit(fn, shard, *args)
                    advance(sum(len(t.encode("utf-8")) for t in shard) if progress else 0)
                yield from ex.drain()
        finally:
            ex.close()
