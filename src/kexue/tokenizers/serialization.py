"""Model files: kexue's own format, and the JSON ``.model`` files of the original BytePiece.

kexue format (``format = "kexue.bytepiece"``, ``version = 1``), one UTF-8 JSON object::

    {
      "format": "kexue.bytepiece",
      "version": 1,
      "normalize": "NFC",                       # or null: how str input is normalised before encoding
      "special_tokens": ["<pad>", "<bos>", "<eos>"],   # ids 0, 1, 2
      "num_pieces": N,
      "pieces": [["<base64 of the piece bytes>", count], ...],   # ids 3, 4, ... in this order
      "sha256": "<hex digest of the canonical JSON of `pieces`>",
      "trainer": {...}                          # the Trainer options, informational
    }

The piece log-probability is ``log(count) - log(sum of counts)`` (float64, as BytePiece). ``sha256`` is
taken over ``json.dumps(pieces, separators=(",", ":"))``, so any truncation or edit of the pieces is
detected on load. Files are written atomically: to a temporary file in the same directory, flushed and
fsync'ed, then renamed over the target, so an interrupted save leaves no partial model.

Original BytePiece format (``bytepiece==0.6.3``, ``Trainer.save``): a JSON object
``{"<base64 piece>": [id, "<display string>", count], ...}`` with ids from 3.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path
from typing import Any

FORMAT = "kexue.bytepiece"
VERSION = 1
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")


def _sha256(text: str) -> str:
    import hashlib  # here, not at import time: it loads OpenSSL (3.5 MB of RSS in every importer)

    return hashlib.sha256(text.encode("ascii")).hexdigest()


def _digest(pieces: list) -> str:
    return _sha256(json.dumps(pieces, separators=(",", ":")))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} does not exist")
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def dump_kexue(
    pieces: list[tuple[bytes, int]], normalize: str | None, trainer: dict[str, Any] | None = None
) -> str:
    """The kexue-format JSON text for ``pieces`` (bytes, count) in id order (ids 3, 4, ...)."""
    # json.dumps(pieces as [[base64, count], ...], separators=(",", ":")), written out directly: base64
    # needs no escaping. The digest covers this text.
    b64 = binascii.b2a_base64
    compact = "[" + ",".join([f'["{b64(p, newline=False).decode("ascii")}",{c:d}]' for p, c in pieces]) + "]"
    head = {
        "format": FORMAT,
        "version": VERSION,
        "normalize": normalize,
        "special_tokens": list(SPECIAL_TOKENS),
        "num_pieces": len(pieces),
        "sha256": _sha256(compact),
        "trainer": trainer or {},
    }
    # one piece a line (base64 has no brackets, so "],[" only occurs between pieces)
    text = json.dumps(head, ensure_ascii=False, indent=0)
    return text[: text.rindex("}")].rstrip() + ',\n"pieces": ' + compact.replace("],[", "],\n[") + "\n}\n"


def dump_original(pieces: list[tuple[bytes, int]]) -> str:
    """The original BytePiece JSON for ``pieces`` (bytes, count) in id order."""
    doc = {
        base64.b64encode(p).decode("ascii"): [i + 3, p.decode("utf-8", errors="ignore"), int(c)]
        for i, (p, c) in enumerate(pieces)
    }
    return json.dumps(doc, ensure_ascii=False, indent=4)


def _b64(s: object, where: str) -> bytes:
    if not isinstance(s, str):
        raise ValueError(f"{where}: piece must be a base64 string, got {type(s).__name__}")
    try:
        p = base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"{where}: piece {s!r} is not valid base64") from exc
    if not p:
        raise ValueError(f"{where}: empty piece")
    return p


def _count(c: object, where: str) -> int:
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise ValueError(f"{where}: count must be a positive integer, got {c!r}")
    return c


def parse_model(doc: object, source: str = "model") -> tuple[list[tuple[bytes, int]], dict[str, Any]]:
    """Validate a parsed model (either format); return pieces (bytes, count) in id order and options."""
    if not isinstance(doc, dict):
        raise ValueError(f"{source}: a model must be a JSON object, got {type(doc).__name__}")
    if doc.get("format") == FORMAT:
        if doc.get("version") != VERSION:
            raise ValueError(f"{source}: unsupported version {doc.get('version')!r} (expected {VERSION})")
        payload = doc.get("pieces")
        if not isinstance(payload, list):
            raise ValueError(f"{source}: 'pieces' must be a list")
        if doc.get("num_pieces") != len(payload):
            raise ValueError(
                f"{source}: num_pieces says {doc.get('num_pieces')!r} but the file holds {len(payload)} pieces"
                " (truncated or edited?)"
            )
        if doc.get("sha256") != _digest(payload):
            raise ValueError(f"{source}: checksum mismatch: the pieces were corrupted or edited")
        if doc.get("normalize") not in ("NFC", None):
            raise ValueError(f"{source}: normalize must be 'NFC' or null, got {doc.get('normalize')!r}")
        pieces = []
        for i, item in enumerate(payload):
            where = f"{source}: piece {i}"
            if not isinstance(item, list) or len(item) != 2:
                raise ValueError(f"{where}: expected [base64, count], got {item!r}")
            pieces.append((_b64(item[0], where), _count(item[1], where)))
        options = {"normalize": doc.get("normalize"), "trainer": doc.get("trainer") or {}}
    elif "format" in doc:
        raise ValueError(f"{source}: unknown model format {doc.get('format')!r}")
    else:
        by_id: dict[int, tuple[bytes, int]] = {}
        for k, v in doc.items():
            where = f"{source}: entry {k!r}"
            if not isinstance(v, list) or len(v) != 3:
                raise ValueError(f"{where}: expected [id, text, count], got {v!r}")
            i = v[0]
            if isinstance(i, bool) or not isinstance(i, int):
                raise ValueError(f"{where}: id must be an integer, got {i!r}")
            if i in by_id:
                raise ValueError(f"{where}: duplicate id {i}")
            by_id[i] = (_b64(k, where), _count(v[2], where))
        n = len(by_id)
        if sorted(by_id) != list(range(3, n + 3)):
            raise ValueError(f"{source}: ids must be dense from 3 to {n + 2}")
        pieces = [by_id[i] for i in range(3, n + 3)]
        options = {"normalize": "NFC", "trainer": {}}
    seen = set()
    for p, _ in pieces:
        if p in seen:
            raise ValueError(f"{source}: duplicate piece {p!r}")
        seen.add(p)
    missing = [b for b in range(256) if bytes([b]) not in seen]
    if missing:
        raise ValueError(
            f"{source}: the vocabulary must hold all 256 single bytes; {len(missing)} missing "
            f"(first {bytes([missing[0]])!r})"
        )
    return pieces, options


def read_model(path: str | os.PathLike) -> tuple[list[tuple[bytes, int]], dict[str, Any]]:
    """Read and validate a model file in either format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"model file {path} is not UTF-8 text (corrupted?)") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"model file {path} is not valid JSON (truncated or corrupted?): {exc}") from exc
    return parse_model(doc, source=str(path))
