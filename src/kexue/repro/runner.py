"""Run reproduction modules and collect their outcomes (a raising claim becomes an error outcome)."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kexue.repro import all_slugs, implemented_slugs, is_implemented, load
from kexue.repro.base import Claim, ProgressHook, Result, check_mode, progress_hook
from kexue.repro.catalog import BY_SLUG

__all__ = ["Outcome", "resolve_slugs", "run_claims", "run_one"]


@dataclass
class Outcome:
    """One claim's run: its result, or the error it raised, and how long it took."""

    slug: str
    claim: Claim | None
    result: Result | None
    error: str | None
    runtime: float
    mode: str
    seed: int

    @property
    def verdict(self) -> str:
        if self.error is not None or self.result is None:
            return "error"
        return self.result.verdict

    @property
    def passed(self) -> bool:
        return self.verdict == "reproduced"


def resolve_slugs(slugs: Sequence[str]) -> list[str]:
    """Validate requested slugs (all implemented ones when empty); unknown or missing ones raise ValueError."""
    if not slugs:
        return implemented_slugs()
    unknown = [s for s in slugs if s not in BY_SLUG]
    if unknown:
        raise ValueError(f"unknown slug(s): {', '.join(unknown)}. Valid slugs: {', '.join(all_slugs())}")
    missing = [s for s in slugs if not is_implemented(s)]
    if missing:
        raise ValueError(
            f"not implemented yet: {', '.join(missing)}. Implemented: {', '.join(implemented_slugs())}"
        )
    seen: dict[str, None] = dict.fromkeys(slugs)
    return list(seen)


def run_one(slug: str, mode: str, seed: int, out: Path, hook: ProgressHook | None = None) -> Outcome:
    """Run one claim into ``out / slug``; exceptions are caught and reported in the outcome."""
    check_mode(mode)
    claim_dir = Path(out) / slug
    start = time.perf_counter()
    claim: Claim | None = None
    try:
        module = load(slug)
        claim = module.CLAIM
        claim_dir.mkdir(parents=True, exist_ok=True)
        with progress_hook(hook):
            result = module.run(mode, seed, claim_dir)
        if not isinstance(result, Result):
            raise TypeError(f"{slug}: run() returned {type(result).__name__}, expected kexue.repro.Result")
        return Outcome(slug, claim, result, None, time.perf_counter() - start, mode, seed)
    except Exception:  # a failing claim must not stop the others
        return Outcome(slug, claim, None, traceback.format_exc(), time.perf_counter() - start, mode, seed)


def run_claims(
    slugs: Sequence[str],
    mode: str = "quick",
    seed: int = 0,
    out: Path = Path("report"),
    on_start: Callable[[str], None] | None = None,
    on_done: Callable[[Outcome], None] | None = None,
    hook: ProgressHook | None = None,
) -> list[Outcome]:
    """Run each slug in turn (see :func:`run_one`), calling ``on_start`` / ``on_done`` around each."""
    check_mode(mode)
    outcomes = []
    for slug in resolve_slugs(slugs):
        if on_start is not None:
            on_start(slug)
        outcome = run_one(slug, mode, seed, out, hook)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)
    return outcomes
