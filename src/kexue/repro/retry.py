"""Reproduction of "Elegant retries in Python" (kexue.fm/archives/9938, 2024-01-14).

Claims (spec ``retry``):
1. ``for r in Retry(n): with r:`` runs the block at most ``n`` times, stops at the first success and
   sleeps ``min(k, n-1)`` times when the first ``k`` attempts fail (never after the last attempt).
2. It behaves exactly like the post's plain loop (version 1) and decorator (version 2).
3. Two ``Retry`` objects never share state (consecutive and nested blocks).
4. It is cheap: measured per-call overhead against a bare loop and, when installed, tenacity and backoff.

The post's versions 1 and 2 are kept here as :func:`loop_version` and :func:`decorator_version`
(their documented equivalents), with an injected ``sleep`` instead of ``time.sleep``.
"""

from __future__ import annotations

import logging
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kexue.repro.base import Claim, Result, Table, check_mode, save_figure, track
from kexue.retry import Retry, retry

CLAIM = Claim(
    slug="retry",
    title="Elegant retries in Python: an iterator that is also a context manager",
    title_zh="旁门左道之如何让Python的重试代码更加优雅",
    url="https://kexue.fm/archives/9938",
    date="2024-01-14",
    claim=(
        "An object that is both an iterator and a context manager retries an inline block with the "
        "loop's exact semantics (at most n runs, no sleep after success or the last attempt), "
        "independent state per block, and far less overhead than decorator libraries."
    ),
)

FAILURE_COUNTS = (0, 1, 2, 4, 5, 7)
MAX_TRIES = 5
WAIT = 2.0


class Flaky:
    """Raises ``ValueError`` on its first ``k`` calls, then returns the call number."""

    def __init__(self, k: int):
        self.k = k
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.k:
            raise ValueError(f"failure {self.calls}")
        return self.calls


def loop_version(fn: Callable[[], Any], max_tries: int, sleep: Callable[[float], Any]) -> tuple[bool, Any]:
    """The post's version 1: a plain for/try/except loop with a success flag."""
    ok, value = False, None
    for i in range(max_tries):
        try:
            value = fn()
            ok = True
            break
        except Exception:
            if i < max_tries - 1:
                sleep(WAIT)
    return ok, value


def decorator_version(max_tries: int, sleep: Callable[[float], Any]) -> Callable[[Callable], Callable]:
    """The post's version 2: a decorator returning ``(True, result)`` or ``(False, None)``."""

    def decorate(fn: Callable[[], Any]) -> Callable[[], tuple[bool, Any]]:
        def wrapper() -> tuple[bool, Any]:
            for i in range(max_tries):
                try:
                    return True, fn()
                except Exception:
                    if i < max_tries - 1:
                        sleep(WAIT)
            return False, None

        return wrapper

    return decorate


def final_version(fn: Callable[[], Any], max_tries: int, sleep: Callable[[float], Any]) -> tuple[bool, Any]:
    """The post's final form, with kexue's ``Retry``."""
    value = None
    for attempt in Retry(max_tries, WAIT, sleep=sleep):
        with attempt:
            value = fn()
    return attempt.ok, (value if attempt.ok else None)


def _trace(version: str, k: int, max_tries: int) -> dict[str, Any]:
    sleeps: list[float] = []
    fn = Flaky(k)
    if version == "loop":
        ok, value = loop_version(fn, max_tries, sleeps.append)
    elif version == "decorator":
        ok, value = decorator_version(max_tries, sleeps.append)(fn)()
    else:
        ok, value = final_version(fn, max_tries, sleeps.append)
    return {"calls": fn.calls, "sleeps": sleeps, "ok": ok, "value": value}


def _independence() -> tuple[bool, dict[str, float]]:
    """Consecutive and nested blocks keep separate counts, errors and flags."""
    outer_fn, inner_fn = Flaky(2), Flaky(10)
    inner_attempts = []
    for outer in Retry(5, 0, sleep=lambda s: None):
        with outer:
            for inner in Retry(3, 0, sleep=lambda s: None):
                with inner:
                    inner_fn()
            inner_attempts.append((inner.attempt, inner.ok, len(inner.errors)))
            outer_fn()
    after = Retry(4, 0, sleep=lambda s: None)
    for a in after:
        with a:
            pass
    ok = (
        outer.ok and outer.attempt == 3 and len(outer.errors) == 2
        and all(t == (3, False, 3) for t in inner_attempts) and len(inner_attempts) == 3
        and after.ok and after.attempt == 1 and not after.errors
    )  # fmt: skip
    return ok, {
        "outer_attempts": outer.attempt,
        "inner_runs": len(inner_attempts),
        "next_attempts": after.attempt,
    }


def _flaky(failures: int) -> Callable[[], Callable[[], int]]:
    """A factory of callables that raise ValueError on their first ``failures`` calls."""

    def make() -> Callable[[], int]:
        n = [0]

        def call() -> int:
            n[0] += 1
            if n[0] <= failures:
                raise ValueError("transient")
            return n[0]

        return call

    return make


def _nosleep(_: float) -> None:
    return None


