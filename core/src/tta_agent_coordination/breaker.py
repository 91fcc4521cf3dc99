"""The circuit breaker: a service over any :class:`~tta_agent_coordination.protocols.BreakerStore`.

The breaker's state lives in the store, so every process (and every backend client) that uses
the same breaker name in the same namespace shares it; this object keeps only its settings and
the last snapshot it saw. Three ways to guard a call::

    breaker = CircuitBreaker(backend, "llm")

    async with breaker:                    # or: async with breaker.guard():
        await call_the_service()

    @breaker                               # the function becomes a coroutine function
    async def ask(prompt: str) -> str: ...

    answer = await breaker.call(ask, "hi") # fn may be sync or async

A refused call raises :class:`~tta_agent_coordination.errors.CircuitOpenError` with
``retry_after``. The probe permit a half-open breaker hands out belongs to one guarded call:
``async with breaker:`` keeps it per task (in a context variable), so tasks may share one
breaker object.

Outcomes:

* The block returns: a success is recorded, unless it would change nothing in the store. A
  success on a breaker that ``acquire`` found closed, with no probe permit, and with no
  consecutive failures to forget (or with a sliding ``window``, where a success forgets
  nothing) is not sent to the store at all: the guarded call then costs one store round trip
  instead of two. A failure another process records while such a call runs is therefore not
  cleared by its success; the success takes effect as of the moment the call was let through
  (when it changed nothing), which is a moment inside the call, as every outcome's is.
* It raises an :class:`Exception` that counts as a failure (not one of
  ``excluded_exceptions``, and ``is_failure(exc)`` true when given): a failure is recorded.
* It raises an excluded exception: *neither* is recorded (the service answered, but the answer
  says nothing about its health); a probe permit is handed back when the store can take it
  back (a ``release`` method), else it lapses after ``probe_timeout``. The exception propagates.
* It raises a ``BaseException`` that is not an ``Exception`` (cancellation,
  ``KeyboardInterrupt``): nothing is recorded and the store is not called; a probe permit
  lapses after ``probe_timeout``.

When the store raises a :class:`~tta_agent_coordination.errors.BackendError`, the breaker logs
a warning on the ``tta_agent_coordination.breaker`` logger, counts
``tta_breaker_store_errors`` (labels ``breaker``, ``operation``) and follows
``on_store_error``: ``"open"`` (the default) lets the call run as if closed, ``"closed"``
refuses it with ``CircuitOpenError(name, 0.0)`` (the store error chained), ``"raise"``
propagates the ``BackendError``. A store error while *recording* an outcome is swallowed under
``"open"`` and ``"closed"`` (the call's own result or exception wins) and raised under
``"raise"``. ``snapshot()``, ``state()`` and ``reset()`` always propagate store errors.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine
from contextvars import ContextVar
from types import TracebackType
from typing import (
    Any,
    Final,
    Literal,
    ParamSpec,
    Protocol,
    Self,
    TypeAlias,
    TypeVar,
    cast,
    overload,
)

from ._validation import require_name
from .errors import BackendError, CircuitOpenError, ValidationError
from .metrics import BREAKER_STORE_ERRORS, BREAKER_TRANSITIONS, NOOP_METRICS, MetricsSink
from .models import (
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    BreakerUpdate,
    CircuitBreakerConfig,
)
from .plugins import resolve_backend
from .protocols import Backend, BreakerStore

__all__ = [
    "BreakerGuard",
    "CircuitBreaker",
    "OnStoreError",
]

P = ParamSpec("P")
R = TypeVar("R")

#: What a breaker does when its store fails: fail open, fail closed, or raise.
OnStoreError: TypeAlias = Literal["open", "closed", "raise"]

logger = logging.getLogger("tta_agent_coordination.breaker")

_ON_STORE_ERROR: Final = frozenset({"open", "closed", "raise"})

# The guards entered with ``async with breaker:`` in the current task, innermost last.
_ACTIVE: ContextVar[tuple[BreakerGuard, ...]] = ContextVar("tta_breaker_guards", default=())


class _ReleasesPermits(Protocol):
    """An optional store method: hand a probe permit back without recording an outcome."""

    async def release(self, name: str, config: CircuitBreakerConfig, permit: str) -> object:
        """Give the permit back."""
        ...


class BreakerGuard:
    """One guarded call: acquires on enter, records the outcome and its permit on exit.

    Made by :meth:`CircuitBreaker.guard`; enter it once.

    Attributes:
        permit: The probe permit held while half-open (``None`` otherwise).
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.permit: str | None = None
        self._entered = False
        self._quiet = False  # a success would change nothing in the store: not recorded

    async def __aenter__(self) -> Self:
        if self._entered:
            msg = "a BreakerGuard guards one call; make another with breaker.guard()"
            raise RuntimeError(msg)
        self._entered = True
        self.permit, self._quiet = await self.breaker._acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.breaker._settle(self.permit, exc, quiet=self._quiet)


