"""BytePiece tokenizer: a Unigram model over raw UTF-8 bytes, lossless for any input.

From "BytePiece：更纯粹、更高压缩率的Tokenizer" (2023-09-07, kexue.fm/archives/9752). Every piece ``w``
has the log-probability ``l(w) = log n(w) - log sum_v n(v)`` (float64). A text is NFC-normalised (``str``
input; ``bytes`` are used as they are), split into chunks at newlines, and each chunk is segmented:

* deterministic (``alpha=None``): the Viterbi segmentation ``argmax_seg sum_{w in seg} l(w)``, on ties the
  longest piece ending at a position wins -- the same tokens as the original ``bytepiece`` package;
* random (``alpha >= 0``): a segmentation drawn exactly from ``P(seg) ∝ exp(alpha * sum l(w))`` by the
  one-pass "perfect sampling" algorithm of "随机分词再探：从Viterbi Sampling到完美采样算法" (2023-10-16,
  kexue.fm/archives/9811). ``alpha=0`` is uniform over all segmentations; large ``alpha`` tends to Viterbi.

The vocabulary always holds the 256 single bytes, so there is no unknown token and
``decode_bytes(encode(x)) == x`` for every ``bytes`` x (``decode(encode(s)) == NFC(s)`` for ``str``).
Ids 0/1/2 are ``<pad>``/``<bos>``/``<eos>``; pieces have ids 3, 4, ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from kexue.tokenizers._backend import core_name, resolve_core
from kexue.tokenizers.serialization import (
    SPECIAL_TOKENS,
    atomic_write_text,
    dump_kexue,
    dump_original,
    parse_model,
    read_model,
)
from kexue.tokenizers.text import NORMALIZATIONS, to_bytes

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
NUM_SPECIAL = len(SPECIAL_TOKENS)

# a string, so that importing this module does not import numpy.random (6 MB of RSS)
SeedLike: TypeAlias = "int | np.random.Generator | None"


def _seed64(seed: int) -> int:
    return int(np.random.SeedSequence(seed).generate_state(1, np.uint64)[0])


def check_alpha(alpha: float | None) -> float | None:
    """``None`` (or a negative number, BytePiece's convention) means deterministic; else a finite ``alpha >= 0``."""
    if alpha is None:
        return None
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha must be a number or None, got {type(alpha).__name__}")
    a = float(alpha)
    if not math.isfinite(a):
        raise ValueError(
            f"alpha must be finite (None or a negative value for deterministic decoding), got {a}"
        )
    return None if a < 0 else a


class Tokenizer:
    """BytePiece tokenizer.

    ``pieces`` is a model file (kexue or original BytePiece format), a mapping ``piece -> count``
    (``bytes`` or ``str`` keys; ids follow (length, bytes) order as in BytePiece), a list of
    ``(piece, count)`` in id order, or a parsed original model dict. ``seed`` seeds the tokenizer's own
    generator, used by sampling calls that pass no seed. ``normalize`` is ``"NFC"`` or ``None`` (``str``
    input is then only UTF-8 encoded). ``core`` picks the compiled core or the pure-Python reference.
    """

    def __init__(
        self,
        pieces: str | os.PathLike | Mapping | Sequence[tuple[bytes, int]],
        *,
        seed: int | None = None,
        normalize: str | None | object = ...,
        core: str = "auto",
    ) -> None:
        options: dict[str, Any] = {"normalize": "NFC", "trainer": {}}
        if isinstance(pieces, (str, os.PathLike)):
            items, options = read_model(pieces)
        elif isinstance(pieces, Mapping):
            if pieces and all(isinstance(v, list) for v in pieces.values()):
                items, options = parse_model(dict(pieces), source="pieces")
            else:
                items = _from_counts(pieces)
        elif isinstance(pieces, Sequence):
            items = [(_as_piece(p), c) for p, c in pieces]
            _validate_items(items)
            items = [(p, int(c)) for p, c in items]
        else:
            raise TypeError(
                f"pieces must be a model path, a mapping piece -> count, or a list of (piece, count); "
                f"got {type(pieces).__name__}"
            )
        if normalize is ...:
            normalize = options.get("normalize", "NFC")
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
        self._setup(
            [p for p, _ in items],
            np.array([c for _, c in items], dtype=np.int64),
            normalize,
            dict(options.get("trainer") or {}),
            seed,
            core,
        )

    def _setup(
        self,
        pieces: list[bytes],
        counts: np.ndarray,
        normalize: str | None,
        trainer_options: dict[str, Any],
        seed: int | None,
        core: str,
    ) -> None:
        self.normalize: str | None = normalize
        self.trainer_options: dict[str, Any] = trainer_options
        self._pieces: list[bytes] = pieces
        self._counts = counts
        self._piece_to_id = dict(zip(pieces, range(NUM_SPECIAL, NUM_SPECIAL + len(pieces))))
        total = int(self._counts.sum())
        self._logp = np.ascontiguousarray(np.log(self._counts.astype(np.float64)) - np.log(total))
        self._core_module = resolve_core(core)
        self._core = self._core_module.UnigramCore(self._pieces, self._logp)
        self._table = [b""] * NUM_SPECIAL + self._pieces
        self._max_len = max(map(len, self._pieces))
        self._seed = seed
        self._rng = np.random.default_rng(seed)

    @classmethod
    def _from_trainer(
        cls, vocabulary: dict[bytes, int], core: str, trainer_options: dict[str, Any]
    ) -> Tokenizer:
        """A trained vocabulary (bytes -> positive int, every single byte present): no validation pass."""
        tok = cls.__new__(cls)
        pieces = sorted(vocabulary)  # by bytes, then (stable) by length: the order of _from_counts
        pieces.sort(key=len)
        counts = np.fromiter(map(vocabulary.__getitem__, pieces), np.int64, count=len(pieces))
        tok._setup(pieces, counts, "NFC", dict(trainer_options), None, core)
        return tok

    # --- basic properties -----------------------------------------------------------------

    @property
    def core(self) -> str:
        """``"compiled"`` or ``"python"``."""
        return core_name(self._core_module)

    @property
    def vocab_size(self) -> int:
        """Number of ids, the 3 special tokens included."""
        return len(self._pieces) + NUM_SPECIAL

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def pieces(self) -> list[bytes]:
        """The pieces in id order (ids 3, 4, ...)."""
        return list(self._pieces)

    @property
    def counts(self) -> np.ndarray:
        """The piece counts in id order."""
        return self._counts.copy()

    @property
    def log_probs(self) -> np.ndarray:
        """``log n(w) - log sum n`` in id order."""
        return self._logp.copy()

    @property
    def max_piece_length(self) -> int:
        """Length in bytes of the longest piece."""
        return self._max_len

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, normalize={self.normalize!r}, core={self.core!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "items": list(zip(self._pieces, self._counts.tolist())),
            "normalize": self.normalize,
            "trainer": self.trainer_options,
            "core": self.core,
            "seed": self._seed,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["items"], seed=state["seed"], normalize=state["normalize"], core=state["core"])
        self.trainer_options = state["trainer"]

    # --- ids and pieces ----------------------------------------------------------------------

    def id_to_piece(self, i: int) -> bytes | str:
        """The piece (``bytes``) of id ``i``; the special tokens are returned as ``str``."""
        i = _as_id(i, self.vocab_size)
        return SPECIAL_TOKENS[i] if i < NUM_SPECIAL else self._pieces[i - NUM_SPECIAL]

    def piece_to_id(self, piece: bytes | str) -> int:
        """Id of a piece (``bytes``; a ``str`` is a special token or UTF-8 encoded). KeyError if absent."""
        if isinstance(piece, str):
            if piece in SPECIAL_TOKENS:
                return SPECIAL_TOKENS.index(piece)
            piece = piece.encode("utf-8")
        if not isinstance(piece, (bytes, bytearray)):
            raise TypeError(f"piece must be bytes or str, got {type(piece).__name__}")
        try:
            return self._piece_to_id[bytes(piece)]
        except KeyError:
            raise KeyError(f"piece {bytes(piece)!r} is not in the vocabulary") from None

    def log_prob(self, piece: bytes | str) -> float:
        """``l(piece)``."""
        i = self.piece_to_id(piece)
        if i < NUM_SPECIAL:
            raise KeyError(f"special token {piece!r} has no probability")
        return float(self._logp[i - NUM_SPECIAL])

    # --- encoding ----------------------------------------------------------------------------

    def _random(self, alpha: float | None, seed: SeedLike) -> tuple[bool, float, int]:
        a = check_alpha(alpha)
        if a is None:
            return False, 0.0, 0
        if seed is None:
            s = int(self._rng.integers(0, 2**64, dtype=np.uint64))
        elif isinstance(seed, np.random.Generator):
            s = int(seed.integers(0, 2**64, dtype=np.uint64))
        elif isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, a numpy Generator or None, got {type(seed).__name__}")
        elif seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        else:
            s = _seed64(int(seed))
        return True, a, s

    def _bytes(self, text: str | bytes) -> bytes:
        return to_bytes(text, self.normalize)

    def tokenize(self, text: str | bytes, alpha: float | None = None, seed: SeedLike = None) -> list[bytes]:
        """The pieces of ``text`` (their concatenation is the normalised UTF-8 bytes of ``text``)."""
        sample, a, s = self._random(alpha, seed)
        return self._core.tokenize(self._bytes(text), True, sample, a, s, 0)

    def encode(
        self,
        text: str | bytes,
        add_bos: bool = False,
        add_eos: bool = False,
        alpha: float | None = None,
        seed: SeedLike = None,
    ) -> list[int]:
        """Token ids of ``text``; ``alpha >= 0`` samples a segmentation (see the module docstring)."""
        sample, a, s = self._random(alpha, seed)
        return self._core.encode(
            self._bytes(text),
            True,
            sample,
            a,
            s,
            0,
            NUM_SPECIAL,
            BOS_ID if add_bos else -1,
            EOS_ID if add_eos else -1,
        )

    def encode_batch(
        self,
        texts: Iterable[str | bytes],
        add_bos: bool = False,
        add_eos: bool = False,
        alpha: float | None = None,
        seed: SeedLike = None,
        num_threads: int | None = None,
    ) -> list[list[int]]:
        """Encode many texts on ``num_threads`` threads (the compiled core runs without the GIL).

        With sampling, item ``i`` uses the random stream ``(seed, i)``, so the result does not depend on
        the number of threads.
        """
        if isinstance(texts, (str, bytes)):
            raise TypeError("encode_batch takes an iterable of texts; use encode() for a single text")
        datas = [self._bytes(t) for t in texts]
        sample, a, s = self._random(alpha, seed)
        if num_threads is None:
            num_threads = os.cpu_count() or 1
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        if self.core == "python":
            num_threads = 1
        bos, eos = (BOS_ID if add_bos else -1), (EOS_ID if add_eos else -1)
        n = len(datas)
        threads = min(num_threads, max(1, n // 8))
        # several slices per thread: while one thread builds its Python lists (GIL held), the others encode
        slices = min(4 * threads, max(1, n // 8))
        if threads <= 1:
            return self._core.encode_many(datas, True, sample, a, s, 0, NUM_SPECIAL, bos, eos)
        bounds = np.linspace(0, n, slices + 1).astype(int).tolist()

        def run(k: int) -> list[list[int]]:
            lo, hi = bounds[k], bounds[k + 1]
            return self._core.encode_many(datas[lo:hi], True, sample, a, s, lo, NUM_SPECIAL, bos, eos)

        with ThreadPoolExecutor(max_workers=threads) as pool:
            parts = list(pool.map(run, range(slices)))
        return [ids for part in parts for ids in part]

    def log_partition(self, text: str | bytes, alpha: float = 1.0) -> float:
        """``log sum_seg exp(alpha * S(seg))`` over the segmentations of ``text`` (sum over its chunks)."""
        a = check_alpha(alpha)
        if a is None:
            raise ValueError(f"log_partition needs alpha >= 0, got {alpha}")
        data = self._bytes(text)
        from kexue.tokenizers.reference import split_chunks

        return float(sum(self._core.log_partition(data[lo:hi], a) for lo, hi in split_chunks(data)))

    # --- decoding ----------------------------------------------------------------------------

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Concatenated piece bytes of ``ids`` (special tokens dropped)."""
        if isinstance(ids, np.ndarray):
            ids = ids.tolist()
        elif not isinstance(ids, list):
            if isinstance(ids, (str, bytes)):
                raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
            ids = list(ids)
        if not ids:
            return b""
        try:
            lo, hi = min(ids), max(ids)
        except TypeError:
            raise TypeError("ids must be integers") from None
        if lo < 0 or hi >= self.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(f"id {bad} is out of range [0, {self.vocab_size})")
        try:
            return b"".join([self._table[i] for i in ids])
        except TypeError:
            raise TypeError("ids must be integers") from None

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """``decode_bytes(ids)`` as text (UTF-8; ``errors`` as in :meth:`bytes.decode`)."""
        return self.decode_bytes(ids).decode("utf-8", errors=errors)

    # --- files -------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, format: str = "kexue") -> Path:
        """Write the model atomically: ``format="kexue"`` (documented in
        :mod:`kexue.tokenizers.serialization`) or ``"bytepiece"`` (readable by the original package)."""
        items = list(zip(self._pieces, self._counts.tolist()))
        if format == "kexue":
            text = dump_kexue(items, self.normalize, self.trainer_options)
        elif format == "bytepiece":
            text = dump_original(items)
        else:
            raise ValueError(f"format must be 'kexue' or 'bytepiece', got {format!r}")
        return atomic_write_text(path, text)

    @classmethod
    def load(cls, path: str | os.PathLike, **kwargs: Any) -> Tokenizer:
        """Load a model file (kexue format or an original BytePiece ``.model``)."""
        return cls(Path(path), **kwargs)


def _as_piece(p: object) -> bytes:
    if isinstance(p, bytes):
        return p
    if isinstance(p, str):
        return p.encode("utf-8")
    raise TypeError(f"pieces must be bytes or str, got {type(p).__name__}")


def _validate_items(items: list[tuple[bytes, int]]) -> None:
    seen = set()
    for p, c in items:
        if not p:
            raise ValueError("pieces must be non-empty")
        if p in seen:
            raise ValueError(f"duplicate piece {p!r}")
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 1:
            raise ValueError(f"count of {p!r} must be a positive integer, got {c!r}")
        seen.add(p)
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise ValueError(
            f"the vocabulary must hold all 256 single bytes; {len(missing)} missing (first {bytes([missing[0]])!r})"
        )


def _from_counts(counts: Mapping) -> list[tuple[bytes, int]]:
    items = [(_as_piece(p), c) for p, c in counts.items()]
    _validate_items(items)
    items.sort(key=lambda t: (len(t[0]), t[0]))
    return [(p, int(c)) for p, c in items]


def _as_id(i: object, vocab_size: int) -> int:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"id must be an int, got {type(i).__name__}")
    i = int(i)
    if not 0 <= i < vocab_size:
        raise ValueError(f"id {i} is out of range [0, {vocab_size})")
    return i
