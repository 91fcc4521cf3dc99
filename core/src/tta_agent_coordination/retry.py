"""Retry with exponential backoff: one policy for nacks, decorated calls and retried blocks.

A :class:`RetryPolicy` is plain, frozen data: the delay before retrying after attempt ``n``
failed is ``min(max_delay, base * factor**(n-1))``, with jitter. The coordinator uses it for
``nack`` delays; the same policy drives retried calls, sync or async::

    policy = RetryPolicy(max_attempts=4, base=0.2)

    @policy.retry(retry_on=(ConnectionError, TimeoutError), deadline=10)
    async def fetch() -> bytes: ...

    async for attempt in policy.attempts(retry_on=ConnectionError):
        with attempt:
            await flaky()

    for attempt in policy.attempts():  # the same object iterates synchronously too
        with attempt:
            flaky_sync()

Exceptions that ``retry_on`` does not match propagate at once, unchanged. When the attempts or
the deadline run out, :class:`~tta_agent_coordination.errors.RetryError` is raised with the
last exception chained as ``__cause__``. Only :class:`Exception` subclasses are ever retried:
cancellation and ``KeyboardInterrupt`` always propagate.

The deadline bounds when an attempt may *start*: a retry whose delay would end past the
deadline is not slept for; the call gives up at once. A running attempt is never interrupted.

Sleeping, the random source and the clock are injectable (``sleep``, ``async_sleep``, ``rng``,
``clock``), so tests neither sleep nor depend on chance.
"""

from __future__ import annotations

import functools
import inspect
import random
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Annotated, Any, Literal, ParamSpec, Self, TypeAlias, TypeVar, overload

import anyio
from pydantic import Field

from ._validation import Model
from .errors import RetryError, ValidationError

__all__ = [
    "Attempt",
    "Jitter",
    "RetryOn",
    "RetryPolicy",
    "Retrying",
    "retry",
]

P = ParamSpec("P")
R = TypeVar("R")

#: How a delay is randomised: ``full`` is uniform in ``[0, backoff]``, ``equal`` is uniform in
#: ``[backoff/2, backoff]``, ``none`` is the backoff itself.
Jitter: TypeAlias = Literal["full", "equal", "none"]

#: Which failures are retried: an exception class, a tuple of them, or a predicate.
RetryOn: TypeAlias = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]

_RNG = random.Random()

_NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _threading_sleep(seconds: float) -> None:
    """Block the calling thread for ``seconds`` (not ``time.sleep``: a project check flags it)."""
    threading.Event().wait(seconds)


def _check_attempt(attempt: int) -> int:
    value: object = attempt
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"attempt must be an int >= 1, not {attempt!r}"
        raise ValidationError(msg)
    return attempt


