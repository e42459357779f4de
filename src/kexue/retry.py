"""Retrying a block of code in place: an object that is both an iterator and a context manager.

Post: "旁门左道之如何让Python的重试代码更加优雅" (Elegant retries in Python), 2024-01-14,
https://kexue.fm/archives/9938.

The post's final form keeps the retried code inline, so it sees and sets the caller's local variables::

    for attempt in Retry(max_tries=5, wait=2.0):
        with attempt:
            data = fetch(url)          # may raise
    if attempt.ok:                     # alias: attempt.allright
        use(data)

``__iter__`` yields the object ``max_tries`` times; ``__exit__`` records the outcome and swallows a
retryable exception; the *iterator* sleeps between attempts, so there is never a sleep after a success
or after the last attempt. With ``k`` initial failures the block runs ``min(k + 1, max_tries)`` times and
sleeps ``min(k, max_tries - 1)`` times.

On top of the post, with the vocabulary of tenacity / backoff:

* stop after ``max_tries`` attempts and/or ``max_time`` seconds (``None`` disables either);
* waits: a number (fixed), :func:`fixed`, :func:`exponential` ``min(max, multiplier * base**(n-1))``
  clipped below by ``min``, :func:`full_jitter` ``uniform(0, w)``, :func:`additive_jitter`
  ``w + uniform(0, jitter)``; jitter draws from an injectable, seedable RNG;
* ``retry_on``: the exception types that trigger a retry (others propagate at once, never swallowed;
  ``KeyboardInterrupt``/``SystemExit``/``GeneratorExit`` always propagate); ``retry_if_result``: a
  predicate on a value passed to :meth:`Retry.set_result` (blocks) or returned (decorator);
* hooks ``on_error(retry, exc)`` after each failed attempt and ``before_sleep(retry, seconds)``;
* after the last failure: swallow (the post; ``ok`` is False and ``exception`` holds the error),
  ``reraise=True`` (the identical exception object propagates), or ``wrap=True`` (:class:`RetryError`
  with the last exception as ``__cause__``);
* statistics live on the per-block object (``attempt``, ``errors``, ``elapsed``, ``slept``,
  ``statistics``), so concurrent or nested blocks never share state;
* :class:`AsyncRetry` (``async for``) sleeps with ``asyncio.sleep``; :func:`retry` is a decorator built
  on the same object for plain and ``async def`` functions.

``sleep`` and ``clock`` are injectable, so tests run with a fake clock and never really sleep.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

__all__ = [
    "AsyncRetry",
    "Retry",
    "RetryError",
    "additive_jitter",
    "exponential",
    "fixed",
    "full_jitter",
    "print_error",
    "retry",
]

WaitStrategy = Callable[[int, random.Random], float]
"""``strategy(n, rng) -> seconds``: the wait after the ``n``-th failed attempt (``n`` >= 1)."""

_NEVER_SWALLOW = (KeyboardInterrupt, SystemExit, GeneratorExit)
_DEFAULT_RETRY_ON: tuple[type[BaseException], ...] = (Exception,)
_PENDING, _SUCCESS, _FAILURE = 0, 1, 2


class RetryError(Exception):
    """Raised with ``wrap=True`` after the final failed attempt; ``__cause__`` is the last exception."""

    def __init__(self, message: str, last_exception: BaseException | None = None, result: Any = None):
        super().__init__(message)
        self.last_exception = last_exception
        self.result = result


# --- wait strategies ------------------------------------------------------------------------


def _check_seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 seconds, got {value}")
    return float(value)


class fixed:  # noqa: N801 - lower-case like the tenacity/backoff strategies users know
    """Wait the same number of seconds after every failure."""

    __slots__ = ("seconds",)

    def __init__(self, seconds: float):
        self.seconds = _check_seconds("wait", seconds)

    def __call__(self, n: int, rng: random.Random) -> float:
        return self.seconds

    def __repr__(self) -> str:
        return f"fixed({self.seconds:g})"


class exponential:  # noqa: N801
    """``min(max, max(min, multiplier * base**(n-1)))`` after the ``n``-th failure, without overflow."""

    __slots__ = ("multiplier", "base", "min", "max", "_n_cap")

    def __init__(self, multiplier: float = 1.0, base: float = 2.0, min: float = 0.0, max: float = 60.0):  # noqa: A002
        self.multiplier = _check_seconds("multiplier", multiplier)
        if isinstance(base, bool) or not isinstance(base, int | float) or not base >= 1:
            raise ValueError(f"base must be a number >= 1, got {base!r}")
        self.base = float(base)
        self.min = _check_seconds("min", min)
        self.max = _check_seconds("max", max) if max != math.inf else math.inf
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        # Beyond this exponent the value is >= max: clip before exponentiating (no OverflowError).
        if self.base > 1 and self.multiplier > 0 and self.max != math.inf:
            self._n_cap = math.log(self.max / self.multiplier) / math.log(self.base) + 1  # e beyond: >= max
        else:
            self._n_cap = math.inf

    def __call__(self, n: int, rng: random.Random) -> float:
        e = n - 1
        if e >= self._n_cap:
            return self.max
        try:
            value = self.multiplier * self.base**e
        except OverflowError:
            value = math.inf
        return self.max if value >= self.max else (self.min if value <= self.min else value)

    def __repr__(self) -> str:
        return f"exponential(multiplier={self.multiplier:g}, base={self.base:g}, min={self.min:g}, max={self.max:g})"


class full_jitter:  # noqa: N801
    """``uniform(0, w)`` where ``w`` is the wrapped strategy's wait (AWS "full jitter")."""

    __slots__ = ("inner",)

    def __init__(self, inner: WaitStrategy | float | None = None):
        self.inner = exponential() if inner is None else _as_strategy(inner)

    def __call__(self, n: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.inner(n, rng))

    def __repr__(self) -> str:
        return f"full_jitter({self.inner!r})"


