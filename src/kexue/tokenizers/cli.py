"""``kexue bytepiece``: train, encode, decode and inspect BytePiece tokenizers from the shell."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="BytePiece tokenizers (kexue.fm/archives/9752): train on text files, encode, decode, inspect.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _load(model: Path):
    from kexue.tokenizers import Tokenizer

    try:
        return Tokenizer.load(model)
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


def _read_text(text: str | None, file: Path | None) -> str | bytes:
    if text is not None and file is not None:
        err.print("[red]error:[/red] give TEXT or --file, not both")
        raise typer.Exit(2)
    if file is not None:
        if not file.is_file():
            err.print(f"[red]error:[/red] file {file} does not exist")
            raise typer.Exit(2)
        return file.read_bytes()
    if text is not None:
        return text
    return sys.stdin.buffer.read()


@app.command()
def train(
    corpus: Annotated[list[Path], typer.Argument(help="UTF-8 text files to train on.")],
    vocab_size: Annotated[int, typer.Option("--vocab-size", "-v", help="Target vocabulary size (>= 259).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the model.")],
    order: Annotated[int, typer.Option(help="Order of the byte n-gram LM (1..7).")] = 6,
    min_count: Annotated[int, typer.Option(help="Minimum count of kept n-grams and pieces.")] = 2,
    lm_min_count: Annotated[
        int | None,
        typer.Option(help="Minimum count of the n-grams of the segmentation LM (default: --min-count)."),
    ] = None,
    max_piece_length: Annotated[int, typer.Option(help="Longest multi-byte piece, in bytes.")] = 36,
    isolate_digits: Annotated[bool, typer.Option(help="Never join a digit to anything.")] = False,
    ensure_unicode: Annotated[bool, typer.Option(help="No piece starts inside a UTF-8 character.")] = True,
    workers: Annotated[int, typer.Option(help="Threads (or Ray tasks) counting the corpus.")] = 1,
    backend: Annotated[str, typer.Option(help="'local' (threads) or 'ray'.")] = "local",
    format: Annotated[str, typer.Option(help="'kexue' or 'bytepiece' (original JSON).")] = "kexue",
    quiet: Annotated[bool, typer.Option(help="No progress bar.")] = False,
) -> None:
    """Train a model on CORPUS files and save it to --output."""
    from kexue.tokenizers import FileCorpus, Trainer

    try:
        trainer = Trainer(
            order=order,
            max_vocab_size=vocab_size,
            max_piece_length=max_piece_length,
            min_count=min_count,
            lm_min_count=lm_min_count,
            isolate_digits=isolate_digits,
            ensure_unicode=ensure_unicode,
        )
        t0 = time.perf_counter()
        tok = trainer.train(
            FileCorpus(corpus), workers=workers, backend=backend, progress=False if quiet else None
        )
        seconds = time.perf_counter() - t0
        tok.save(output, format=format)
    except (FileNotFoundError, ValueError, TypeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    console.print(f"wrote {output}: vocab_size={tok.vocab_size} ({seconds:.1f} s)")


@app.command()
def encode(
    model: Annotated[Path, typer.Argument(help="Model file (kexue or original BytePiece format).")],
    text: Annotated[str | None, typer.Argument(help="Text to encode (default: --file or stdin).")] = None,
    file: Annotated[Path | None, typer.Option("--file", "-f", help="Encode this file's bytes.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Sample a segmentation (alpha >= 0).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    pieces: Annotated[bool, typer.Option(help="Print the pieces (JSON) instead of ids.")] = False,
) -> None:
    """Print the token ids (space separated) or the pieces of a text."""
    tok = _load(model)
    data = _read_text(text, file)
    try:
        if pieces:
            out = [p.decode("utf-8", errors="backslashreplace") for p in tok.tokenize(data, alpha, seed)]
            typer.echo(json.dumps(out, ensure_ascii=False))
        else:
            typer.echo(" ".join(map(str, tok.encode(data, alpha=alpha, seed=seed))))
    except (ValueError, TypeError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def decode(
    model: Annotated[Path, typer.Argument(help="Model file.")],
    ids: Annotated[list[str] | None, typer.Argument(help="Token ids (default: read from stdin).")] = None,
) -> None:
    """Print the text of token ids."""
    tok = _load(model)
    words = ids if ids else sys.stdin.read().split()
    try:
        values = [int(w) for w in words]
        sys.stdout.buffer.write(tok.decode_bytes(values))
        sys.stdout.buffer.flush()
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="Model file.")],
    text: Annotated[
        str | None, typer.Option("--text", "-t", help="Measure compression on this text.")
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Measure compression on this file.")
    ] = None,
    top: Annotated[int, typer.Option(help="How many pieces to list.")] = 10,
) -> None:
    """Vocabulary size, longest and most frequent pieces, and compression on a text."""
    tok = _load(model)
    pieces = tok.pieces
    counts = tok.counts
    summary = Table(title=str(model), show_header=False)
    summary.add_row("vocab size", str(tok.vocab_size))
    summary.add_row("multi-byte pieces", str(sum(len(p) > 1 for p in pieces)))
    summary.add_row("max piece length (bytes)", str(max(len(p) for p in pieces)))
    summary.add_row("normalize", str(tok.normalize))
    summary.add_row("core", tok.core)
    if text is not None or file is not None:
        data = _read_text(text, file)
        raw = data if isinstance(data, bytes) else data.encode("utf-8")
        t0 = time.perf_counter()
        ids = tok.encode(data)
        dt = time.perf_counter() - t0
        summary.add_row("text bytes", str(len(raw)))
        summary.add_row("tokens", str(len(ids)))
        summary.add_row("bytes / token", f"{len(raw) / max(1, len(ids)):.3f}")
        summary.add_row("encode MB/s", f"{len(raw) / max(dt, 1e-9) / 1e6:.2f}")
    console.print(summary)

    def show(title: str, order: list[int]) -> None:
        t = Table(title=title)
        t.add_column("id", justify="right")
        t.add_column("piece")
        t.add_column("bytes", justify="right")
        t.add_column("count", justify="right")
        for i in order[:top]:
            t.add_row(
                str(i + 3),
                repr(pieces[i].decode("utf-8", errors="backslashreplace")),
                str(len(pieces[i])),
                str(int(counts[i])),
            )
        console.print(t)

    idx = list(range(len(pieces)))
    show("longest pieces", sorted(idx, key=lambda i: (-len(pieces[i]), -counts[i])))
    show(
        "most frequent multi-byte pieces",
        sorted((i for i in idx if len(pieces[i]) > 1), key=lambda i: -counts[i]),
    )
