"""The ``kexue`` command: list the posts, reproduce their claims, and (when built) the BytePiece tools."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kexue import __version__

app = typer.Typer(
    help="kexue: techniques from Scientific Spaces (kexue.fm) as tested PyTorch code, with each post's "
    "claim re-run as an experiment.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

_STYLE = {"reproduced": "green", "not reproduced": "red", "inconclusive": "yellow", "error": "magenta"}


def _version(value: bool) -> None:
    if value:
        console.print(f"kexue {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """kexue command line."""


@app.command("list")
def list_posts() -> None:
    """List every post in scope: slug, date, title, and whether its reproduction is implemented."""
    from kexue.repro import is_implemented
    from kexue.repro.catalog import POSTS

    table = Table(title="kexue posts")
    for col in ("slug", "date", "title", "implemented"):
        table.add_column(col)
    for p in POSTS:
        done = is_implemented(p.slug)
        table.add_row(p.slug, p.date, p.title, "[green]yes[/]" if done else "[dim]no[/]")
    console.print(table)


@app.command()
def reproduce(
    slugs: Annotated[
        list[str] | None, typer.Argument(help="Slugs to run (default: all implemented).")
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Run the spec's full protocol (slow).")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Report folder.")] = Path("report"),
    strict: Annotated[bool, typer.Option(help="Exit non-zero when any claim is not reproduced.")] = False,
) -> None:
    """Re-run the posts' claims and write OUT/index.html and OUT/report.md."""
    from kexue.repro.report import write_report
    from kexue.repro.runner import resolve_slugs, run_one

    try:
        todo = resolve_slugs(slugs or [])
    except ValueError as exc:
        err_console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    if not todo:
        err_console.print("[red]error:[/] no reproduction is implemented yet")
        raise typer.Exit(2)
    mode = "full" if full else "quick"
    os.environ.setdefault("MPLBACKEND", "Agg")

    outcomes = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        overall = progress.add_task(f"reproducing ({mode})", total=len(todo))
        for slug in todo:
            task = progress.add_task(f"  {slug}", total=None)

            def hook(description: str, completed: int, total: int | None, _task=task, _slug=slug) -> None:
                label = f"  {_slug}: {description}" if description else f"  {_slug}"
                progress.update(_task, description=label, completed=completed, total=total)

            outcome = run_one(slug, mode, seed, out, hook)
            outcomes.append(outcome)
            style = _STYLE.get(outcome.verdict, "white")
            progress.update(
                task, description=f"  {slug}: [{style}]{outcome.verdict}[/]", completed=1, total=1
            )
            progress.advance(overall)

    table = Table(title=f"kexue reproduce ({mode}, seed {seed})")
    for col in ("slug", "verdict", "checks", "runtime"):
        table.add_column(col)
    for o in outcomes:
        checks = o.result.checks if o.result else []
        style = _STYLE.get(o.verdict, "white")
        table.add_row(o.slug, f"[{style}]{o.verdict}[/]", f"{sum(c.passed for c in checks)}/{len(checks)}",
                      f"{o.runtime:.1f} s")  # fmt: skip
    console.print(table)
    for o in outcomes:
        if o.error:
            err_console.print(f"[magenta]{o.slug} raised:[/]\n{o.error.strip().splitlines()[-1]}")
    html_path, md_path = write_report(outcomes, out)
    console.print(f"report: {html_path} and {md_path}")
    if strict and not all(o.passed for o in outcomes):
        raise typer.Exit(1)


def _mount_optional() -> None:
    import importlib
    import importlib.util

    if (
        importlib.util.find_spec("kexue.tokenizers") is None
        or importlib.util.find_spec("kexue.tokenizers.cli") is None
    ):
        return
    bytepiece_app = importlib.import_module("kexue.tokenizers.cli").app
    app.add_typer(bytepiece_app, name="bytepiece", help="Train and use BytePiece tokenizers.")


_mount_optional()

if __name__ == "__main__":  # pragma: no cover
    app()
