"""Logging: every record about a message names it (message id, entry id, queue, attempt).

The fields are checked both in ``record.__dict__`` (the ``extra=`` fields) and in the
formatted text (``record.getMessage()``), at the levels the docs promise.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import aclosing
from functools import partial
from pathlib import Path

import anyio
import pytest
from coordinator_helpers import WatchedMetrics

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    Backend,
    BackendUnavailableError,
    CircuitBreakerConfig,
    CircuitOpenError,
    Delivery,
    FailureType,
    RequestTimeoutError,
    connect,
)
from tta_agent_coordination._log import MESSAGE_FIELDS, log_message
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.breaker import CircuitBreaker
from tta_agent_coordination.coordinator import MessageCoordinator, _Slots, _Worker
from tta_agent_coordination.errors import PermanentFailureError
from tta_agent_coordination.metrics import (
    DELIVERIES_ACKED,
    DELIVERIES_DEAD_LETTERED,
    DELIVERIES_RELEASED,
    RESPONSES_LATE,
)
from tta_agent_coordination.models import RegistryEvent
from tta_agent_coordination.registry import AgentRegistry
from tta_agent_coordination.retry import RetryPolicy

pytestmark = pytest.mark.anyio

SVC = AgentId("svc", "1")
COORD_LOGGER = "tta_agent_coordination.coordinator"
NO_WAIT = RetryPolicy(max_attempts=2, base=0.0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


def records(caplog: pytest.LogCaptureFixture, contains: str) -> list[logging.LogRecord]:
    """The coordinator's records whose text contains ``contains``."""
    return [r for r in caplog.records if r.name == COORD_LOGGER and contains in r.getMessage()]


def one(caplog: pytest.LogCaptureFixture, contains: str) -> logging.LogRecord:
    found = records(caplog, contains)
    assert len(found) == 1, [r.getMessage() for r in caplog.records]
    return found[0]


def assert_names(record: logging.LogRecord, **fields: object) -> None:
    """The record carries ``fields`` as extra attributes and shows them in its text."""
    text = record.getMessage()
    for key in MESSAGE_FIELDS:
        assert hasattr(record, key), key  # every field is always there
    for key, value in fields.items():
        assert getattr(record, key) == value, (key, getattr(record, key))
        shown = "-" if value is None else value
        assert f"{key}={shown}" in text, (key, text)


# -- the helpers --------------------------------------------------------------------------


