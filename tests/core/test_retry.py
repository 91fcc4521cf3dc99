"""RetryPolicy, the retry decorator and the retried-block iterators; no test sleeps for real."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tta_agent_coordination.errors import RetryError, ValidationError
from tta_agent_coordination.retry import Attempt, Retrying, RetryPolicy, retry


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class FakeTime:
    """A clock and sleeps that only move when something sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)


class BoomError(Exception):
    pass


class OtherError(Exception):
    pass


class Flaky:
    """Raises ``exc`` for the first ``failures`` calls, then returns the call count."""

    def __init__(self, failures: int, exc: type[Exception] = BoomError) -> None:
        self.failures = failures
        self.exc = exc
        self.calls = 0
        self.raised: list[Exception] = []

    def __call__(self) -> int:
        self.calls += 1
        if self.calls <= self.failures:
            error = self.exc(f"failure {self.calls}")
            self.raised.append(error)
            raise error
        return self.calls


def no_jitter(**kwargs: Any) -> RetryPolicy:
    return RetryPolicy(jitter="none", **kwargs)


# ---------------------------------------------------------------------------------------------
# The policy
# ---------------------------------------------------------------------------------------------


def test_defaults_match_the_contract() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base, policy.factor, policy.max_delay, policy.jitter) == (
        5,
        0.1,
        2.0,
        60.0,
        "full",
    )


def test_policy_is_frozen_data() -> None:
    assert RetryPolicy(3, 0.5) == RetryPolicy(max_attempts=3, base=0.5)
    assert hash(RetryPolicy()) == hash(RetryPolicy())
    assert RetryPolicy().model_dump()["jitter"] == "full"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"max_attempts": 2.5},
        {"base": -0.1},
        {"base": math.inf},
        {"factor": 0.5},
        {"factor": math.nan},
        {"max_delay": -1},
        {"jitter": "half"},
    ],
)
def test_invalid_policies_raise_the_package_validation_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy(**kwargs)
    assert isinstance(info.value, ValueError)


def test_backoff_is_exponential_and_capped() -> None:
    policy = RetryPolicy(base=0.5, factor=3.0, max_delay=10.0)
    assert [policy.backoff(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_backoff_of_a_huge_attempt_is_the_cap() -> None:
    assert RetryPolicy(max_delay=7.0).backoff(100_000) == 7.0


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5, "2"])
def test_attempt_numbers_start_at_one(attempt: Any) -> None:
    policy = RetryPolicy()
    with pytest.raises(ValidationError):
        policy.backoff(attempt)
    with pytest.raises(ValidationError):
        policy.should_retry(attempt)


def test_delay_without_jitter_is_the_backoff() -> None:
    policy = no_jitter(base=1.0)
    assert [policy.delay(n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]


def test_full_jitter_uses_the_given_random_source() -> None:
    policy = RetryPolicy(base=1.0)
    expected = random.Random(7).uniform(0.0, 4.0)
    assert policy.delay(3, random.Random(7)) == expected


def test_equal_jitter_is_in_the_upper_half() -> None:
    policy = RetryPolicy(base=1.0, jitter="equal")
    rng = random.Random(3)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 1


def test_delay_with_the_default_random_source_is_in_bounds() -> None:
    policy = RetryPolicy(base=1.0)
    assert 0.0 <= policy.delay(2) <= 2.0


def test_should_retry_until_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(n) for n in (1, 2, 3, 4)] == [True, True, False, False]


policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 20),
    base=st.floats(0, 100, allow_nan=False),
    factor=st.floats(1, 10, allow_nan=False),
    max_delay=st.floats(0, 1000, allow_nan=False),
    jitter=st.sampled_from(["full", "equal", "none"]),
)


@given(policy=policies, attempt=st.integers(1, 2000), seed=st.integers(0, 2**32))
def test_property_delay_within_bounds(policy: RetryPolicy, attempt: int, seed: int) -> None:
    cap = policy.backoff(attempt)
    delay = policy.delay(attempt, random.Random(seed))
    assert 0.0 <= cap <= policy.max_delay
    assert 0.0 <= delay <= cap
    if policy.jitter == "equal":
        assert delay >= cap / 2
    if policy.jitter == "none":
        assert delay == cap


