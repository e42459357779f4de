"""The claim contract shared by every reproduction module.

A reproduction module ``kexue.repro.<slug>`` exposes

* ``CLAIM``: a :class:`Claim` (slug, titles, post URL, date, the claim in one sentence);
* ``run(mode, seed, out) -> Result``: runs the experiment (``mode`` is ``"quick"`` or ``"full"``),
  writes its figures under the directory ``out`` and returns a :class:`Result`.

The verdict is never written by hand: :attr:`Result.verdict` is computed from the checks.
Long loops inside ``run`` should iterate through :func:`track`, which feeds the per-claim
progress bar of ``kexue reproduce`` and is silent everywhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

Mode = Literal["quick", "full"]
MODES: tuple[str, ...] = ("quick", "full")
T = TypeVar("T")

_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}(?:-\d{2})?$")


@dataclass(frozen=True)
class Claim:
    """What a post claims, and where it comes from."""

    slug: str
    title: str
    title_zh: str
    url: str
    date: str
    claim: str

    def __post_init__(self) -> None:
        if not _SLUG_RE.match(self.slug):
            raise ValueError(f"slug must be lower-case words joined by '-', got {self.slug!r}")
        if not _DATE_RE.match(self.date):
            raise ValueError(f"date must be YYYY-MM-DD (or YYYY-MM), got {self.date!r}")
        if not self.claim.strip():
            raise ValueError(f"claim of {self.slug!r} is empty")


@dataclass(frozen=True)
class Check:
    """One verifiable statement: its name, whether it held, and the numbers behind it."""

    name: str
    passed: bool
    values: dict[str, float] = field(default_factory=dict)
    detail: str = ""

    def describe(self) -> str:
        nums = ", ".join(f"{k}={format_number(v)}" for k, v in self.values.items())
        parts = [p for p in (self.detail, nums) if p]
        return "; ".join(parts)


@dataclass
class Table:
    """A small table for the report: column names and rows of cells."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""

    def __post_init__(self) -> None:
        for i, row in enumerate(self.rows):
            if len(row) != len(self.columns):
                raise ValueError(
                    f"table row {i} has {len(row)} cells but there are {len(self.columns)} columns"
                )


Verdict = Literal["reproduced", "not reproduced", "inconclusive", "error"]


@dataclass
class Result:
    """What a reproduction measured."""

    metrics: dict[str, float] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    table: Table | None = None
    tables: list[Table] = field(default_factory=list)
    notes: str = ""

    def check(self, name: str, passed: bool, detail: str = "", **values: float) -> bool:
        """Record a check and return whether it passed."""
        self.checks.append(Check(name=name, passed=bool(passed), values=_floats(values), detail=detail))
        return bool(passed)

    def check_le(self, name: str, value: float, bound: float, detail: str = "") -> bool:
        """Record ``value <= bound`` (NaN fails)."""
        ok = not math.isnan(float(value)) and float(value) <= float(bound)
        return self.check(name, ok, detail, value=value, bound=bound)

    def check_ge(self, name: str, value: float, bound: float, detail: str = "") -> bool:
        """Record ``value >= bound`` (NaN fails)."""
        ok = not math.isnan(float(value)) and float(value) >= float(bound)
        return self.check(name, ok, detail, value=value, bound=bound)

    def add_figure(self, path: str | Path) -> Path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"figure {p} was not written")
        self.figures.append(p)
        return p

    def all_tables(self) -> list[Table]:
        return ([self.table] if self.table is not None else []) + list(self.tables)

    @property
    def verdict(self) -> Verdict:
        if not self.checks:
            return "inconclusive"
        return "reproduced" if all(c.passed for c in self.checks) else "not reproduced"


def _floats(values: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in values.items():
        try:
            out[k] = float(v)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"check value {k!r} must be a number, got {type(v).__name__}") from exc
    return out


def format_number(v: float) -> str:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return str(v)
    if v == int(v) and abs(v) < 1e12:
        return str(int(v))
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{v:.3e}"
    return f"{v:.4g}"


def check_mode(mode: str) -> Mode:
    """Validate a mode string (``"quick"`` or ``"full"``)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


# --- progress -------------------------------------------------------------------------------

ProgressHook = Callable[[str, int, int | None], None]
"""Called as ``hook(description, completed, total)``."""

_progress_hook: contextvars.ContextVar[ProgressHook | None] = contextvars.ContextVar(
    "kexue_progress_hook", default=None
)


@contextlib.contextmanager
def progress_hook(hook: ProgressHook | None) -> Iterator[None]:
    """Install ``hook`` to receive :func:`track` updates inside the ``with`` block."""
    token = _progress_hook.set(hook)
    try:
        yield
    finally:
        _progress_hook.reset(token)


def track(iterable: Iterable[T], description: str = "", total: int | None = None) -> Iterator[T]:
    """Iterate ``iterable``, reporting progress to the installed hook (if any)."""
    hook = _progress_hook.get()
    if hook is None:
        yield from iterable
        return
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    hook(description, 0, total)
    for i, item in enumerate(iterable, 1):
        yield item
        hook(description, i, total)


def figure_path(out: Path, name: str) -> Path:
    """Create ``out`` if needed and return ``out / name`` for a figure."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / name


def save_figure(fig: Any, out: Path, name: str, result: Result | None = None) -> Path:
    """Save a matplotlib figure as PNG under ``out``, close it, and attach it to ``result``."""
    import matplotlib.pyplot as plt

    path = figure_path(out, name if name.endswith(".png") else name + ".png")
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    if result is not None:
        result.add_figure(path)
    return path