class additive_jitter:  # noqa: N801
    """``w + uniform(0, jitter)`` where ``w`` is the wrapped strategy's wait."""

    __slots__ = ("inner", "jitter")

    def __init__(self, inner: WaitStrategy | float, jitter: float = 1.0):
        self.inner = _as_strategy(inner)
        self.jitter = _check_seconds("jitter", jitter)

    def __call__(self, n: int, rng: random.Random) -> float:
        return self.inner(n, rng) + rng.uniform(0.0, self.jitter)

    def __repr__(self) -> str:
        return f"additive_jitter({self.inner!r}, jitter={self.jitter:g})"


def _raise_not_callable(**hooks: Any) -> None:
    for name, fn in hooks.items():
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if fn is None and name in ("sleep", "clock"):
            raise TypeError(f"{name} must be callable, got None")


def _as_strategy(wait: Any) -> WaitStrategy:
    if isinstance(wait, bool):
        raise TypeError("wait must be a number of seconds or a strategy callable, got bool")
    if isinstance(wait, int | float):
        return fixed(wait)
    if callable(wait):
        return wait
    raise TypeError(f"wait must be a number of seconds or a callable (n, rng) -> seconds, got {wait!r}")


def print_error(retry: Retry, exc: BaseException) -> None:
    """An ``on_error`` hook that prints the failure, as the post does."""
    print(f"attempt {retry.attempt} failed: {type(exc).__name__}: {exc}")


# --- the retry object -----------------------------------------------------------------------