def test_helpers_fill_extra_and_text(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tta_agent_coordination.test_log")
    message = AgentMessage(sender=AgentId("a"), recipient=SVC, message_id="m-1")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        log_message(logger, logging.INFO, message, SVC, "sent %d", 3, entry_id="e-1")
        log_message(logger, logging.INFO, None, "q", "who knows", extra={"reason": "r"})
    first, second = caplog.records
    assert first.getMessage() == "sent 3 [message_id=m-1 entry_id=e-1 queue=svc:1 attempt=-]"
    assert (first.message_id, first.entry_id, first.queue, first.attempt) == (  # type: ignore[attr-defined]
        "m-1",
        "e-1",
        "svc:1",
        None,
    )
    assert first.funcName == "test_helpers_fill_extra_and_text"  # the caller, not the helper
    assert second.getMessage() == "who knows [message_id=- entry_id=- queue=q attempt=-]"
    assert second.reason == "r"  # type: ignore[attr-defined]


def test_helpers_build_nothing_below_the_level(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tta_agent_coordination.test_log_quiet")
    message = AgentMessage(sender=AgentId("a"), recipient=SVC)

    class Explodes:
        def __str__(self) -> str:
            raise AssertionError("formatted although the level is off")  # pragma: no cover

    with caplog.at_level(logging.WARNING, logger=logger.name):
        log_message(logger, logging.DEBUG, message, Explodes(), "x")  # type: ignore[arg-type]
    assert caplog.records == []


# -- the flow of one message at DEBUG -----------------------------------------------------


async def test_a_handled_message_is_followed_at_debug(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=COORD_LOGGER)
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    entry = await coord.send(SVC, {"n": 1})

    async def handler(delivery: Delivery) -> None:
        pass

    async with anyio.create_task_group() as tg:
        await tg.start(partial(coord.serve, SVC, handler, also_shared=False))
        await metrics.until(lambda: metrics.total(DELIVERIES_ACKED) == 1)
        tg.cancel_scope.cancel()
    sent = one(caplog, "sent a event message")
    message_id: object = sent.__dict__["message_id"]
    assert sent.levelno == logging.DEBUG
    assert_names(sent, entry_id=entry, queue="svc:1", attempt=None)
    for text in ("reserved", "handled in", "acked"):
        record = one(caplog, text)
        assert record.levelno == logging.DEBUG
        assert_names(record, message_id=message_id, entry_id=entry, queue="svc:1", attempt=1)
    # Nothing about a healthy message is logged above DEBUG.
    assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []


async def test_no_per_message_records_at_info(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=COORD_LOGGER)
    coord = MessageCoordinator(backend)
    await coord.send(SVC)
    (delivery,) = await coord.reserve(SVC)
    assert await coord.ack(delivery)
    assert caplog.records == []


# -- failures -----------------------------------------------------------------------------


async def test_a_failing_handler_logs_warnings_then_the_dead_letter(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=COORD_LOGGER)
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics, retry_policy=NO_WAIT)
    entry = await coord.send(SVC)

    async def handler(delivery: Delivery) -> None:
        raise ValueError("boom")

    async with anyio.create_task_group() as tg:
        await tg.start(partial(coord.serve, SVC, handler, also_shared=False))
        await metrics.until(lambda: metrics.total(DELIVERIES_DEAD_LETTERED) == 1)
        tg.cancel_scope.cancel()
    retried = one(caplog, "handler failed, retrying: ValueError: boom")
    assert retried.levelno == logging.WARNING
    assert retried.exc_info is not None  # the traceback of the handler's error
    assert_names(retried, entry_id=entry, queue="svc:1", attempt=1)
    nacked = one(caplog, "nacked, due again in 0.000s")
    assert nacked.levelno == logging.DEBUG
    assert_names(nacked, entry_id=entry, attempt=1)
    last = one(caplog, "handler failed, dead-lettering: ValueError: boom")
    assert last.levelno == logging.WARNING
    assert_names(last, entry_id=entry, attempt=2)
    dead = one(caplog, "dead-lettered (reason=max_attempts): ValueError: boom")
    assert dead.levelno == logging.WARNING
    assert dead.reason == "max_attempts"  # type: ignore[attr-defined]
    assert_names(dead, entry_id=entry, queue="svc:1", attempt=2)


async def test_a_timeout_and_a_permanent_failure(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=COORD_LOGGER)
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics, retry_policy=NO_WAIT)
    slow = await coord.send(SVC, {"slow": True})
    permanent = ""

    async def handler(delivery: Delivery) -> None:
        if delivery.message.payload == {"slow": True}:
            await anyio.sleep_forever()
        raise PermanentFailureError("no way")

    async with anyio.create_task_group() as tg:
        await tg.start(partial(coord.serve, SVC, handler, handler_timeout=0.05, also_shared=False))
        await metrics.until(lambda: metrics.total(DELIVERIES_DEAD_LETTERED) == 1, timeout=10)
        permanent = await coord.send(SVC, {"slow": False})
        await metrics.until(lambda: metrics.total(DELIVERIES_DEAD_LETTERED) == 2)
        tg.cancel_scope.cancel()
    timed_out = records(caplog, "handler timed out, ")
    assert [r.attempt for r in timed_out] == [1, 2]  # type: ignore[attr-defined]
    assert all(r.exc_info is None for r in timed_out)  # a timeout's traceback says nothing
    assert all(r.entry_id == slow for r in timed_out)  # type: ignore[attr-defined]
    failed = one(caplog, "handler failed, dead-lettering: PermanentFailureError: no way")
    assert_names(failed, entry_id=permanent, attempt=1)
    dead = one(caplog, "dead-lettered (reason=handler_error)")
    assert_names(dead, entry_id=permanent, attempt=1)