@given(policy=policies, attempt=st.integers(1, 2000))
def test_property_backoff_is_monotone(policy: RetryPolicy, attempt: int) -> None:
    assert policy.backoff(attempt) <= policy.backoff(attempt + 1)


@given(policy=policies, attempt=st.integers(1, 60))
def test_property_backoff_formula(policy: RetryPolicy, attempt: int) -> None:
    expected = min(policy.max_delay, policy.base * policy.factor ** (attempt - 1))
    assert policy.backoff(attempt) == expected


@given(
    max_attempts=st.integers(1, 8),
    failures=st.integers(0, 10),
    seed=st.integers(0, 2**32),
)
def test_property_attempt_counts_are_exact(max_attempts: int, failures: int, seed: int) -> None:
    fake = FakeTime()
    policy = RetryPolicy(max_attempts=max_attempts)
    flaky = Flaky(failures)
    wrapped = policy.retry(sleep=fake.sleep, rng=random.Random(seed))(flaky)
    if failures < max_attempts:
        assert wrapped() == failures + 1
        assert flaky.calls == failures + 1
    else:
        with pytest.raises(RetryError) as info:
            wrapped()
        assert info.value.attempts == max_attempts
        assert flaky.calls == max_attempts
        assert info.value.__cause__ is flaky.raised[-1]
    assert len(fake.slept) == flaky.calls - 1
    rng = random.Random(seed)
    assert fake.slept == [policy.delay(n, rng) for n in range(1, flaky.calls)]


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "retry_on",
    [KeyboardInterrupt, (BoomError, BaseException), (BoomError, "OtherError"), 42],
)
def test_invalid_retry_on(retry_on: Any) -> None:
    with pytest.raises(ValidationError):
        retry(retry_on=retry_on)


@pytest.mark.parametrize("deadline", [0, -1.0, math.inf, math.nan])
def test_invalid_deadline(deadline: float) -> None:
    with pytest.raises(ValidationError):
        retry(deadline=deadline)


def test_policy_must_be_a_retry_policy() -> None:
    with pytest.raises(ValidationError):
        retry(3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]  # on purpose


def test_retry_without_a_policy_uses_the_defaults() -> None:
    retrying = retry()
    assert isinstance(retrying, Retrying)
    assert retrying.policy == RetryPolicy()
    assert retrying.deadline is None


# ---------------------------------------------------------------------------------------------
# Decorating sync callables
# ---------------------------------------------------------------------------------------------


def test_sync_decorator_retries_then_returns() -> None:
    fake = FakeTime()
    flaky = Flaky(2)

    @retry(no_jitter(base=1.0), sleep=fake.sleep)
    def call(x: int, *, y: int) -> tuple[int, int, int]:
        return (flaky(), x, y)

    assert call(1, y=2) == (3, 1, 2)
    assert fake.slept == [1.0, 2.0]
    assert call.__name__ == "call"


def test_sync_exhaustion_raises_retry_error_with_the_cause() -> None:
    fake = FakeTime()
    flaky = Flaky(10)
    wrapped = no_jitter(max_attempts=3).retry(sleep=fake.sleep)(flaky)
    with pytest.raises(RetryError, match="gave up after 3 attempts") as info:
        wrapped()
    assert info.value.attempts == 3
    assert info.value.__cause__ is flaky.raised[-1]
    assert flaky.calls == 3


def test_unmatched_exceptions_propagate_at_once_unchanged() -> None:
    fake = FakeTime()
    flaky = Flaky(5, exc=OtherError)
    wrapped = retry(retry_on=BoomError, sleep=fake.sleep)(flaky)
    with pytest.raises(OtherError) as info:
        wrapped()
    assert info.value is flaky.raised[0]
    assert flaky.calls == 1
    assert fake.slept == []


def test_retry_on_a_tuple() -> None:
    fake = FakeTime()
    flaky = Flaky(2, exc=OtherError)
    assert retry(retry_on=(BoomError, OtherError), sleep=fake.sleep)(flaky)() == 3


