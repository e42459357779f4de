"""Corpora for the trainer: re-iterable collections of texts, read in shards.

Training makes two passes over the corpus, so it must be re-iterable: a list or tuple of ``str``/``bytes``,
a :class:`FileCorpus`, or any object whose ``__iter__`` returns a fresh iterator. A one-shot generator is
rejected with :class:`TypeError` (it would be exhausted after the first pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from kexue.tokenizers.text import as_text


class FileCorpus:
    """Text files read as blocks of about ``block_chars`` characters, cut only at chunk boundaries.

    A block ends after a line's newline and before a line that does not start with a newline, so the
    trainer's chunks (runs of text plus their newlines) are exactly those of the whole file. ``\\r`` is kept
    as it is (files are opened with ``newline="\\n"``). ``len()`` is the total size in bytes (for progress).
    """

    def __init__(
        self,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        encoding: str = "utf-8",
        block_chars: int = 1 << 20,
    ) -> None:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("FileCorpus needs at least one file")
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(f"corpus file {p} does not exist")
        if isinstance(block_chars, bool) or not isinstance(block_chars, int) or block_chars < 1:
            raise ValueError(f"block_chars must be a positive int, got {block_chars!r}")
        self.encoding = encoding
        self.block_chars = block_chars

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

    def __iter__(self) -> Iterator[str]:
        for path in self.paths:
            buf: list[str] = []
            size = 0
            with open(path, encoding=self.encoding, newline="\n") as f:
                for line in f:
                    if size >= self.block_chars and line[0] != "\n":
                        yield "".join(buf)
                        buf, size = [], 0
                    buf.append(line)
                    size += len(line)
            if buf:
                yield "".join(buf)


def check_reiterable(corpus: object) -> None:
    """Raise ``TypeError`` unless ``corpus`` can be iterated twice."""
    if isinstance(corpus, (str, bytes, bytearray)):
        raise TypeError(
            "corpus must be an iterable of texts (e.g. a list of str); got a single "
            f"{type(corpus).__name__} -- wrap it in a list, or use FileCorpus for file paths"
        )
    if isinstance(corpus, (os.PathLike,)):
        raise TypeError("corpus is a path; use FileCorpus([path]) to read files")
    try:
        it = iter(corpus)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"corpus must be an iterable of str/bytes, got {type(corpus).__name__}") from None
    if it is corpus:
        raise TypeError(
            "corpus must be re-iterable (training reads it twice); got a one-shot iterator or generator "
            f"({type(corpus).__name__}) -- pass a list, a FileCorpus, or an object whose __iter__ restarts"
        )


def shards(corpus: Iterable, shard_chars: int, start_index: int = 0) -> Iterator[list[str]]:
    """Group corpus items (validated as text) into lists of about ``shard_chars`` characters."""
    buf: list[str] = []
    size = 0
    for i, item in enumerate(corpus, start_index):
        text = item if type(item) is str else as_text(item, where=f"corpus item {i}")
        buf.append(text)
        size += len(text)
        if size >= shard_chars:
            yield buf
            buf, size = [], 0
    if buf:
        yield buf