async def test_an_open_circuit_release_is_info(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=COORD_LOGGER)
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    entry = await coord.send(SVC)

    async def handler(delivery: Delivery) -> None:
        raise CircuitOpenError("llm", 30.0)

    async with anyio.create_task_group() as tg:
        await tg.start(partial(coord.serve, SVC, handler, also_shared=False))
        await metrics.until(lambda: metrics.total(DELIVERIES_RELEASED) == 1)
        tg.cancel_scope.cancel()
    record = one(caplog, "open circuit")
    assert record.levelno == logging.INFO
    assert "reserving pauses 30.000s" in record.getMessage()
    assert_names(record, entry_id=entry, queue="svc:1", attempt=1)


# -- stale receipts and the original API --------------------------------------------------


async def test_stale_settlements_are_logged(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=COORD_LOGGER)
    coord = MessageCoordinator(backend)
    entry = await coord.send(SVC)
    (delivery,) = await coord.reserve(SVC)
    assert await coord.release(delivery)
    assert not await coord.ack(delivery)
    assert not await coord.nack(delivery)
    assert not await coord.release(delivery)
    assert not await coord.dead_letter(delivery, error="x")
    stale_ack = one(caplog, "not acked: the receipt was stale")
    assert stale_ack.levelno == logging.WARNING  # its work will be repeated
    assert_names(stale_ack, entry_id=entry, queue="svc:1", attempt=1)
    for verb in ("nacked", "released", "dead-lettered"):
        record = one(caplog, f"not {verb}: the receipt was stale")
        assert record.levelno == logging.INFO
        assert_names(record, entry_id=entry, attempt=1)


async def test_the_original_api_names_what_it_knows(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=COORD_LOGGER)
    coord = MessageCoordinator(backend)
    message = AgentMessage(sender=AgentId("a"), recipient=SVC)
    await coord.send_message(AgentId("a"), SVC, message)
    await coord.send_message(AgentId("a"), SVC, message)
    first = await coord.receive(SVC)
    second = await coord.receive(SVC)
    assert first is not None
    assert second is not None
    assert await coord.nack(SVC, first.token, FailureType.TRANSIENT, "flaky")
    assert await coord.nack(SVC, second.token, FailureType.PERMANENT, "bad")
    # A token carries the receipt and the attempt, not the message id.
    nacked = one(caplog, "nacked, due again in 1.000s")
    assert_names(nacked, message_id=None, entry_id=None, queue="svc:1", attempt=1)
    dead = one(caplog, "dead-lettered (reason=handler_error): bad")
    assert_names(dead, message_id=None, queue="svc:1", attempt=1)


async def test_a_late_response_is_info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=COORD_LOGGER)
    metrics = WatchedMetrics()
    # A manual clock: the request's ttl cannot lapse before it is taken (as in test_coordinator).
    async with (
        connect("memory://?clock=manual") as backend,
        MessageCoordinator(backend, metrics=metrics) as coord,
    ):
        grabbed: list[Delivery] = []

        async def grab() -> None:
            grabbed.extend(await coord.reserve(SVC, wait=5))

        async with anyio.create_task_group() as tg:
            tg.start_soon(grab)
            with pytest.raises(RequestTimeoutError):
                await coord.request(SVC, {"q": 1}, timeout=0.05)
        entry = await coord.reply(grabbed[0], {"too": "late"})
        await metrics.until(lambda: metrics.total(RESPONSES_LATE) == 1)
    late = one(caplog, "after its request gave up")
    assert late.levelno == logging.INFO
    assert f"correlation_id={grabbed[0].message.correlation_id}" in late.getMessage()
    assert_names(late, entry_id=entry, queue=str(coord.reply_queue), attempt=1)


# -- shutdown -----------------------------------------------------------------------------