def test_retry_on_a_predicate() -> None:
    fake = FakeTime()
    flaky = Flaky(3)
    seen: list[Exception] = []

    def transient(exc: Exception) -> bool:
        seen.append(exc)
        return str(exc) != "failure 2"

    with pytest.raises(BoomError, match="failure 2"):
        retry(retry_on=transient, sleep=fake.sleep)(flaky)()
    assert flaky.calls == 2
    assert seen == flaky.raised


def test_base_exceptions_are_never_retried() -> None:
    class Stop(BaseException):
        pass

    calls = 0

    @retry(sleep=FakeTime().sleep)
    def stop() -> None:
        nonlocal calls
        calls += 1
        raise Stop

    with pytest.raises(Stop):
        stop()
    assert calls == 1


def test_on_retry_is_called_before_each_wait() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    calls: list[tuple[int, Exception, float]] = []
    wrapped = retry(
        no_jitter(base=0.5),
        on_retry=lambda n, exc, delay: calls.append((n, exc, delay)),
        sleep=fake.sleep,
    )(flaky)
    assert wrapped() == 3
    assert calls == [(1, flaky.raised[0], 0.5), (2, flaky.raised[1], 1.0)]


def test_deadline_stops_before_a_wait_that_would_pass_it() -> None:
    fake = FakeTime()
    flaky = Flaky(10)
    # delays 1, 2, 4, 8: after attempts 1-3 the clock is at +3s; waiting 4 more would pass 6s.
    wrapped = retry(
        no_jitter(base=1.0, max_attempts=10), deadline=6.0, sleep=fake.sleep, clock=fake.clock
    )(flaky)
    with pytest.raises(RetryError, match="deadline") as info:
        wrapped()
    assert info.value.attempts == 3
    assert info.value.__cause__ is flaky.raised[-1]
    assert fake.slept == [1.0, 2.0]


def test_an_attempt_may_start_exactly_at_the_deadline() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    # Waits of 1 and 2 seconds: the third attempt starts at +3s, exactly the deadline.
    wrapped = retry(no_jitter(base=1.0), deadline=3.0, sleep=fake.sleep, clock=fake.clock)(flaky)
    assert wrapped() == 3
    assert fake.now == 1003.0


def test_deadline_counts_time_spent_in_the_call() -> None:
    fake = FakeTime()

    def slow() -> None:
        fake.now += 5.0
        raise BoomError

    wrapped = retry(no_jitter(base=1.0), deadline=10.0, sleep=fake.sleep, clock=fake.clock)(slow)
    with pytest.raises(RetryError) as info:
        wrapped()
    assert info.value.attempts == 2
    assert fake.slept == [1.0]


def test_a_deadline_that_is_not_reached_changes_nothing() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    wrapped = retry(no_jitter(base=1.0), deadline=60.0, sleep=fake.sleep, clock=fake.clock)(flaky)
    assert wrapped() == 3


def test_default_sync_sleep_waits_without_time_sleep() -> None:
    flaky = Flaky(1)
    assert retry(no_jitter(base=0.0))(flaky)() == 2


def test_each_decorated_call_starts_afresh() -> None:
    fake = FakeTime()
    flaky = Flaky(1)
    wrapped = no_jitter(max_attempts=2).retry(sleep=fake.sleep)(flaky)
    assert wrapped() == 2
    flaky.failures, flaky.calls = 1, 0
    assert wrapped() == 2


# ---------------------------------------------------------------------------------------------
# Decorating async callables
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_decorator_retries_then_returns() -> None:
    fake = FakeTime()
    flaky = Flaky(2)

    @retry(no_jitter(base=1.0), async_sleep=fake.async_sleep, sleep=fake.sleep)
    async def call(x: int) -> tuple[int, int]:
        return (flaky(), x)

    assert await call(7) == (3, 7)
    assert fake.slept == [1.0, 2.0]
    assert call.__name__ == "call"


