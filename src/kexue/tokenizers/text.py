"""Pre-splitting of BytePiece (kexue.fm/archives/9752): NFC, then chunks that end at newlines.

A chunk is a maximal run of non-newline characters followed by its newlines; pieces never cross chunks.
Training caps a chunk at 10,000 characters and 100 newlines and, with ``isolate_digits``, makes every
Unicode decimal digit (regex ``\\d``) a chunk of its own. Encoding splits at newlines only (done on the
UTF-8 bytes by the core: byte 0x0A never occurs inside a multi-byte character).
"""

from __future__ import annotations

import re
import unicodedata

MAX_CHUNK_CHARS = 10_000
MAX_CHUNK_NEWLINES = 100

_C, _N = MAX_CHUNK_CHARS, MAX_CHUNK_NEWLINES
_TRAIN_RE = re.compile(rf".{{0,{_C}}}\n{{1,{_N}}}|.{{1,{_C}}}")
_TRAIN_DIGITS_RE = re.compile(rf"\d|[^\n\d]{{0,{_C}}}\n{{1,{_N}}}|[^\n\d]{{1,{_C}}}")
NORMALIZATIONS = ("NFC", None)


def as_text(item: object, where: str = "corpus item") -> str:
    """A corpus item as ``str``: ``bytes`` must be valid UTF-8."""
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"{where} is bytes but not valid UTF-8 ({exc.reason} at byte {exc.start})"
            ) from exc
    raise TypeError(f"{where} must be str or bytes, got {type(item).__name__}")


def training_chunks(text: str, isolate_digits: bool = False) -> list[bytes]:
    """NFC-normalise ``text`` and split it into the UTF-8 chunks seen by the trainer."""
    text = unicodedata.normalize("NFC", text)
    pattern = _TRAIN_DIGITS_RE if isolate_digits else _TRAIN_RE
    return [t.encode("utf-8") for t in pattern.findall(text)]


def to_bytes(text: str | bytes, normalize: str | None = "NFC") -> bytes:
    """What the encoder sees: ``bytes`` unchanged; ``str`` normalised (NFC by default) and UTF-8 encoded."""
    if isinstance(text, bytes):
        return text
    if isinstance(text, str):
        if normalize == "NFC":
            text = unicodedata.normalize("NFC", text)
        return text.encode("utf-8", errors="surrogatepass")
    if isinstance(text, (bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"text must be str or bytes, got {type(text).__name__}")