class Retry:
    """Retry the body of ``with attempt:`` inside ``for attempt in Retry(...)``.

    Parameters
    ----------
    max_tries: attempts at most (int >= 1), or ``None`` for no limit (then set ``max_time``).
    wait: seconds between attempts, or a strategy ``(n, rng) -> seconds`` (see :func:`exponential`).
    max_time: give up once this many seconds have passed since the first attempt started; a wait that
        would cross the deadline is shortened to end at it.
    retry_on: exception type(s) that trigger a retry; anything else propagates at once.
    retry_if_result: predicate; a value given to :meth:`set_result` for which it is true fails the attempt.
    reraise: after the final failure re-raise the last exception (the same object).
    wrap: after the final failure raise :class:`RetryError` from the last exception.
    on_error: ``hook(retry, exc_or_None)`` after every failed attempt (``None`` for a rejected result).
    before_sleep: ``hook(retry, seconds)`` before every sleep.
    sleep, clock: injectable ``time.sleep`` / ``time.monotonic``.
    rng: ``random.Random`` or int seed for jittered waits.
    """

    __slots__ = (
        "max_tries", "max_time", "_wait", "retry_on", "retry_if_result", "reraise", "wrap",
        "on_error", "before_sleep", "_sleep", "_clock", "_rng",
        "attempt", "ok", "exception", "errors", "result", "slept", "elapsed", "waits",
        "_outcome", "_start", "_final",
    )  # fmt: skip

    def __init__(
        self,
        max_tries: int | None = 5,
        wait: float | WaitStrategy = 2.0,
        *,
        max_time: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        retry_if_result: Callable[[Any], bool] | None = None,
        reraise: bool = False,
        wrap: bool = False,
        on_error: Callable[[Retry, BaseException | None], Any] | None = None,
        before_sleep: Callable[[Retry, float], Any] | None = None,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | int | None = None,
    ):
        if max_tries is not None:
            if isinstance(max_tries, bool) or not isinstance(max_tries, int):
                raise TypeError(f"max_tries must be an int or None, got {type(max_tries).__name__}")
            if max_tries < 1:
                raise ValueError(f"max_tries must be >= 1, got {max_tries}")
        if max_time is not None:
            max_time = _check_seconds("max_time", max_time)
        if max_tries is None and max_time is None:
            raise ValueError("set max_tries or max_time (both None would retry forever)")
        if retry_on is Exception:
            retry_on = _DEFAULT_RETRY_ON
        elif isinstance(retry_on, type):
            retry_on = (retry_on,)
        if (
            retry_on is not _DEFAULT_RETRY_ON
            and not isinstance(retry_on, tuple)
            or not retry_on
            or not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on)
        ):
            raise TypeError(f"retry_on must be an exception type or a tuple of them, got {retry_on!r}")
        if not (
            (retry_if_result is None or callable(retry_if_result))
            and (on_error is None or callable(on_error))
            and (before_sleep is None or callable(before_sleep))
            and callable(sleep)
            and callable(clock)
        ):
            _raise_not_callable(retry_if_result=retry_if_result, on_error=on_error,
                                before_sleep=before_sleep, sleep=sleep, clock=clock)  # fmt: skip
        if reraise and wrap:
            raise ValueError("choose one of reraise=True and wrap=True")
        if (
            rng is not None
            and not isinstance(rng, random.Random)
            and (isinstance(rng, bool) or not isinstance(rng, int))
        ):
            raise TypeError(f"rng must be a random.Random, an int seed or None, got {type(rng).__name__}")
        self.max_tries = max_tries
        self.max_time = max_time
        # A plain number is kept as a float (building a strategy object costs more than a retry).
        if type(wait) is float or type(wait) is int:
            self._wait: WaitStrategy | float = _check_seconds("wait", wait)
        else:
            self._wait = _as_strategy(wait)
        self.retry_on = retry_on
        self.retry_if_result = retry_if_result
        self.reraise = bool(reraise)
        self.wrap = bool(wrap)
        self.on_error = on_error
        self.before_sleep = before_sleep
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self._reset()

    def _reset(self) -> None:
        self.attempt = 0
        self.ok = False
        self.exception: BaseException | None = None
        self.errors: list[BaseException] = []
        self.result: Any = None
        self.slept = 0.0
        self.elapsed = 0.0
        self.waits: list[float] = []
        self._outcome = _PENDING
        self._start = 0.0
        self._final = False

    # The post's name for the success flag.
    @property
    def allright(self) -> bool:
        return self.ok

    @property
    def wait(self) -> WaitStrategy:
        """The wait strategy ``(n, rng) -> seconds``."""
        return fixed(self._wait) if isinstance(self._wait, float) else self._wait

    @property
    def statistics(self) -> dict[str, Any]:
        """A snapshot: attempts made, success, errors seen, seconds slept and elapsed."""
        return {
            "attempt_number": self.attempt,
            "ok": self.ok,
            "errors": len(self.errors),
            "idle_for": self.slept,
            "elapsed": self.elapsed,
        }

    def set_result(self, value: Any) -> None:
        """Record the block's result; if ``retry_if_result(value)`` is true the attempt fails."""
        self.result = value
        if self.retry_if_result is not None and self.retry_if_result(value):
            self._outcome = _FAILURE

    # -- iteration ------------------------------------------------------------------------------

    def _is_last(self) -> bool:
        if self.max_tries is not None and self.attempt >= self.max_tries:
            return True
        return self.max_time is not None and self._clock() - self._start >= self.max_time

    def _next_wait(self) -> float:
        if isinstance(self._wait, float):
            delay = self._wait
        else:
            rng = self._rng
            if not isinstance(rng, random.Random):  # created on first use: seeding costs more than a retry
                rng = self._rng = random.Random(rng)
            delay = float(self._wait(self.attempt, rng))
        if not delay >= 0:
            raise ValueError(f"wait strategy returned {delay!r} seconds after attempt {self.attempt}")
        if self.max_time is not None:
            delay = min(delay, max(0.0, self.max_time - (self._clock() - self._start)))
        return delay

    def _finish_failure(self) -> None:
        """After the final failed attempt (block form): raise if asked, else leave ``ok`` False."""
        if self._final:  # the exception already propagated from ``__exit__`` (and was caught by the caller)
            return
        if self.reraise and self.exception is not None:
            raise self.exception
        if self.wrap or self.reraise:  # wrap, or reraise with nothing to re-raise (a rejected result)
            raise RetryError(
                f"gave up after {self.attempt} attempt(s)", self.exception, self.result
            ) from self.exception

    def _advance(self) -> float | None:
        """After an attempt: ``None`` when the loop ends, else the seconds to sleep before the next one."""
        outcome = self._outcome
        if outcome == _SUCCESS:
            return None
        if outcome == _PENDING:
            raise RuntimeError("each attempt must run its block inside `with attempt:`")
        if self._final or self._is_last():
            self.elapsed = self._clock() - self._start
            self._finish_failure()
            return None
        delay = self._next_wait()
        if self.before_sleep is not None:
            self.before_sleep(self, delay)
        return delay

    def _begin_attempt(self) -> None:
        self.attempt += 1
        self._outcome = _PENDING

    def __iter__(self) -> Iterator[Retry]:
        self._reset()
        self._start = self._clock()
        while True:
            self._begin_attempt()
            yield self
            delay = self._advance()
            if delay is None:
                return
            self._sleep(delay)
            self.slept += delay
            self.waits.append(delay)

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> Retry:
        self.ok = False
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> bool:
        if exc_type is None:
            if self._outcome == _FAILURE:  # rejected by retry_if_result
                self.exception = None
                if self.on_error is not None:
                    self.on_error(self, None)
            else:  # set here, not in the iterator: a `break` in the block never resumes it
                self._outcome = _SUCCESS
                self.ok = True
                self.elapsed = self._clock() - self._start
            return False
        if issubclass(exc_type, _NEVER_SWALLOW) or not issubclass(exc_type, self.retry_on):
            return False  # propagate at once, no sleep, no retry
        self._outcome = _FAILURE
        self.exception = exc
        self.errors.append(exc)
        if self.on_error is not None:
            self.on_error(self, exc)
        if self.reraise and self._is_last():
            # Let the identical exception object propagate with its own traceback.
            self._final = True
            self.elapsed = self._clock() - self._start
            return False
        return True

    def __repr__(self) -> str:
        return (
            f"Retry(max_tries={self.max_tries}, wait={self.wait!r}, max_time={self.max_time}, "
            f"attempt={self.attempt}, ok={self.ok})"
        )