@pytest.mark.anyio
async def test_async_exhaustion_and_unmatched() -> None:
    fake = FakeTime()
    flaky = Flaky(10)

    @no_jitter(max_attempts=2).retry(retry_on=BoomError, async_sleep=fake.async_sleep)
    async def call() -> int:
        return flaky()

    with pytest.raises(RetryError) as info:
        await call()
    assert info.value.attempts == 2
    assert info.value.__cause__ is flaky.raised[-1]

    other = Flaky(1, exc=OtherError)

    @retry(retry_on=BoomError, async_sleep=fake.async_sleep)
    async def call_other() -> int:
        return other()

    with pytest.raises(OtherError) as info2:
        await call_other()
    assert info2.value is other.raised[0]


@pytest.mark.anyio
async def test_default_async_sleep_is_anyio() -> None:
    flaky = Flaky(1)

    @retry(no_jitter(base=0.0))
    async def call() -> int:
        return flaky()

    assert await call() == 2


# ---------------------------------------------------------------------------------------------
# Retried blocks
# ---------------------------------------------------------------------------------------------


def test_sync_block_retries_until_it_completes() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    numbers: list[int] = []
    for attempt in no_jitter(base=1.0).attempts(sleep=fake.sleep):
        with attempt:
            numbers.append(attempt.number)
            flaky()
    assert numbers == [1, 2, 3]
    assert fake.slept == [1.0, 2.0]


def test_sync_block_exhaustion() -> None:
    fake = FakeTime()
    flaky = Flaky(10)

    def run() -> None:
        for attempt in no_jitter(max_attempts=2).attempts(sleep=fake.sleep):
            with attempt:
                flaky()

    with pytest.raises(RetryError) as info:
        run()
    assert info.value.attempts == 2
    assert info.value.__cause__ is flaky.raised[-1]


def test_sync_block_unmatched_propagates() -> None:
    flaky = Flaky(1, exc=OtherError)

    def run() -> None:
        for attempt in retry(retry_on=BoomError, sleep=FakeTime().sleep):
            with attempt:
                flaky()

    with pytest.raises(OtherError):
        run()
    assert flaky.calls == 1


def test_a_block_without_with_runs_once() -> None:
    attempts = list(retry())
    assert len(attempts) == 1
    assert repr(attempts[0]) == "<Attempt 1>"


def test_zero_delays_are_not_slept() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    for attempt in no_jitter(base=0.0).attempts(sleep=fake.sleep):
        with attempt:
            flaky()
    assert fake.slept == []


def test_attempt_suppresses_only_matched_exceptions() -> None:
    attempt = Attempt(1, lambda exc: isinstance(exc, BoomError))
    assert attempt.__exit__(BoomError, BoomError(), None) is True
    assert attempt.__exit__(OtherError, OtherError(), None) is False
    assert attempt.__exit__(KeyboardInterrupt, KeyboardInterrupt(), None) is False
    assert attempt.__exit__(None, None, None) is False


@pytest.mark.anyio
async def test_async_block_retries_until_it_completes() -> None:
    fake = FakeTime()
    flaky = Flaky(2)
    numbers: list[int] = []
    retrying = no_jitter(base=1.0).attempts(async_sleep=fake.async_sleep)
    async for attempt in retrying:
        with attempt:
            numbers.append(attempt.number)
            flaky()
    assert numbers == [1, 2, 3]
    assert fake.slept == [1.0, 2.0]
    # The same Retrying starts afresh.
    flaky.failures, flaky.calls = 1, 0
    async for attempt in retrying:
        with attempt:
            flaky()
    assert flaky.calls == 2


@pytest.mark.anyio
async def test_async_block_exhaustion_and_zero_delay() -> None:
    fake = FakeTime()
    flaky = Flaky(10)

    async def run() -> None:
        retrying = no_jitter(max_attempts=3, base=0.0).attempts(async_sleep=fake.async_sleep)
        async for attempt in retrying:
            with attempt:
                flaky()

    with pytest.raises(RetryError) as info:
        await run()
    assert info.value.attempts == 3
    assert info.value.__cause__ is flaky.raised[-1]
    assert fake.slept == []


@pytest.mark.anyio
async def test_async_block_can_be_left_early() -> None:
    iterator = aiter(retry())
    assert aiter(iterator) is iterator
    attempt = await anext(iterator)
    assert attempt.number == 1
    with pytest.raises(StopAsyncIteration):
        await anext(iterator)