def _check_excluded(excluded: object) -> tuple[type[BaseException], ...]:
    items: tuple[object, ...]
    if isinstance(excluded, type):
        items = (excluded,)
    elif isinstance(excluded, tuple):
        items = excluded  # pyright: ignore[reportUnknownVariableType]  # checked next
    else:
        msg = f"excluded_exceptions takes exception classes, not {excluded!r}"
        raise ValidationError(msg)
    result: list[type[BaseException]] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            msg = f"excluded_exceptions takes exception classes, not {item!r}"
            raise ValidationError(msg)
        result.append(item)
    return tuple(result)


class CircuitBreaker:
    """A circuit breaker whose state every process using ``name`` shares.

    Args:
        store: A backend (its breaker store and its own namespace are used), a breaker store,
            a backend URL (connected with ``namespace=key_prefix`` unless the URL names one),
            or a driver library's client object (wrapped by the installed plugins with
            ``namespace=key_prefix``, e.g. a redis-py client).
        name: The breaker's name, shared across processes
            (``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}``).
        config: How it trips and recovers (``CircuitBreakerConfig()`` when ``None``).
        key_prefix: The namespace for a backend made here from a URL or a client.
        excluded_exceptions: Exception classes that count as neither success nor failure.
        is_failure: A predicate; an exception for which it returns false counts as neither.
        on_store_error: ``"open"``, ``"closed"`` or ``"raise"``; see the module docstring.
        on_transition: Called with every transition this breaker's calls cause.
        metrics: Where transitions and store errors are counted.

    Raises:
        ValidationError: An invalid name, URL or option.
        BackendNotFoundError: No installed driver serves the URL, or knows the client.
    """

    def __init__(
        self,
        store: Backend | BreakerStore | str | object,
        name: str,
        config: CircuitBreakerConfig | None = None,
        *,
        key_prefix: str = "ao",
        excluded_exceptions: tuple[type[BaseException], ...] | type[BaseException] = (),
        is_failure: Callable[[BaseException], bool] | None = None,
        on_store_error: OnStoreError = "open",
        on_transition: Callable[[BreakerTransition], object] | None = None,
        metrics: MetricsSink = NOOP_METRICS,
    ) -> None:
        self._name = require_name(name, "breaker name")
        checked_config: object = CircuitBreakerConfig() if config is None else config
        if not isinstance(checked_config, CircuitBreakerConfig):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            msg = f"config must be a CircuitBreakerConfig, not {type(checked_config).__qualname__}"
            raise ValidationError(msg)
        self._config = checked_config
        if on_store_error not in _ON_STORE_ERROR:
            msg = f"on_store_error must be 'open', 'closed' or 'raise', not {on_store_error!r}"
            raise ValidationError(msg)
        self._on_store_error: OnStoreError = on_store_error
        self._excluded = _check_excluded(excluded_exceptions)
        predicate: object = is_failure
        if predicate is not None and not callable(predicate):
            msg = f"is_failure must be a predicate, not {is_failure!r}"
            raise ValidationError(msg)
        self._is_failure = is_failure
        self._on_transition = on_transition
        self._metrics = metrics
        self._last: BreakerSnapshot | None = None
        self._backend: Backend | None
        self._owns_backend = False
        self._store: BreakerStore
        if not isinstance(store, str | Backend) and isinstance(store, BreakerStore):
            self._backend = None
            self._store = store
        else:
            self._backend, self._owns_backend = resolve_backend(store, namespace=key_prefix)
            self._store = self._backend.breakers

    # -- properties -------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._name

    @property
    def config(self) -> CircuitBreakerConfig:
        """How it trips and recovers."""
        return self._config

    @property
    def store(self) -> BreakerStore:
        """The breaker store holding the shared state."""
        return self._store

    @property
    def backend(self) -> Backend | None:
        """The backend the store belongs to (``None`` when a bare store was given)."""
        return self._backend

    @property
    def on_store_error(self) -> OnStoreError:
        """What happens when the store fails: ``"open"``, ``"closed"`` or ``"raise"``."""
        return self._on_store_error

    @property
    def last_snapshot(self) -> BreakerSnapshot | None:
        """The state the last call through this object saw (``None`` before any)."""
        return self._last

    @property
    def retry_after(self) -> float | None:
        """Seconds until a call may pass, from the last snapshot (``None``: it may pass now)."""
        return None if self._last is None else self._last.retry_after

    # -- state ------------------------------------------------------------------------------

    async def snapshot(self) -> BreakerSnapshot:
        """Read the shared state from the store.

        Raises:
            BackendError: The store failed.
        """
        snapshot = await self._store.snapshot(self._name, self._config)
        self._last = snapshot
        return snapshot

    async def state(self) -> BreakerState:
        """The shared state: closed, open or half-open.

        Raises:
            BackendError: The store failed.
        """
        return (await self.snapshot()).state

    async def reset(self) -> BreakerUpdate:
        """Close the breaker from any state and forget its failures (for every process).

        Raises:
            BackendError: The store failed.
        """
        update = await self._store.reset(self._name)
        self._seen(update.snapshot, update.transition)
        return update

    async def aclose(self) -> None:
        """Close the backend this breaker made from a URL or a client (not one it was given)."""
        if self._owns_backend and self._backend is not None:
            await self._backend.aclose()

    # -- guarding calls ---------------------------------------------------------------------

    def guard(self) -> BreakerGuard:
        """A guard for one call: ``async with breaker.guard():``.

        Raises (on enter):
            CircuitOpenError: The breaker refused the call.
        """
        return BreakerGuard(self)

    async def __aenter__(self) -> Self:
        guard = BreakerGuard(self)
        await guard.__aenter__()
        _ACTIVE.set((*_ACTIVE.get(), guard))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        active = _ACTIVE.get()
        for index in range(len(active) - 1, -1, -1):
            if active[index].breaker is self:
                guard = active[index]
                _ACTIVE.set(active[:index] + active[index + 1 :])
                break
        else:
            msg = f"circuit breaker {self._name!r} was exited without being entered in this task"
            raise RuntimeError(msg)
        await guard.__aexit__(exc_type, exc, tb)

    @overload
    async def call(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> R: ...

    @overload
    async def call(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...

    async def call(self, fn: Callable[P, Any], /, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Call ``fn(*args, **kwargs)`` (sync or async) through the breaker.

        Returns:
            What ``fn`` returned (awaited when it returned an awaitable).

        Raises:
            CircuitOpenError: The breaker refused the call; ``fn`` was not called.
        """
        async with self.guard():
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                result = await result
            return result

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
        """Decorate ``fn`` so that every call goes through the breaker (as a coroutine)."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> Any:
            return await self.call(fn, *args, **kwargs)

        return guarded

    # -- internals --------------------------------------------------------------------------

    def _counts_as_failure(self, exc: BaseException) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, self._excluded):
            return False
        return self._is_failure is None or self._is_failure(exc)

    def _store_failed(self, operation: str, exc: BackendError) -> None:
        logger.warning(
            "circuit breaker %r: the breaker store failed in %s (%s: %s); on_store_error=%r",
            self._name,
            operation,
            type(exc).__qualname__,
            exc,
            self._on_store_error,
            extra={"breaker": self._name, "operation": operation},
        )
        self._metrics.increment(
            BREAKER_STORE_ERRORS, labels={"breaker": self._name, "operation": operation}
        )

    def _seen(self, snapshot: BreakerSnapshot, transition: BreakerTransition | None) -> None:
        self._last = snapshot
        if transition is None:
            return
        to_open = transition.to_state == BreakerState.OPEN
        logger.log(
            logging.WARNING if to_open else logging.INFO,
            "circuit breaker %r: %s -> %s",
            self._name,
            transition.from_state.value,
            transition.to_state.value,
            extra={
                "breaker": self._name,
                "from_state": transition.from_state.value,
                "to_state": transition.to_state.value,
            },
        )
        self._metrics.increment(
            BREAKER_TRANSITIONS,
            labels={
                "breaker": self._name,
                "from_state": transition.from_state.value,
                "to_state": transition.to_state.value,
            },
        )
        if self._on_transition is not None:
            try:
                self._on_transition(transition)
            except Exception:  # a faulty callback must not fail the guarded call
                logger.exception("circuit breaker %r: on_transition failed", self._name)

    async def _acquire(self) -> tuple[str | None, bool]:
        """The permit granted, and whether a success of this call may go unrecorded.

        A success is a no-op in the store when the breaker is closed, no permit was handed
        out, and there are no consecutive failures to forget (``window=None`` with
        ``failures == 0``, or a sliding window, where a success forgets nothing).
        """
        try:
            decision = await self._store.acquire(self._name, self._config)
        except BackendError as exc:
            self._store_failed("acquire", exc)
            if self._on_store_error == "raise":
                raise
            if self._on_store_error == "closed":
                raise CircuitOpenError(self._name, 0.0) from exc
            return None, False
        snapshot = decision.snapshot
        self._seen(snapshot, decision.transition)
        if not decision.allowed:
            retry_after = snapshot.retry_after
            raise CircuitOpenError(self._name, 0.0 if retry_after is None else retry_after)
        quiet = (
            decision.permit is None
            and snapshot.state is BreakerState.CLOSED
            and (snapshot.failures == 0 or self._config.window is not None)
        )
        return decision.permit, quiet

    async def _settle(
        self, permit: str | None, exc: BaseException | None, *, quiet: bool = False
    ) -> None:
        if exc is None:
            if not quiet:
                await self._record("record_success", permit)
        elif self._counts_as_failure(exc):
            await self._record("record_failure", permit)
        elif permit is not None and isinstance(exc, Exception):
            await self._release(permit)

    async def _record(
        self, operation: Literal["record_success", "record_failure"], permit: str | None
    ) -> None:
        record = (
            self._store.record_success
            if operation == "record_success"
            else self._store.record_failure
        )
        try:
            update = await record(self._name, self._config, permit)
        except BackendError as exc:
            self._store_failed(operation, exc)
            if self._on_store_error == "raise":
                raise
            return
        self._seen(update.snapshot, update.transition)

    async def _release(self, permit: str) -> None:
        release: object = getattr(self._store, "release", None)
        if not callable(release):
            return  # the permit lapses after probe_timeout
        releaser = cast("_ReleasesPermits", self._store)  # has a callable release: checked above
        try:
            await releaser.release(self._name, self._config, permit)
        except BackendError as exc:
            self._store_failed("release", exc)
            if self._on_store_error == "raise":
                raise

    def __repr__(self) -> str:
        state = "unknown" if self._last is None else self._last.state.value
        return f"<CircuitBreaker {self._name!r} {state}>"