@pytest.mark.parametrize("abort", [False, True])
async def test_a_handler_cut_off_at_shutdown_is_a_warning(
    backend: Backend, caplog: pytest.LogCaptureFixture, abort: bool
) -> None:
    caplog.set_level(logging.INFO, logger=COORD_LOGGER)
    coord = MessageCoordinator(backend)
    stop, aborted = anyio.Event(), anyio.Event()
    running = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        running.set()
        await anyio.sleep_forever()

    entry = await coord.send(SVC)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: coord.serve(
                    SVC, handler, stop=stop, abort=aborted, grace=0.05, also_shared=False
                )
            )
            await running.wait()
            if abort:
                aborted.set()
            else:
                stop.set()
    if abort:
        record = one(caplog, "handler cancelled at shutdown (aborted): left reserved")
    else:
        record = one(
            caplog, "handler cancelled at shutdown (past the 0.05s grace period): released"
        )
    assert record.levelno == logging.WARNING
    assert_names(record, entry_id=entry, queue="svc:1", attempt=1)


@pytest.mark.parametrize("aborted", [False, True])
async def test_a_delivery_not_started_at_shutdown_is_info(
    backend: Backend, caplog: pytest.LogCaptureFixture, aborted: bool
) -> None:
    caplog.set_level(logging.INFO, logger=COORD_LOGGER)
    coord = MessageCoordinator(backend)

    async def handler(delivery: Delivery) -> None:
        raise AssertionError  # pragma: no cover

    entry = await coord.send(SVC)
    (delivery,) = await coord.reserve(SVC, visibility_timeout=30)
    slots = _Slots(1)
    slots.take(1)
    worker = _Worker(
        coordinator=coord,
        agent_id=SVC,
        handler=handler,
        slots=slots,
        handler_timeout=None,
        visibility_timeout=30,
        policy=NO_WAIT,
        breaker=None,
        grace=1,
        stopping=True,
        aborted=aborted,
    )
    await worker._handle(delivery)
    record = one(caplog, "not started: " + ("left reserved" if aborted else "released"))
    assert record.levelno == logging.INFO
    assert_names(record, entry_id=entry, queue="svc:1", attempt=1)


# -- circuit breakers ---------------------------------------------------------------------

BREAKER_LOGGER = "tta_agent_coordination.breaker"


async def test_breaker_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=BREAKER_LOGGER)
    config = CircuitBreakerConfig(
        failure_threshold=1, recovery_timeout=10, half_open_max_calls=1, success_threshold=1
    )
    async with connect("memory://?clock=manual") as backend:
        breaker = CircuitBreaker(backend, "llm", config)

        async def fail() -> None:
            raise ConnectionError("down")

        with pytest.raises(ConnectionError):
            await breaker.call(fail)
        assert backend.clock is not None
        await backend.clock.advance(10)
        await breaker.call(lambda: None)
    moves = [
        (r.levelno, *(r.__dict__[k] for k in ("breaker", "from_state", "to_state")), r.getMessage())
        for r in caplog.records
        if r.name == BREAKER_LOGGER
    ]
    assert moves == [
        (logging.WARNING, "llm", "closed", "open", "circuit breaker 'llm': closed -> open"),
        (logging.INFO, "llm", "open", "half_open", "circuit breaker 'llm': open -> half_open"),
        (logging.INFO, "llm", "half_open", "closed", "circuit breaker 'llm': half_open -> closed"),
    ]


async def test_breaker_store_errors_name_the_breaker(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger=BREAKER_LOGGER)
    async with connect("memory://") as backend:
        breaker = CircuitBreaker(backend, "llm")

        async def broken(*args: object) -> object:
            raise BackendUnavailableError("store down")

        monkeypatch.setattr(backend.breakers, "acquire", broken)
        assert await breaker.call(lambda: 7) == 7  # fails open
    (record,) = [r for r in caplog.records if r.name == BREAKER_LOGGER]
    assert record.levelno == logging.WARNING
    assert (record.breaker, record.operation) == ("llm", "acquire")  # type: ignore[attr-defined]
    assert "store down" in record.getMessage()