def cases(failures: int) -> dict[str, Callable[[], object]]:
    make = _flaky(failures)
    out: dict[str, Callable[[], object]] = {}

    def bare_loop() -> object:
        call = make()
        for i in range(5):
            try:
                value = call()
                break
            except ValueError:
                if i < 4:
                    _nosleep(0)
        return value

    out["bare loop"] = bare_loop

    def ours_block() -> object:
        call = make()
        for attempt in Retry(5, 0, sleep=_nosleep):
            with attempt:
                value = call()
        return value

    out["kexue Retry block"] = ours_block

    def ours_decorator() -> object:
        return retry(5, 0, sleep=_nosleep)(make())()

    out["kexue @retry"] = ours_decorator

    try:
        import tenacity
    except ImportError:
        tenacity = None
    if tenacity is not None:

        def ten_decorator() -> object:
            fn = tenacity.retry(
                stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_none(), sleep=_nosleep, reraise=True
            )(make())
            return fn()

        def ten_block() -> object:
            call = make()
            for attempt in tenacity.Retrying(
                stop=tenacity.stop_after_attempt(5), wait=tenacity.wait_none(), sleep=_nosleep, reraise=True
            ):
                with attempt:
                    value = call()
            return value

        out["tenacity.retry"] = ten_decorator
        out["tenacity.Retrying block"] = ten_block
    try:
        import backoff
    except ImportError:
        backoff = None
    if backoff is not None:
        logging.getLogger("backoff").disabled = True

        def back_decorator() -> object:
            fn = backoff.on_exception(backoff.constant, ValueError, max_tries=5, interval=0, jitter=None)(
                make()
            )
            return fn()

        out["backoff.on_exception"] = back_decorator
    return out


def measure(fn: Callable[[], object], calls: int | None, repeats: int) -> float:
    """Best time per call in microseconds over ``repeats`` runs of ``calls`` calls.

    ``calls=None`` picks the number of calls so that one run lasts at least 20 ms (short runs of a
    sub-microsecond loop are dominated by timer and scheduler noise on a loaded machine).
    """
    fn()  # warm up
    timer = timeit.Timer(fn)
    if calls is None:
        calls = 1
        while timer.timeit(calls) < 0.02:
            calls *= 4
    return min(timer.repeat(number=calls, repeat=repeats)) / calls * 1e6


def overhead(calls: int | None, repeats: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    for label, failures in (("success first try", 0), ("2 failures then success", 2)):
        results[label] = {name: measure(fn, calls, repeats) for name, fn in cases(failures).items()}
    return results


def run(mode: str, seed: int, out: Path) -> Result:
    check_mode(mode)
    result = Result()
    tries_range = range(1, 7)

    # Claim 1 and 2: exact semantics, identical across versions.
    rows = []
    semantics_ok = equal_ok = True
    cases = [(k, n) for n in tries_range for k in (*FAILURE_COUNTS, 3, 6)]
    for k, n in track(cases, "semantics"):
        traces = {v: _trace(v, k, n) for v in ("loop", "decorator", "final")}
        t = traces["final"]
        expect_calls, expect_sleeps = min(k + 1, n), min(k, n - 1)
        semantics_ok &= (
            t["calls"] == expect_calls and t["sleeps"] == [WAIT] * expect_sleeps and t["ok"] == (k < n)
        )
        equal_ok &= traces["loop"] == traces["decorator"] == traces["final"]
        if n == MAX_TRIES and k in FAILURE_COUNTS:
            rows.append([k, t["calls"], len(t["sleeps"]), t["ok"], expect_calls, expect_sleeps])
    result.check(
        "calls == min(k+1, n), sleeps == min(k, n-1), ok == (k < n)",
        semantics_ok,
        "all k in 0..7, n in 1..6",
        cases=len(cases),
    )
    result.check("versions 1, 2 and 5 agree (calls, sleeps, outcome)", equal_ok, cases=len(cases))
    result.table = Table(
        ["failures k", "calls", "sleeps", "ok", "expected calls", "expected sleeps"],
        rows,
        caption=f"Final version with max_tries={MAX_TRIES}, fixed wait {WAIT:g} s (fake sleep)",
    )

    # reraise returns the identical exception object.
    fn = Flaky(99)
    raised: BaseException | None = None
    try:
        for attempt in Retry(MAX_TRIES, 0, reraise=True, sleep=lambda s: None):
            with attempt:
                fn()
    except ValueError as exc:
        raised = exc
    result.check(
        "reraise=True propagates the identical last exception after attempt 5",
        raised is not None and raised is attempt.exception and fn.calls == MAX_TRIES,
        calls=fn.calls,
    )

    # Claim 3.
    indep_ok, indep_vals = _independence()
    result.check("nested and consecutive Retry objects are independent", indep_ok, **indep_vals)

    # Claim 4: overhead.
    calls, repeats = (None, 5) if mode == "quick" else (20_000, 3)
    timings = overhead(calls, repeats)
    for label, row in timings.items():
        ours = row["kexue Retry block"]
        key = "success" if label.startswith("success") else "2fail"
        for name, us in row.items():
            result.metrics[f"{key} {name} (us/call)"] = round(us, 3)
        result.check_le(f"{label}: within 10x of a bare loop", ours / row["bare loop"], 10.0)
        for peer in ("tenacity.Retrying block", "tenacity.retry"):
            if peer in row:
                result.check_ge(f"{label}: at least 5x faster than {peer}", row[peer] / ours, 5.0)
    if not any("tenacity.retry" in row for row in timings.values()):
        result.notes = (
            "tenacity/backoff not installed: peer speed checks skipped (pip install -e '.[bench]')."
        )

    # Figure: overhead per implementation, both cases.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for ax, (label, row) in zip(axes, timings.items()):
        names = list(row)
        vals = [row[n] for n in names]
        colours = ["#1a7f37" if n.startswith("kexue") else "#8c959f" for n in names]
        ax.barh(names, vals, color=colours)
        ax.set_xscale("log")
        ax.set_xlabel("microseconds per call (log scale)")
        ax.set_title(label)
        ax.invert_yaxis()
    runs = f"{calls:,} calls" if calls else ">= 20 ms runs"
    fig.suptitle(f"Per-call overhead, zero wait ({runs}, best of {repeats})")
    save_figure(fig, out, "retry_overhead.png", result)
    return result