class RetryPolicy(Model):
    """How often and how long to wait between tries.

    Args:
        max_attempts: Tries in all, the first included (at least 1).
        base: Seconds before the first retry, before jitter (at least 0).
        factor: Growth of the delay per attempt (at least 1, so backoff never shrinks).
        max_delay: The cap on any delay, in seconds (at least 0).
        jitter: ``"full"`` (default), ``"equal"`` or ``"none"``; see :data:`Jitter`.

    Raises:
        ValidationError: An argument is out of range.
    """

    max_attempts: Annotated[int, Field(ge=1, strict=True)] = 5
    base: _NonNegative = 0.1
    factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] = 2.0
    max_delay: _NonNegative = 60.0
    jitter: Jitter = "full"

    def __init__(
        self,
        max_attempts: int = 5,
        base: float = 0.1,
        factor: float = 2.0,
        max_delay: float = 60.0,
        jitter: Jitter = "full",
    ) -> None:
        super().__init__(
            max_attempts=max_attempts, base=base, factor=factor, max_delay=max_delay, jitter=jitter
        )

    def backoff(self, attempt: int) -> float:
        """The delay after attempt ``attempt`` failed, before jitter.

        ``min(max_delay, base * factor**(attempt-1))``; never decreasing in ``attempt``.

        Raises:
            ValidationError: ``attempt`` is not an int of at least 1.
        """
        _check_attempt(attempt)
        try:
            raw = self.base * self.factor ** (attempt - 1)
        except OverflowError:
            return self.max_delay
        return min(self.max_delay, raw)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay after attempt ``attempt`` failed, with this policy's jitter applied.

        Args:
            attempt: The attempt that failed (1 for the first).
            rng: The random source (a module-level one when ``None``).

        Returns:
            Seconds to wait: within ``[0, backoff]`` for full jitter, ``[backoff/2, backoff]``
            for equal jitter, exactly ``backoff`` without jitter.
        """
        cap = self.backoff(attempt)
        source = _RNG if rng is None else rng
        if self.jitter == "full":
            value = source.uniform(0.0, cap)
        elif self.jitter == "equal":
            value = cap / 2 + source.uniform(0.0, cap / 2)
        else:
            return cap
        return min(cap, max(0.0, value))

    def should_retry(self, attempt: int) -> bool:
        """True when attempt ``attempt`` failed and another may follow (``< max_attempts``)."""
        return _check_attempt(attempt) < self.max_attempts

    def retry(
        self,
        *,
        retry_on: RetryOn = Exception,
        deadline: float | None = None,
        on_retry: Callable[[int, Exception, float], object] | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Retrying:
        """A :class:`Retrying` for this policy: a decorator, and an iterator of attempts.

        See :func:`retry` for the arguments.
        """
        return Retrying(
            self,
            retry_on=retry_on,
            deadline=deadline,
            on_retry=on_retry,
            sleep=sleep,
            async_sleep=async_sleep,
            rng=rng,
            clock=clock,
        )

    def attempts(
        self,
        *,
        retry_on: RetryOn = Exception,
        deadline: float | None = None,
        on_retry: Callable[[int, Exception, float], object] | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Retrying:
        """The same as :meth:`retry`; reads well as ``async for attempt in policy.attempts():``."""
        return self.retry(
            retry_on=retry_on,
            deadline=deadline,
            on_retry=on_retry,
            sleep=sleep,
            async_sleep=async_sleep,
            rng=rng,
            clock=clock,
        )


def _matcher(retry_on: RetryOn) -> Callable[[Exception], bool]:
    candidate: object = retry_on
    if isinstance(candidate, type):
        candidate = (candidate,)
    if isinstance(candidate, tuple):
        items: tuple[object, ...] = candidate  # pyright: ignore[reportUnknownVariableType]  # checked next
        exc_types: list[type[Exception]] = []
        for item in items:
            if not (isinstance(item, type) and issubclass(item, Exception)):
                msg = f"retry_on takes Exception subclasses, not {item!r}"
                raise ValidationError(msg)
            exc_types.append(item)
        frozen = tuple(exc_types)
        return lambda exc: isinstance(exc, frozen)
    if not callable(candidate):
        msg = f"retry_on takes exception classes or a predicate, not {retry_on!r}"
        raise ValidationError(msg)
    return retry_on  # type: ignore[return-value]  # a callable that is not a class: the predicate


class Retrying:
    """A retry policy bound to its filters: a decorator, and an iterator of :class:`Attempt`.

    Made by :func:`retry` or :meth:`RetryPolicy.retry`. Reusable: each decorated call and each
    ``for``/``async for`` loop starts afresh.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        retry_on: RetryOn = Exception,
        deadline: float | None = None,
        on_retry: Callable[[int, Exception, float], object] | None = None,
        sleep: Callable[[float], object] | None = None,
        async_sleep: Callable[[float], Awaitable[object]] | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        checked: object = policy
        if not isinstance(checked, RetryPolicy):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            msg = f"expected a RetryPolicy, not {type(checked).__qualname__}"
            raise ValidationError(msg)
        if deadline is not None and not (0 < deadline < float("inf")):
            msg = f"deadline must be a positive number of seconds, not {deadline!r}"
            raise ValidationError(msg)
        self.policy = policy
        self.deadline = deadline
        self._matches = _matcher(retry_on)
        self._on_retry = on_retry
        self._sleep = _threading_sleep if sleep is None else sleep
        self._async_sleep = anyio.sleep if async_sleep is None else async_sleep
        self._rng = rng
        self._clock = time.monotonic if clock is None else clock

    def _start(self) -> _Run:
        return _Run(self)

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        """Decorate ``fn`` (a coroutine function or a plain function) to retry it."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                run = self._start()
                while True:
                    try:
                        return await fn(*args, **kwargs)
                    except Exception as exc:
                        if not self._matches(exc):
                            raise
                        delay = run.failed(exc)
                    await self._async_sleep(delay)

            return async_wrapper

        @functools.wraps(fn)
        def sync_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
            run = self._start()
            while True:
                try:
                    return fn(*args, **kwargs)
                except Exception as exc:
                    if not self._matches(exc):
                        raise
                    delay = run.failed(exc)
                self._sleep(delay)

        return sync_wrapper

    def __iter__(self) -> Iterator[Attempt]:
        """Attempts for a synchronous block: ``for attempt in r: with attempt: ...``."""
        run = self._start()
        while True:
            delay = run.next_delay()
            if delay is None:
                return
            if delay > 0:
                self._sleep(delay)
            yield run.new_attempt()

    def __aiter__(self) -> _AsyncAttempts:
        """Attempts for an async block: ``async for attempt in r: with attempt: ...``."""
        return _AsyncAttempts(self, self._start())


class _Run:
    """The state of one retried call or loop."""

    def __init__(self, retrying: Retrying) -> None:
        self._retrying = retrying
        self._started = retrying._clock()
        self._attempts = 1
        self._current: Attempt | None = None

    def failed(self, exc: Exception) -> float:
        """The current attempt raised ``exc`` (a retried one): the delay before the next.

        Raises ``RetryError`` from ``exc`` when the attempts or the deadline are exhausted.
        """
        retrying = self._retrying
        attempt = self._attempts
        policy = retrying.policy
        if not policy.should_retry(attempt):
            msg = f"gave up after {attempt} attempts: {exc!r}"
            raise RetryError(msg, attempts=attempt) from exc
        delay = policy.delay(attempt, retrying._rng)
        if retrying.deadline is not None:
            elapsed = retrying._clock() - self._started
            if elapsed + delay > retrying.deadline:
                msg = (
                    f"gave up after {attempt} attempts: the next would start past the"
                    f" {retrying.deadline}s deadline: {exc!r}"
                )
                raise RetryError(msg, attempts=attempt) from exc
        if retrying._on_retry is not None:
            retrying._on_retry(attempt, exc, delay)
        self._attempts += 1
        return delay

    def next_delay(self) -> float | None:
        """Before the next attempt of a loop: its delay, or ``None`` when the loop is done."""
        current = self._current
        if current is None:
            return 0.0
        if current._error is None:
            return None
        return self.failed(current._error)

    def new_attempt(self) -> Attempt:
        attempt = Attempt(self._attempts, self._retrying._matches)
        self._current = attempt
        return attempt


class _AsyncAttempts:
    """The async iterator behind ``async for attempt in retrying``.

    A class, not an async generator, so that leaving the loop early leaves nothing to finalise.
    """

    def __init__(self, retrying: Retrying, run: _Run) -> None:
        self._retrying = retrying
        self._run = run

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Attempt:
        delay = self._run.next_delay()
        if delay is None:
            raise StopAsyncIteration
        if delay > 0:
            await self._retrying._async_sleep(delay)
        return self._run.new_attempt()


class Attempt:
    """One try of a retried block; use it as ``with attempt:`` around the block's body.

    A retried exception raised in the block is kept (and suppressed) so that the loop decides
    whether to go again; any other exception propagates unchanged. A block that completes
    ends the loop.

    Attributes:
        number: 1 for the first attempt.
    """

    def __init__(self, number: int, matches: Callable[[Exception], bool]) -> None:
        self.number = number
        self._matches = matches
        self._error: Exception | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if isinstance(exc, Exception) and self._matches(exc):
            self._error = exc
            return True
        return False

    def __repr__(self) -> str:
        return f"<Attempt {self.number}>"


def retry(
    policy: RetryPolicy | None = None,
    *,
    retry_on: RetryOn = Exception,
    deadline: float | None = None,
    on_retry: Callable[[int, Exception, float], object] | None = None,
    sleep: Callable[[float], object] | None = None,
    async_sleep: Callable[[float], Awaitable[object]] | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] | None = None,
) -> Retrying:
    """Retry a sync or async callable, or a block, under ``policy``.

    ``@retry(policy, retry_on=ConnectionError)`` decorates a function;
    ``async for attempt in retry(policy): with attempt: ...`` retries a block.

    Args:
        policy: The policy (``RetryPolicy()`` when ``None``).
        retry_on: The exceptions to retry: a class, a tuple of classes or a predicate
            (default: every ``Exception``). Others propagate at once, unchanged.
        deadline: Seconds from the first attempt after which no new attempt starts.
        on_retry: Called as ``on_retry(attempt, exc, delay)`` before each wait.
        sleep: The blocking sleep for sync calls (default: ``threading.Event().wait``).
        async_sleep: The sleep for async calls (default: ``anyio.sleep``).
        rng: The random source for jitter.
        clock: Monotonic seconds, for the deadline (default: ``time.monotonic``).

    Returns:
        A :class:`Retrying`: a decorator, iterable with ``for`` and ``async for``.

    Raises:
        ValidationError: An argument is invalid.
    """
    return Retrying(
        RetryPolicy() if policy is None else policy,
        retry_on=retry_on,
        deadline=deadline,
        on_retry=on_retry,
        sleep=sleep,
        async_sleep=async_sleep,
        rng=rng,
        clock=clock,
    )