class AsyncRetry(Retry):
    """``async for attempt in AsyncRetry(...): with attempt: await ...`` — sleeps with ``asyncio.sleep``.

    ``sleep`` may be a coroutine function (default ``asyncio.sleep``) or a plain function.
    """

    __slots__ = ()

    def __init__(self, max_tries: int | None = 5, wait: float | WaitStrategy = 2.0, **kwargs: Any):
        kwargs.setdefault("sleep", asyncio.sleep)
        super().__init__(max_tries, wait, **kwargs)

    def __iter__(self) -> Iterator[Retry]:
        raise TypeError("AsyncRetry is iterated with `async for`; use Retry for a plain `for` loop")

    async def __aiter__(self) -> AsyncIterator[AsyncRetry]:
        self._reset()
        self._start = self._clock()
        while True:
            self._begin_attempt()
            yield self
            delay = self._advance()
            if delay is None:
                return
            slept = self._sleep(delay)
            if inspect.isawaitable(slept):
                await slept
            self.slept += delay
            self.waits.append(delay)


# --- decorator ------------------------------------------------------------------------------


def retry(
    max_tries: int | None = 5,
    wait: float | WaitStrategy = 2.0,
    *,
    return_outcome: bool = False,
    reraise: bool = True,
    **kwargs: Any,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator form built on :class:`Retry` (and :class:`AsyncRetry` for ``async def``).

    On success the wrapped function returns its value. After the final failure it re-raises the last
    exception (``reraise=True``, default) or raises :class:`RetryError` (``reraise=False``). With
    ``return_outcome=True`` it never raises for retryable failures and returns ``(ok, value)`` /
    ``(False, None)`` instead — the post's decorator version. ``retry_if_result`` applies to the
    return value. Every call builds its own :class:`Retry`, so calls never share state; the last call's
    object in the calling thread/task is available as ``wrapper.last_retry``.
    """
    if return_outcome:
        kwargs["reraise"], kwargs["wrap"] = False, False
    else:
        kwargs["reraise"], kwargs["wrap"] = (True, False) if reraise else (False, True)
    Retry(max_tries, wait, **kwargs)  # validate the arguments now, at decoration time

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(fn):
            raise TypeError(f"retry() decorates a callable, got {type(fn).__name__}")
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kw: Any) -> Any:
                r = AsyncRetry(max_tries, wait, **kwargs)
                awrapper.last_retry = r  # type: ignore[attr-defined]
                value = None
                async for attempt in r:
                    with attempt:
                        value = await fn(*args, **kw)
                        attempt.set_result(value)
                if return_outcome:
                    return (True, value) if r.ok else (False, None)
                return value

            return awrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            r = Retry(max_tries, wait, **kwargs)
            wrapper.last_retry = r  # type: ignore[attr-defined]
            value = None
            for attempt in r:
                with attempt:
                    value = fn(*args, **kw)
                    attempt.set_result(value)
            if return_outcome:
                return (True, value) if r.ok else (False, None)
            return value

        return wrapper

    return decorate
