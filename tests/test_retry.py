"""kexue.retry: every stop / wait / exception rule, with injected faults and a fake clock."""

from __future__ import annotations

import asyncio
import random

import pytest

from kexue.retry import (
    AsyncRetry,
    Retry,
    RetryError,
    additive_jitter,
    exponential,
    fixed,
    full_jitter,
    retry,
)


class Flaky:
    def __init__(self, k: int, exc: type[BaseException] = ValueError):
        self.k, self.exc, self.calls = k, exc, 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.k:
            raise self.exc(f"failure {self.calls}")
        return self.calls


class FakeClock:
    """Time advances only when the code sleeps (or when a test moves it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def run_block(fn, **kw):
    clock = FakeClock()
    kw.setdefault("sleep", clock.sleep)
    kw.setdefault("clock", clock.clock)
    r = Retry(**kw)
    value = None
    for attempt in r:
        with attempt:
            value = fn()
    return r, clock, value


@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("k", [0, 1, 2, 3, 4, 5, 6, 7])
def test_counts_sleeps_and_outcome(k, n):
    fn = Flaky(k)
    r, clock, value = run_block(fn, max_tries=n, wait=2.0)
    assert fn.calls == min(k + 1, n)
    assert clock.sleeps == [2.0] * min(k, n - 1)  # never after success, never after the last attempt
    assert r.ok is r.allright is (k < n)
    assert r.attempt == min(k + 1, n)
    assert len(r.errors) == min(k, n)
    assert r.slept == sum(clock.sleeps) == r.statistics["idle_for"]
    assert r.waits == clock.sleeps
    if k < n:
        assert value == k + 1
    else:
        assert isinstance(r.exception, ValueError) and r.exception is r.errors[-1]


def test_local_variables_stay_visible():
    fn = Flaky(1)
    for attempt in Retry(3, 0, sleep=lambda s: None):
        with attempt:
            answer = fn() * 10
    assert attempt.ok and answer == 20


def test_reraise_identical_object_after_last_attempt():
    fn = Flaky(10)
    clock = FakeClock()
    with pytest.raises(ValueError) as info:
        for attempt in Retry(4, 1.0, reraise=True, sleep=clock.sleep, clock=clock.clock):
            with attempt:
                fn()
    assert info.value is attempt.exception and fn.calls == 4 and clock.sleeps == [1.0] * 3


def test_wrap_raises_retry_error_with_cause():
    fn = Flaky(10)
    with pytest.raises(RetryError) as info:
        for attempt in Retry(3, 0, wrap=True, sleep=lambda s: None):
            with attempt:
                fn()
    assert isinstance(info.value.__cause__, ValueError)
    assert info.value.last_exception is info.value.__cause__ and fn.calls == 3


def test_reraise_and_wrap_are_exclusive():
    with pytest.raises(ValueError, match="reraise"):
        Retry(3, reraise=True, wrap=True)


def test_non_retryable_exception_propagates_at_once_without_sleep():
    fn = Flaky(3, exc=KeyError)
    clock = FakeClock()
    with pytest.raises(KeyError):
        for attempt in Retry(5, 1.0, retry_on=ValueError, sleep=clock.sleep, clock=clock.clock):
            with attempt:
                fn()
    assert fn.calls == 1 and clock.sleeps == []


@pytest.mark.parametrize("exc", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_is_never_swallowed(exc):
    fn = Flaky(3, exc=exc)
    with pytest.raises(exc):
        for attempt in Retry(5, 0, retry_on=BaseException, sleep=lambda s: None):
            with attempt:
                fn()
    assert fn.calls == 1


def test_retry_on_tuple_of_types():
    fn = Flaky(2, exc=OSError)
    r, _, _ = run_block(fn, max_tries=5, wait=0, retry_on=(ValueError, OSError))
    assert r.ok and fn.calls == 3


def test_stop_after_max_time_with_fake_clock():
    fn = Flaky(100)
    r, clock, _ = run_block(fn, max_tries=None, wait=1.0, max_time=3.5)
    # attempts at t=0,1,2,3 ; the wait after t=3 is shortened to the deadline (0.5 s), then t=3.5 stops.
    assert clock.sleeps == [1.0, 1.0, 1.0, 0.5]
    assert fn.calls == 5 and not r.ok and r.elapsed == pytest.approx(3.5)


def test_max_tries_and_max_time_both_apply():
    fn = Flaky(100)
    r, clock, _ = run_block(fn, max_tries=3, wait=10.0, max_time=100.0)
    assert fn.calls == 3 and clock.sleeps == [10.0, 10.0]


def test_block_that_takes_time_counts_towards_max_time():
    clock = FakeClock()
    calls = 0
    for attempt in Retry(None, 0.0, max_time=5.0, sleep=clock.sleep, clock=clock.clock):
        with attempt:
            calls += 1
            clock.now += 2.0  # the block itself takes 2 s
            raise ValueError
    assert calls == 3 and not attempt.ok  # failures end at t=2, 4, 6 >= 5


def test_exponential_sequence_and_clipping():
    rng = random.Random(0)
    w = exponential(multiplier=0.5, base=3.0, min=1.0, max=20.0)
    assert [w(n, rng) for n in range(1, 7)] == [
        min(20.0, max(1.0, 0.5 * 3.0 ** (n - 1))) for n in range(1, 7)
    ]
    assert w(10_000, rng) == 20.0  # no OverflowError for huge attempt numbers


def test_exponential_waits_are_used_between_attempts():
    fn = Flaky(4)
    r, clock, _ = run_block(fn, max_tries=6, wait=exponential(multiplier=1.0, base=2.0, max=5.0))
    assert clock.sleeps == [1.0, 2.0, 4.0, 5.0] and r.ok


def test_full_jitter_bounds_and_seeded_reproducibility():
    inner = exponential(multiplier=1.0, base=2.0, max=100.0)
    j = full_jitter(inner)
    samples = [j(n, random.Random(n)) for n in range(1, 8)]
    assert all(0.0 <= s <= inner(n, None) for s, n in zip(samples, range(1, 8)))

    def waits(seed):
        fn = Flaky(5)
        _, clock, _ = run_block(fn, max_tries=6, wait=full_jitter(inner), rng=seed)
        return clock.sleeps

    assert waits(7) == waits(7) and waits(7) != waits(8)


def test_additive_jitter_bounds():
    j = additive_jitter(2.0, jitter=0.5)
    rng = random.Random(1)
    assert all(2.0 <= j(n, rng) <= 2.5 for n in range(1, 50))


def test_hooks_called_with_errors_and_sleeps():
    seen_err, seen_sleep = [], []
    fn = Flaky(2)
    r, _, _ = run_block(
        fn,
        max_tries=5,
        wait=0.25,
        on_error=lambda r, e: seen_err.append((r.attempt, str(e))),
        before_sleep=lambda r, s: seen_sleep.append((r.attempt, s)),
    )
    assert seen_err == [(1, "failure 1"), (2, "failure 2")]
    assert seen_sleep == [(1, 0.25), (2, 0.25)]


def test_retry_if_result_in_block_and_decorator():
    values = iter([None, None, 3])
    for attempt in Retry(5, 0, retry_if_result=lambda v: v is None, sleep=lambda s: None):
        with attempt:
            attempt.set_result(next(values))
    assert attempt.ok and attempt.result == 3 and attempt.attempt == 3

    @retry(3, 0, retry_if_result=lambda v: v < 0, sleep=lambda s: None)
    def always_negative():
        return -1

    with pytest.raises(RetryError):
        always_negative()


def test_reusing_an_object_resets_state():
    r = Retry(3, 0, sleep=lambda s: None)
    fn = Flaky(10)
    for a in r:
        with a:
            fn()
    assert not r.ok and r.attempt == 3
    for a in r:
        with a:
            pass
    assert r.ok and r.attempt == 1 and r.errors == [] and r.exception is None


def test_forgetting_the_with_block_is_an_error():
    with pytest.raises(RuntimeError, match="with attempt"):
        for _ in Retry(3, 0):
            pass


def test_break_inside_block_counts_as_success():
    for attempt in Retry(3, 0):
        with attempt:
            break
    assert attempt.ok


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_tries": 0}, ValueError, "max_tries"),
        ({"max_tries": 2.5}, TypeError, "max_tries"),
        ({"max_tries": True}, TypeError, "max_tries"),
        ({"wait": -1}, ValueError, "wait"),
        ({"wait": "x"}, TypeError, "wait"),
        ({"max_time": -1}, ValueError, "max_time"),
        ({"max_tries": None}, ValueError, "forever"),
        ({"retry_on": 3}, TypeError, "retry_on"),
        ({"on_error": 3}, TypeError, "on_error"),
        ({"sleep": None}, TypeError, "sleep"),
        ({"rng": "seed"}, TypeError, "rng"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Retry(**kwargs)


def test_bad_strategy_arguments():
    with pytest.raises(ValueError, match="min"):
        exponential(min=5, max=1)
    with pytest.raises(ValueError, match="base"):
        exponential(base=0.5)
    with pytest.raises(ValueError, match="wait"):
        fixed(-2)
    with pytest.raises(ValueError, match="returned"):
        for a in Retry(3, lambda n, rng: -1.0, sleep=lambda s: None):
            with a:
                raise ValueError


def test_decorator_returns_value_and_reraises_by_default():
    fn = Flaky(2)
    wrapped = retry(5, 0, sleep=lambda s: None)(fn)
    assert wrapped() == 3 and wrapped.last_retry.attempt == 3
    bad = retry(2, 0, sleep=lambda s: None)(Flaky(9))
    with pytest.raises(ValueError):
        bad()
    wrapped_err = retry(2, 0, reraise=False, sleep=lambda s: None)(Flaky(9))
    with pytest.raises(RetryError):
        wrapped_err()


def test_decorator_return_outcome_is_the_posts_version_2():
    assert retry(5, 0, return_outcome=True, sleep=lambda s: None)(Flaky(2))() == (True, 3)
    assert retry(5, 0, return_outcome=True, sleep=lambda s: None)(Flaky(9))() == (False, None)


def test_decorator_calls_do_not_share_state():
    fn = Flaky(1)
    wrapped = retry(3, 0, sleep=lambda s: None)(fn)
    wrapped()
    first = wrapped.last_retry
    wrapped()
    assert first is not wrapped.last_retry and first.attempt == 2 and wrapped.last_retry.attempt == 1


def test_async_retry_same_counts_with_async_sleep():
    slept: list[float] = []

    async def fake_sleep(s: float) -> None:
        slept.append(s)

    async def main() -> tuple[AsyncRetry, int]:
        fn = Flaky(2)
        value = 0
        r = AsyncRetry(5, 1.5, sleep=fake_sleep)
        async for attempt in r:
            with attempt:
                value = fn()
        return r, value

    r, value = asyncio.run(main())
    assert r.ok and value == 3 and slept == [1.5, 1.5]


def test_async_decorator():
    calls = {"n": 0}

    @retry(4, 0, sleep=lambda s: None)
    async def flaky():
        calls["n"] += 1
        if calls["n"] < 3:
            raise ValueError
        return "done"

    assert asyncio.run(flaky()) == "done" and calls["n"] == 3


def test_async_retry_refuses_plain_for():
    with pytest.raises(TypeError, match="async for"):
        for _ in AsyncRetry(3):
            pass


def test_sync_retry_never_touches_asyncio(monkeypatch):
    import kexue.retry as mod

    monkeypatch.setattr(mod.asyncio, "sleep", lambda *a: pytest.fail("asyncio used"))
    r, _, _ = run_block(Flaky(2), max_tries=5, wait=0.1)
    assert r.ok
