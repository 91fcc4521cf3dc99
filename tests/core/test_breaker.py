"""CircuitBreaker over the memory breaker store; time moves only through the backend's clock."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from tta_agent_coordination import breaker as breaker_module
from tta_agent_coordination.backends.memory import MemoryBackend
from tta_agent_coordination.breaker import BreakerGuard, CircuitBreaker
from tta_agent_coordination.errors import (
    BackendError,
    BackendNotFoundError,
    BackendUnavailableError,
    CircuitOpenError,
    ValidationError,
)
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.metrics import (
    BREAKER_STORE_ERRORS,
    BREAKER_TRANSITIONS,
    RecordingMetrics,
)
from tta_agent_coordination.models import (
    BreakerDecision,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    BreakerUpdate,
    CircuitBreakerConfig,
)
from tta_agent_coordination.plugins import connect, plugin_registry
from tta_agent_coordination.protocols import Backend, BreakerStore
from tta_agent_coordination.settings import BackendOptions

# Two failures open it; 10 s to recover; one probe at a time; one probe success closes it.
CFG = CircuitBreakerConfig(
    failure_threshold=2, recovery_timeout=10, half_open_max_calls=1, success_threshold=1
)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://?clock=manual") as backend:
        yield backend


async def advance(backend: Backend, seconds: float) -> None:
    clock = backend.clock
    assert clock is not None
    await clock.advance(seconds)


class ServiceError(Exception):
    pass


class NotFoundError(Exception):
    pass


class Stop(BaseException):  # a BaseException like KeyboardInterrupt
    pass


async def fail() -> None:
    raise ServiceError


async def succeed(value: int = 1) -> int:
    return value


async def trip(breaker: CircuitBreaker) -> None:
    """Record failures until the breaker opens."""
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(ServiceError):
            await breaker.call(fail)
    assert await breaker.state() is BreakerState.OPEN


async def to_half_open(backend: Backend, breaker: CircuitBreaker) -> None:
    await trip(breaker)
    await advance(backend, breaker.config.recovery_timeout)


class WrappedStore:
    """A real store behind a wrapper that counts calls and fails the named operations."""

    def __init__(self, inner: BreakerStore, fail: set[str] | None = None) -> None:
        self.inner = inner
        self.fail = set() if fail is None else fail
        self.calls: list[str] = []

    def _use(self, operation: str) -> None:
        self.calls.append(operation)
        if operation in self.fail:
            msg = f"{operation}: connection refused"
            raise BackendUnavailableError(msg)

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        self._use("acquire")
        return await self.inner.acquire(name, config)

    async def record_success(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        self._use("record_success")
        return await self.inner.record_success(name, config, permit)

    async def record_failure(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        self._use("record_failure")
        return await self.inner.record_failure(name, config, permit)

    async def snapshot(self, name: str, config: CircuitBreakerConfig) -> BreakerSnapshot:
        self._use("snapshot")
        return await self.inner.snapshot(name, config)

    async def reset(self, name: str) -> BreakerUpdate:
        self._use("reset")
        return await self.inner.reset(name)

    async def breakers(self) -> list[str]:
        return await self.inner.breakers()


class ReleasingStore(WrappedStore):
    """A store that can take a probe permit back (an optional extension)."""

    def __init__(self, inner: BreakerStore, fail: set[str] | None = None) -> None:
        super().__init__(inner, fail)
        self.released: list[str] = []

    async def release(self, name: str, config: CircuitBreakerConfig, permit: str) -> None:
        self._use("release")
        self.released.append(permit)


class RefusingStore(WrappedStore):
    """Refuses every call without saying when to retry."""

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        self._use("acquire")
        snapshot = BreakerSnapshot(name=name, state=BreakerState.OPEN, retry_after=None)
        return BreakerDecision(allowed=False, snapshot=snapshot)


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_backend_keeps_its_own_namespace(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", key_prefix="other")
    assert breaker.backend is backend
    assert breaker.store is backend.breakers
    assert breaker.name == "svc"
    assert breaker.config == CircuitBreakerConfig()
    assert breaker.on_store_error == "open"
    await breaker.aclose()
    assert isinstance(backend, MemoryBackend)
    assert backend._closed is False  # not ours to close


@pytest.mark.anyio
async def test_a_bare_store() -> None:
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(backend.breakers, "svc", CFG)
        assert breaker.backend is None
        assert breaker.store is backend.breakers
        await breaker.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("url", "kwargs", "namespace"),
    [
        ("memory://", {}, "ao"),
        ("memory://", {"key_prefix": "app"}, "app"),
        ("memory://?namespace=fromurl", {"key_prefix": "app"}, "fromurl"),
    ],
)
async def test_a_url_is_connected_with_the_key_prefix(
    url: str, kwargs: dict[str, Any], namespace: str
) -> None:
    breaker = CircuitBreaker(url, "svc", **kwargs)
    backend = breaker.backend
    assert isinstance(backend, MemoryBackend)
    assert backend.options.namespace == namespace
    await breaker.aclose()
    assert backend._closed is True


class FakeClient:
    pass


class ClientPlugin:
    @hookimpl
    def tta_backend_from_client(self, client: Any, namespace: str) -> Any:
        if isinstance(client, FakeClient):
            return MemoryBackend(BackendOptions(namespace=namespace))
        return None


@pytest.fixture
def client_plugin() -> Iterator[None]:
    plugin_registry().register(ClientPlugin(), name="test-breaker-client")
    yield
    plugin_registry().unregister("test-breaker-client")


@pytest.mark.anyio
@pytest.mark.usefixtures("client_plugin")
async def test_a_client_is_wrapped_by_the_plugins() -> None:
    breaker = CircuitBreaker(FakeClient(), "svc")
    assert breaker.backend is not None
    assert breaker.backend.options.namespace == "ao"
    assert await breaker.call(succeed, 3) == 3
    await breaker.aclose()
    other = CircuitBreaker(FakeClient(), "svc", key_prefix="app")
    assert other.backend is not None
    assert other.backend.options.namespace == "app"


def test_an_unknown_client() -> None:
    with pytest.raises(BackendNotFoundError):
        CircuitBreaker(FakeClient(), "svc")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "bad name"}, "breaker name"),
        ({"config": {"failure_threshold": 1}}, "CircuitBreakerConfig"),
        ({"on_store_error": "ignore"}, "on_store_error"),
        ({"excluded_exceptions": "ServiceError"}, "excluded_exceptions"),
        ({"excluded_exceptions": (ServiceError, 3)}, "excluded_exceptions"),
        ({"excluded_exceptions": (int,)}, "excluded_exceptions"),
        ({"is_failure": True}, "is_failure"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], match: str) -> None:
    arguments: dict[str, Any] = {"name": "svc", **kwargs}
    with pytest.raises(ValidationError, match=match):
        CircuitBreaker("memory://", **arguments)


# ---------------------------------------------------------------------------------------------
# The original API
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_the_original_api_lifecycle(backend: Backend) -> None:
    config = CircuitBreakerConfig(
        failure_threshold=5, timeout_seconds=60, half_open_max_calls=3, success_threshold=2
    )
    breaker = CircuitBreaker(backend, "llm", config=config)
    assert await breaker.call(succeed, 7) == 7
    for _ in range(5):
        with pytest.raises(ServiceError):
            await breaker.call(fail)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(succeed)
    assert info.value.name == "llm"
    assert info.value.retry_after == pytest.approx(60)
    assert breaker.retry_after == pytest.approx(60)
    await advance(backend, 60)
    assert await breaker.call(succeed) == 1
    assert await breaker.state() is BreakerState.HALF_OPEN
    assert await breaker.call(succeed) == 1
    assert await breaker.state() is BreakerState.CLOSED
    assert breaker.retry_after is None


@pytest.mark.anyio
async def test_breakers_with_one_name_share_state_across_backends() -> None:
    async with (
        connect("memory://shared-breakers?clock=manual") as one,
        connect("memory://shared-breakers") as two,
    ):
        first = CircuitBreaker(one, "svc", CFG)
        second = CircuitBreaker(two, "svc", CFG)
        await trip(first)
        with pytest.raises(CircuitOpenError):
            await second.call(succeed)
        assert await second.state() is BreakerState.OPEN
        other_name = CircuitBreaker(two, "other", CFG)
        assert await other_name.call(succeed) == 1


# ---------------------------------------------------------------------------------------------
# The ways to guard a call
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_call_takes_sync_and_async_functions(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", CFG)

    def add(a: int, b: int = 0) -> int:
        return a + b

    assert await breaker.call(add, 1, b=2) == 3
    assert await breaker.call(succeed, value=5) == 5

    def sync_fail() -> None:
        raise ServiceError

    with pytest.raises(ServiceError):
        await breaker.call(sync_fail)
    assert (await breaker.snapshot()).failures == 1


@pytest.mark.anyio
async def test_decorator(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", CFG)

    @breaker
    async def ask(prompt: str) -> str:
        if prompt == "bad":
            raise ServiceError
        return prompt.upper()

    @breaker
    def sync_ask(prompt: str) -> str:
        return prompt * 2

    assert ask.__name__ == "ask"
    assert await ask("hi") == "HI"
    assert await sync_ask("ho") == "hoho"
    for _ in range(2):
        with pytest.raises(ServiceError):
            await ask("bad")
    with pytest.raises(CircuitOpenError):
        await sync_ask("ho")


@pytest.mark.anyio
async def test_async_with(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", CFG)
    assert repr(breaker) == "<CircuitBreaker 'svc' unknown>"
    async with breaker as entered:
        assert entered is breaker
    with pytest.raises(ServiceError):
        async with breaker:
            raise ServiceError
    assert (await breaker.snapshot()).failures == 1
    with pytest.raises(ServiceError):
        async with breaker.guard():
            raise ServiceError
    assert repr(breaker) == "<CircuitBreaker 'svc' open>"
    ran = False
    with pytest.raises(CircuitOpenError):
        async with breaker:
            ran = True
    assert not ran
    assert breaker_module._ACTIVE.get() == ()


@pytest.mark.anyio
async def test_a_guard_is_entered_once(backend: Backend) -> None:
    guard = CircuitBreaker(backend, "svc", CFG).guard()
    assert isinstance(guard, BreakerGuard)
    async with guard:
        assert guard.permit is None
    with pytest.raises(RuntimeError, match="one call"):
        async with guard:
            pass


@pytest.mark.anyio
async def test_concurrent_tasks_hold_their_own_permits(backend: Backend) -> None:
    config = CFG.model_copy(update={"half_open_max_calls": 2, "success_threshold": 2})
    breaker = CircuitBreaker(backend, "svc", config)
    await to_half_open(backend, breaker)
    inside = anyio.Event()
    leave = anyio.Event()
    permits: list[str | None] = []

    async def probe() -> None:
        async with breaker:
            permits.append(breaker_module._ACTIVE.get()[-1].permit)
            if len(permits) == 2:
                inside.set()
            await leave.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(probe)
        tg.start_soon(probe)
        await inside.wait()
        assert (await breaker.snapshot()).permits_in_use == 2
        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(succeed)
        assert info.value.retry_after == 0.0
        leave.set()
    assert len(set(permits)) == 2
    assert None not in permits
    assert await breaker.state() is BreakerState.CLOSED


@pytest.mark.anyio
async def test_nested_and_out_of_order_exits(backend: Backend) -> None:
    one = CircuitBreaker(backend, "one", CFG)
    two = CircuitBreaker(backend, "two", CFG)
    async with one, two, one:
        assert [g.breaker for g in breaker_module._ACTIVE.get()] == [one, two, one]
    await one.__aenter__()
    await two.__aenter__()
    await one.__aexit__(None, None, None)
    assert [g.breaker for g in breaker_module._ACTIVE.get()] == [two]
    await two.__aexit__(None, None, None)
    with pytest.raises(RuntimeError, match="without being entered"):
        await one.__aexit__(None, None, None)


@pytest.mark.anyio
async def test_a_refusal_without_retry_after_says_zero(backend: Backend) -> None:
    breaker = CircuitBreaker(RefusingStore(backend.breakers), "svc", CFG)
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(succeed)
    assert info.value.retry_after == 0.0


@pytest.mark.anyio
async def test_a_success_that_changes_nothing_is_not_recorded(backend: Backend) -> None:
    store = WrappedStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG)
    for _ in range(3):
        assert await breaker.call(succeed) == 1
    # Closed with no failures to forget: one store call per guarded call.
    assert store.calls == ["acquire"] * 3
    snapshot = await breaker.snapshot()
    assert (snapshot.state, snapshot.failures) == (BreakerState.CLOSED, 0)
    assert await backend.breakers.breakers() == ["svc"]


@pytest.mark.anyio
async def test_a_success_forgets_consecutive_failures(backend: Backend) -> None:
    store = WrappedStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG)
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    store.calls.clear()
    assert await breaker.call(succeed) == 1
    assert store.calls == ["acquire", "record_success"]
    assert (await breaker.snapshot()).failures == 0
    store.calls.clear()
    assert await breaker.call(succeed) == 1
    assert store.calls == ["acquire"]
    # The failure was forgotten: one more does not open it (the threshold is two).
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    assert await breaker.state() is BreakerState.CLOSED


@pytest.mark.anyio
async def test_a_success_in_a_sliding_window_is_never_recorded_while_closed(
    backend: Backend,
) -> None:
    store = WrappedStore(backend.breakers)
    config = CFG.model_copy(update={"window": 60.0})
    breaker = CircuitBreaker(store, "svc", config)
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    store.calls.clear()
    assert await breaker.call(succeed) == 1
    assert store.calls == ["acquire"]
    # A success forgets nothing in a window: the second failure within it opens the breaker.
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    assert await breaker.state() is BreakerState.OPEN


@pytest.mark.anyio
async def test_a_probe_success_is_always_recorded(backend: Backend) -> None:
    store = WrappedStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG)
    await to_half_open(backend, breaker)
    store.calls.clear()
    assert await breaker.call(succeed) == 1
    assert store.calls == ["acquire", "record_success"]
    assert await breaker.state() is BreakerState.CLOSED


@pytest.mark.anyio
async def test_a_quiet_success_does_not_clear_a_failure_recorded_while_it_ran(
    backend: Backend,
) -> None:
    # The documented choice: the success takes effect when the call was let through (it
    # changed nothing then); another process's failure recorded meanwhile stays counted.
    breaker = CircuitBreaker(backend, "svc", CFG)
    async with breaker:
        await backend.breakers.record_failure("svc", CFG)
    assert (await breaker.snapshot()).failures == 1


@pytest.mark.anyio
async def test_a_success_is_recorded_when_acquire_failed_open(backend: Backend) -> None:
    store = WrappedStore(backend.breakers, fail={"acquire"})
    breaker = CircuitBreaker(store, "svc", CFG)
    await backend.breakers.record_failure("svc", CFG)
    assert await breaker.call(succeed) == 1
    assert store.calls == ["acquire", "record_success"]
    assert (await breaker.snapshot()).failures == 0


# ---------------------------------------------------------------------------------------------
# What counts as a failure
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_half_open_probe_failure_reopens(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", CFG)
    await to_half_open(backend, breaker)
    with pytest.raises(ServiceError):
        await breaker.call(fail)
    assert await breaker.state() is BreakerState.OPEN
    assert breaker.retry_after == pytest.approx(10)


@pytest.mark.anyio
async def test_excluded_exceptions_count_as_neither(backend: Backend) -> None:
    store = WrappedStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG, excluded_exceptions=NotFoundError)

    async def not_found() -> None:
        raise NotFoundError

    with pytest.raises(ServiceError):
        await breaker.call(fail)
    for _ in range(3):
        with pytest.raises(NotFoundError):
            await breaker.call(not_found)
    # Not a failure, and not a success either: the consecutive failure is still counted.
    assert (await breaker.snapshot()).failures == 1
    assert store.calls.count("record_success") == 0
    assert await breaker.state() is BreakerState.CLOSED


@pytest.mark.anyio
async def test_is_failure_predicate(backend: Backend) -> None:
    seen: list[BaseException] = []

    def is_failure(exc: BaseException) -> bool:
        seen.append(exc)
        return not isinstance(exc, NotFoundError)

    breaker = CircuitBreaker(backend, "svc", CFG, is_failure=is_failure)

    async def not_found() -> None:
        raise NotFoundError

    for _ in range(3):
        with pytest.raises(NotFoundError):
            await breaker.call(not_found)
    assert await breaker.state() is BreakerState.CLOSED
    await trip(breaker)
    assert len(seen) == 5


@pytest.mark.anyio
async def test_an_excluded_probe_permit_lapses_without_release(backend: Backend) -> None:
    breaker = CircuitBreaker(backend, "svc", CFG, excluded_exceptions=(NotFoundError,))
    await to_half_open(backend, breaker)
    with pytest.raises(NotFoundError):
        async with breaker:
            raise NotFoundError
    snapshot = await breaker.snapshot()
    assert (snapshot.state, snapshot.permits_in_use) == (BreakerState.HALF_OPEN, 1)
    await advance(backend, CFG.probe_timeout)
    assert (await breaker.snapshot()).permits_in_use == 0
    assert await breaker.call(succeed) == 1
    assert await breaker.state() is BreakerState.CLOSED


@pytest.mark.anyio
async def test_an_excluded_probe_permit_is_released_when_the_store_can(backend: Backend) -> None:
    store = ReleasingStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG, excluded_exceptions=(NotFoundError,))
    await to_half_open(backend, breaker)
    guard = breaker.guard()
    with pytest.raises(NotFoundError):
        async with guard:
            raise NotFoundError
    assert guard.permit is not None
    assert store.released == [guard.permit]


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["open", "raise"])
async def test_a_failed_release(backend: Backend, policy: Any) -> None:
    store = ReleasingStore(backend.breakers, fail={"release"})
    metrics = RecordingMetrics()
    breaker = CircuitBreaker(
        store,
        "svc",
        CFG,
        excluded_exceptions=(NotFoundError,),
        on_store_error=policy,
        metrics=metrics,
    )
    await to_half_open(backend, breaker)
    expected: type[Exception] = NotFoundError if policy == "open" else BackendUnavailableError
    with pytest.raises(expected):
        async with breaker:
            raise NotFoundError
    assert metrics.total(BREAKER_STORE_ERRORS, breaker="svc", operation="release") == 1


@pytest.mark.anyio
async def test_base_exceptions_record_nothing(backend: Backend) -> None:
    store = WrappedStore(backend.breakers)
    breaker = CircuitBreaker(store, "svc", CFG)
    with pytest.raises(Stop):
        async with breaker:
            raise Stop
    assert store.calls == ["acquire"]
    await to_half_open(backend, breaker)
    store.calls.clear()
    with anyio.CancelScope() as scope:
        async with breaker:
            scope.cancel()
            await anyio.sleep_forever()
    assert store.calls == ["acquire"]
    assert (await breaker.snapshot()).permits_in_use == 1  # lapses after probe_timeout


# ---------------------------------------------------------------------------------------------
# Store errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_store_error_on_acquire_fails_open_by_default(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = RecordingMetrics()
    breaker = CircuitBreaker(
        WrappedStore(backend.breakers, fail={"acquire"}), "svc", CFG, metrics=metrics
    )
    with caplog.at_level(logging.WARNING, logger="tta_agent_coordination.breaker"):
        assert await breaker.call(succeed, 4) == 4
    assert metrics.total(BREAKER_STORE_ERRORS, breaker="svc", operation="acquire") == 1
    assert "acquire" in caplog.text
    assert "BackendUnavailableError" in caplog.text
    # Without a permit, the outcome was still recorded as a closed call's.
    assert (await breaker.snapshot()).state is BreakerState.CLOSED


@pytest.mark.anyio
async def test_store_error_on_acquire_fails_closed() -> None:
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(
            WrappedStore(backend.breakers, fail={"acquire"}), "svc", CFG, on_store_error="closed"
        )
        called = False

        async def mark() -> None:
            nonlocal called
            called = True

        with pytest.raises(CircuitOpenError) as info:
            await breaker.call(mark)
        assert info.value.retry_after == 0.0
        assert isinstance(info.value.__cause__, BackendUnavailableError)
        assert not called


@pytest.mark.anyio
async def test_store_error_on_acquire_raises() -> None:
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(
            WrappedStore(backend.breakers, fail={"acquire"}), "svc", CFG, on_store_error="raise"
        )
        with pytest.raises(BackendUnavailableError):
            await breaker.call(succeed)


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_store_errors_while_recording_are_swallowed(policy: Any) -> None:
    async with connect("memory://") as backend:
        metrics = RecordingMetrics()
        breaker = CircuitBreaker(
            WrappedStore(backend.breakers, fail={"record_success", "record_failure"}),
            "svc",
            CFG,
            on_store_error=policy,
            metrics=metrics,
        )
        # A consecutive failure to forget, so that the success has something to record.
        await backend.breakers.record_failure("svc", CFG)
        assert await breaker.call(succeed, 2) == 2
        with pytest.raises(ServiceError):
            await breaker.call(fail)
        assert metrics.total(BREAKER_STORE_ERRORS, operation="record_success") == 1
        assert metrics.total(BREAKER_STORE_ERRORS, operation="record_failure") == 1


@pytest.mark.anyio
async def test_store_errors_while_recording_raise_when_asked() -> None:
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(
            WrappedStore(backend.breakers, fail={"record_success", "record_failure"}),
            "svc",
            CFG,
            on_store_error="raise",
        )
        await backend.breakers.record_failure("svc", CFG)
        with pytest.raises(BackendUnavailableError):
            await breaker.call(succeed)
        with pytest.raises(BackendError) as info:
            await breaker.call(fail)
        assert isinstance(info.value.__context__, ServiceError)


@pytest.mark.anyio
async def test_state_reads_and_reset_propagate_store_errors() -> None:
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(
            WrappedStore(backend.breakers, fail={"snapshot", "reset"}), "svc", CFG
        )
        with pytest.raises(BackendUnavailableError):
            await breaker.state()
        with pytest.raises(BackendUnavailableError):
            await breaker.reset()


# ---------------------------------------------------------------------------------------------
# Transitions, metrics, reset
# ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_every_transition_is_reported(backend: Backend) -> None:
    metrics = RecordingMetrics()
    transitions: list[BreakerTransition] = []
    breaker = CircuitBreaker(backend, "svc", CFG, metrics=metrics, on_transition=transitions.append)
    await to_half_open(backend, breaker)
    await breaker.call(succeed)
    await trip(breaker)
    update = await breaker.reset()
    assert update.transition is not None
    assert (await breaker.reset()).transition is None
    assert [(t.from_state, t.to_state) for t in transitions] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.CLOSED),
    ]
    assert {t.name for t in transitions} == {"svc"}
    assert metrics.total(BREAKER_TRANSITIONS, breaker="svc") == 5
    assert metrics.total(BREAKER_TRANSITIONS, from_state="closed", to_state="open") == 2
    assert metrics.total(BREAKER_TRANSITIONS, from_state="open", to_state="half_open") == 1
    assert metrics.total(BREAKER_TRANSITIONS, from_state="half_open", to_state="closed") == 1
    assert metrics.total(BREAKER_TRANSITIONS, from_state="open", to_state="closed") == 1
    assert await breaker.state() is BreakerState.CLOSED
    assert await breaker.call(succeed) == 1


@pytest.mark.anyio
async def test_a_failing_on_transition_callback_is_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(transition: BreakerTransition) -> None:
        raise RuntimeError(transition.to_state)

    breaker = CircuitBreaker(backend, "svc", CFG, on_transition=explode)
    with caplog.at_level(logging.ERROR, logger="tta_agent_coordination.breaker"):
        await trip(breaker)
    assert "on_transition failed" in caplog.text


@pytest.mark.anyio
async def test_snapshot_updates_retry_after(backend: Backend) -> None:
    fresh = CircuitBreaker(backend, "svc", CFG)
    assert fresh.retry_after is None
    assert fresh.last_snapshot is None
    breaker = CircuitBreaker(backend, "svc", CFG)
    other = CircuitBreaker(backend, "svc", CFG)
    await trip(other)
    await advance(backend, 4)
    snapshot = await breaker.snapshot()
    assert breaker.last_snapshot == snapshot
    assert breaker.retry_after == pytest.approx(6)