# -- the registry -------------------------------------------------------------------------

REGISTRY_LOGGER = "tta_agent_coordination.registry"
ALPHA = AgentId("summariser", "alpha")


def registry_records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str, str]]:
    return [
        (r.levelno, r.agent_id, r.getMessage())  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == REGISTRY_LOGGER
    ]


async def test_registrations_and_events_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=REGISTRY_LOGGER)
    async with MemoryBackend(clock=MemoryClock(manual=True, start=1_000.0)) as backend:
        registry = AgentRegistry(backend)
        start = (await registry.read_events()).next_cursor
        token = await registry.register(ALPHA, ttl=10)
        await registry.heartbeat(ALPHA, token, load=0.5)
        assert not await registry.deregister(ALPHA, "not-the-token")
        await backend.clock.advance(11)  # it expires
        beta = AgentId("summariser", "beta")
        other = await registry.register(beta, replace=True)
        assert await registry.deregister(beta, other)
        seen: list[RegistryEvent] = []
        with anyio.fail_after(5):
            async with aclosing(registry.events(after=start, wait=1)) as events:
                async for event in events:
                    seen.append(event)
                    if len(seen) == 5:
                        break
    logged = registry_records(caplog)
    assert logged[:4] == [
        (
            logging.INFO,
            "summariser:alpha",
            "registered agent summariser:alpha (ttl=10s, 0 capabilities)",
        ),
        (
            logging.INFO,
            "summariser:alpha",
            "agent summariser:alpha was not deregistered: the session was not current"
            " (replaced or expired)",
        ),
        (
            logging.INFO,
            "summariser:beta",
            "registered agent summariser:beta"
            " (ttl=30.0s, 0 capabilities, replacing a live session)",
        ),
        (logging.INFO, "summariser:beta", "deregistered agent summariser:beta"),
    ]
    logged_events = [r for r in caplog.records if r.name == REGISTRY_LOGGER][4:]
    assert [(r.levelno, r.__dict__["event"], r.__dict__["cursor"]) for r in logged_events] == [
        (logging.INFO, "registered", seen[0].cursor),
        (logging.DEBUG, "updated", seen[1].cursor),
        (logging.WARNING, "expired", seen[2].cursor),
        (logging.INFO, "registered", seen[3].cursor),
        (logging.INFO, "deregistered", seen[4].cursor),
    ]
    assert logged_events[2].getMessage() == (
        f"registry event: summariser:alpha expired (cursor {seen[2].cursor})"
    )
    assert all(r.__dict__["agent_type"] == "summariser" for r in logged_events)


async def test_a_managed_registration_logs_its_end_and_sweeps(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger=REGISTRY_LOGGER)
    async with MemoryBackend(clock=MemoryClock(manual=True, start=1_000.0)) as backend:
        swept = anyio.Event()

        async def sweep() -> int:
            swept.set()
            return 2

        monkeypatch.setattr(backend.registry, "sweep", sweep)
        registry = AgentRegistry(backend)
        async with registry.registered(ALPHA, heartbeat_interval=0.01):
            with anyio.fail_after(5):
                await swept.wait()
        async with registry.registered(ALPHA, heartbeat_interval=60):
            await backend.registry.register(ALPHA, replace=True)  # someone else takes it over
    messages = [r.getMessage() for r in caplog.records if r.name == REGISTRY_LOGGER]
    assert "registry sweep: 2 agent(s) expired" in messages
    assert "deregistered agent summariser:alpha" in messages
    assert messages[-1].startswith("agent summariser:alpha was not deregistered")


# -- the docs page ------------------------------------------------------------------------


def test_the_logging_page_sample_prints_what_it_shows(tmp_path: Path) -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "observability" / "logging.md"
    section = page.read_text().split("## Sample output", 1)[1]
    blocks = [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", section, re.M | re.S)]
    (language, code), (shown_language, shown) = blocks[:2]
    assert (language, shown_language) == ("python", "text")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
