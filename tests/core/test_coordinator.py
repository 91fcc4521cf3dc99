"""The coordinator's new API on the memory backend: send, routing, broadcast, request/response,
queue operations, middleware and metrics (the worker loop is in test_serve.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import pytest
from coordinator_helpers import WatchedMetrics

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    AgentNotFoundError,
    Backend,
    BackendUnavailableError,
    Capability,
    CapabilityQuery,
    Delivery,
    FailureType,
    MessagePriority,
    MessageType,
    QueueFullError,
    RequestTimeoutError,
    ValidationError,
    connect,
)
from tta_agent_coordination.coordinator import (
    CLIENT_TYPE,
    REPLY_QUEUE_TTL,
    REPLY_QUEUE_TYPE,
    AgentDirectory,
    MessageCoordinator,
    Middleware,
    PassThroughMiddleware,
    SendNext,
)
from tta_agent_coordination.errors import BroadcastError
from tta_agent_coordination.metrics import (
    DELIVERIES_ACKED,
    DELIVERIES_DEAD_LETTERED,
    DELIVERIES_NACKED,
    DELIVERIES_RELEASED,
    DELIVERIES_RESERVED,
    MESSAGES_SENT,
    REQUEST_DURATION,
    RESPONSES_LATE,
)
from tta_agent_coordination.registry import AgentRegistry
from tta_agent_coordination.retry import RetryPolicy
from tta_agent_coordination.testing.base import advance

pytestmark = pytest.mark.anyio

SVC = AgentId("svc", "1")
OTHER = AgentId("svc", "2")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


async def take(coord: MessageCoordinator, queue: AgentId, wait: float = 5.0) -> Delivery:
    """Reserve one delivery from ``queue``, failing the test if none comes."""
    got = await coord.reserve(queue, visibility_timeout=30, wait=wait)
    assert len(got) == 1
    return got[0]


# -- construction and identity ------------------------------------------------------------


async def test_defaults_and_identity(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    assert coord.backend is backend
    assert coord.agent_id.type == CLIENT_TYPE
    assert coord.reply_queue.type == REPLY_QUEUE_TYPE
    assert coord.reply_queue.instance == coord.agent_id.instance
    assert coord.retry_policy == RetryPolicy()
    assert coord.middleware == ()
    registry = coord.registry
    assert isinstance(registry, AgentRegistry)
    assert registry.store is backend.registry
    assert coord.registry is registry  # built once
    assert isinstance(registry, AgentDirectory)
    me = AgentId("planner", "p1")
    policy = RetryPolicy(max_attempts=2)
    other = MessageCoordinator(backend, agent_id=me, retry_policy=policy, registry=backend.registry)
    assert other.registry is backend.registry  # a bare store is fine too
    assert other.agent_id == me
    assert other.retry_policy is policy
    assert other.reply_queue != coord.reply_queue


async def test_an_error_in_the_body_propagates_unwrapped(backend: Backend) -> None:
    with pytest.raises(KeyError):
        async with MessageCoordinator(backend):
            raise KeyError("mine")


async def test_cancelling_the_body_cleans_up(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    with anyio.move_on_after(0.05) as scope:
        async with coord:
            await coord.request(SVC, timeout=10)
    assert scope.cancelled_caught
    assert coord.reply_queue not in await backend.queue.queues()


async def test_async_with_twice_is_refused(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    async with coord:
        with pytest.raises(RuntimeError, match="already in use"):
            await coord.__aenter__()
    async with coord:  # usable again after exit
        pass


# -- send and routing ---------------------------------------------------------------------


async def test_send_builds_a_message_with_defaults(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    entry = await coord.send(SVC, {"x": 1})
    delivery = await take(coord, SVC)
    assert delivery.entry_id == entry
    message = delivery.message
    assert message.sender == coord.agent_id
    assert message.recipient == SVC
    assert message.message_type == MessageType.EVENT
    assert message.payload == {"x": 1}
    assert message.priority == 5
    assert metrics.total(MESSAGES_SENT, queue="svc:1", message_type="event") == 1
    assert metrics.total(DELIVERIES_RESERVED, queue="svc:1") == 1


async def test_send_passes_every_option(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    reply_to = AgentId("caller", "c")
    await coord.send(
        SVC,
        sender=AgentId("me", "x"),
        message_type="command",
        priority=9,
        ttl=60,
        headers={"traceparent": "00-abc"},
        correlation_id="corr",
        reply_to=reply_to,
        max_attempts=2,
    )
    delivery = await take(coord, SVC)
    message = delivery.message
    assert message.payload == {}
    assert message.sender == AgentId("me", "x")
    assert message.message_type == "command"
    assert message.priority == 9
    assert message.ttl == 60
    assert message.headers == {"traceparent": "00-abc"}
    assert message.correlation_id == "corr"
    assert message.reply_to == reply_to
    assert delivery.max_attempts == 2


@pytest.mark.parametrize("bad", [True, False, 10, -1, 5.5, "x"])
async def test_send_checks_a_priority_given_even_where_it_equals_the_default(
    backend: Backend, bad: object
) -> None:
    coord = MessageCoordinator(backend)
    with pytest.raises(ValidationError, match="priority"):
        await coord.send(SVC, {}, priority=bad)  # type: ignore[call-overload]  # refused at runtime
    assert (await backend.queue.stats(SVC)).ready == 0


@pytest.mark.parametrize(
    ("given", "stored"), [(5, 5), (MessagePriority.NORMAL, 5), (5.0, 5), ("5", 5), (0, 0)]
)
async def test_send_takes_a_priority_the_model_takes(
    backend: Backend, given: object, stored: int
) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(SVC, {}, priority=given, headers={})  # type: ignore[call-overload]  # lax input
    message = (await take(coord, SVC)).message
    assert (message.priority, type(message.priority) is bool) == (stored, False)
    assert message.headers == {}


async def test_send_with_dedup_entry_id_and_delay() -> None:
    async with connect("memory://?clock=manual") as backend:
        assert backend.clock is not None
        coord = MessageCoordinator(backend)
        first = await coord.send(SVC, {"n": 1}, dedup_key="k")
        assert await coord.send(SVC, {"n": 2}, dedup_key="k") == first
        assert await coord.send(SVC, entry_id="mine") == "mine"
        assert await coord.send(SVC, entry_id="mine") == "mine"
        await coord.send(OTHER, delay=10)
        assert await coord.reserve(OTHER, visibility_timeout=5) == []
        await backend.clock.advance(10)
        assert len(await coord.reserve(OTHER, visibility_timeout=5)) == 1
        stats = await backend.queue.stats(SVC)
        assert stats.ready == 2


async def test_send_a_ready_message(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    message = AgentMessage(sender=OTHER, recipient=SVC, payload={"a": 1}, priority=9)
    entry = await coord.send(message, delay=0)
    delivery = await take(coord, SVC)
    assert delivery.entry_id == entry
    assert delivery.message == message
    with pytest.raises(ValidationError, match="takes no payload"):
        await coord.send(message, {"b": 2})  # type: ignore[call-overload]  # refused at runtime too


async def test_send_to_the_shared_queue_of_an_agent_id(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(SVC, {"x": 1}, shared=True)
    assert (await take(coord, AgentId("svc"))).message.recipient == AgentId("svc")


async def test_send_full_queue_raises() -> None:
    async with connect("memory://", max_queue_length=1) as backend:
        coord = MessageCoordinator(backend)
        await coord.send(SVC)
        with pytest.raises(QueueFullError):
            await coord.send(SVC)


async def test_capability_routing_goes_to_the_least_loaded_match(backend: Backend) -> None:
    registry = backend.registry
    v15 = [Capability("summarise", "1.5")]
    await registry.register(AgentId("summariser", "busy"), capabilities=v15, load=0.9)
    await registry.register(AgentId("summariser", "idle"), capabilities=v15, load=0.1)
    await registry.register(
        AgentId("summariser", "old"), capabilities=[Capability("summarise", "1.0")], load=0.0
    )
    await registry.register(AgentId("other", "away"), capabilities=v15, load=0.0, available=False)
    coord = MessageCoordinator(backend)
    query = CapabilityQuery("summarise", ">=1.2,<2")
    assert await coord.route(query) == AgentId("summariser", "idle")
    assert await coord.route(query, shared=True) == AgentId("summariser")
    await coord.send(query, {"text": "..."})
    assert (await take(coord, AgentId("summariser", "idle"))).message.payload == {"text": "..."}
    await coord.send(query, {"text": "shared"}, shared=True)
    assert (await take(coord, AgentId("summariser"))).message.payload == {"text": "shared"}
    assert await coord.route(SVC) == SVC


async def test_capability_routing_without_a_match_raises(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    with pytest.raises(AgentNotFoundError, match="summarise"):
        await coord.send(CapabilityQuery("summarise"), {})
    assert await backend.queue.queues() == []


# -- broadcast ----------------------------------------------------------------------------


async def test_broadcast_reaches_every_live_instance(backend: Backend) -> None:
    for name in ("a", "b", "c"):
        await backend.registry.register(AgentId("worker", name))
    await backend.registry.register(AgentId("other", "z"))
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    ids = await coord.broadcast("worker", {"cmd": "reload"}, priority=9, headers={"h": "v"})
    assert len(ids) == 3
    assert len(set(ids)) == 3
    message_ids: set[str] = set()
    for name in ("a", "b", "c"):
        delivery = await take(coord, AgentId("worker", name), wait=0)
        assert delivery.message.payload == {"cmd": "reload"}
        assert delivery.message.recipient == AgentId("worker", name)
        assert delivery.message.message_type == MessageType.EVENT
        assert delivery.message.headers == {"h": "v"}
        message_ids.add(delivery.message.message_id)
    assert len(message_ids) == 1
    assert await coord.reserve(AgentId("other", "z"), visibility_timeout=5) == []
    assert metrics.total(MESSAGES_SENT) == 3


async def test_broadcast_to_nobody_sends_nothing(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    assert await coord.broadcast("worker") == []
    assert await backend.queue.queues() == []


async def test_broadcast_reports_partial_failure() -> None:
    async with connect("memory://", max_queue_length=1) as backend:
        for name in ("a", "b"):
            await backend.registry.register(AgentId("worker", name))
        coord = MessageCoordinator(backend)
        await coord.send(AgentId("worker", "a"))
        with pytest.raises(BroadcastError) as caught:
            await coord.broadcast("worker", {"x": 1})
        error = caught.value
        assert list(error.sent) == [AgentId("worker", "b")]
        assert list(error.failed) == [AgentId("worker", "a")]
        assert isinstance(error.failed[AgentId("worker", "a")], QueueFullError)
        assert "1 of 2" in str(error)


# -- request / response -------------------------------------------------------------------


async def responder(coord: MessageCoordinator, queue: AgentId, count: int = 1) -> None:
    """Answer ``count`` requests on ``queue`` with their payload echoed."""
    for _ in range(count):
        delivery = await take(coord, queue)
        await coord.reply(delivery, {"echo": delivery.message.payload})
        assert await coord.ack(delivery)


async def test_request_response_round_trip(backend: Backend) -> None:
    metrics = WatchedMetrics()
    async with MessageCoordinator(backend, metrics=metrics) as coord:
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder, coord, SVC, 2)
            with anyio.fail_after(5):
                answer = await coord.request(SVC, {"q": 1}, timeout=5)
                second = await coord.request(SVC, timeout=5)
            assert answer.payload == {"echo": {"q": 1}}
            assert answer.message_type == MessageType.RESPONSE
            assert answer.sender == SVC
            assert answer.recipient == coord.reply_queue
            assert second.payload == {"echo": {}}
        assert metrics.values(REQUEST_DURATION, outcome="ok") != []
        assert metrics.total(DELIVERIES_ACKED, queue=str(coord.reply_queue)) == 2
        assert coord.reply_queue in await backend.queue.queues()
    assert coord.reply_queue not in await backend.queue.queues()


async def test_request_message_carries_reply_to_correlation_and_ttl(backend: Backend) -> None:
    async with MessageCoordinator(backend) as coord:
        seen: list[AgentMessage] = []

        async def serve_one() -> None:
            delivery = await take(coord, SVC)
            seen.append(delivery.message)
            await coord.reply(delivery.message, "plain", priority=1, sender=OTHER)

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve_one)
            answer = await coord.request(
                SVC, [1, 2], timeout=7, headers={"h": "1"}, message_type="ask", priority=8
            )
            request = seen[0]
            assert request.reply_to == coord.reply_queue
            assert request.correlation_id is not None
            assert request.correlation_id == answer.correlation_id
            assert request.ttl == 7
            assert request.message_type == "ask"
            assert request.priority == 8
            assert request.headers == {"h": "1"}
            assert answer.payload == "plain"
            assert answer.priority == 1
            assert answer.sender == OTHER


async def test_request_with_a_ready_message(backend: Backend) -> None:
    async with MessageCoordinator(backend) as coord:
        message = AgentMessage(sender=OTHER, recipient=SVC, payload={"m": 1}, ttl=999)
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder, coord, SVC)
            answer = await coord.request(message, timeout=5)
            assert answer.payload == {"echo": {"m": 1}}


async def test_request_routes_by_capability(backend: Backend) -> None:
    await backend.registry.register(SVC, capabilities=[Capability("echo")])
    async with MessageCoordinator(backend) as coord, anyio.create_task_group() as tg:
        tg.start_soon(responder, coord, AgentId("svc"))
        answer = await coord.request(CapabilityQuery("echo"), {"v": 2}, shared=True, timeout=5)
        assert answer.payload == {"echo": {"v": 2}}


async def test_request_timeout(backend: Backend) -> None:
    metrics = WatchedMetrics()
    async with MessageCoordinator(backend, metrics=metrics) as coord:
        with pytest.raises(RequestTimeoutError, match="svc:1"):
            await coord.request(SVC, {"q": 1}, timeout=0.05)
        assert metrics.values(REQUEST_DURATION, outcome="timeout") != []
        assert coord._waiters == {}


async def test_the_reply_reader_rearms_its_wait(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tta_agent_coordination.coordinator._RESERVE_WAIT", 0.01)
    metrics = WatchedMetrics()
    async with MessageCoordinator(backend, metrics=metrics) as coord:
        with pytest.raises(RequestTimeoutError):
            await coord.request(SVC, timeout=0.2)  # the reader's reserve returns empty
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder, coord, SVC)
            answer = await coord.request(SVC, {"q": 2}, timeout=5)  # and it still reads
            assert answer.payload == {"echo": {"q": 2}}


async def test_request_send_failure_is_reported(backend: Backend) -> None:
    metrics = WatchedMetrics()
    async with MessageCoordinator(backend, metrics=metrics) as coord:
        with pytest.raises(AgentNotFoundError):
            await coord.request(CapabilityQuery("nothing"), timeout=1)
        assert metrics.values(REQUEST_DURATION, outcome="error") != []


async def test_late_response_is_acked_and_counted() -> None:
    metrics = WatchedMetrics()
    # A manual clock: the request's ttl (backend time) cannot lapse before it is taken,
    # however slow the machine; its timeout (real time) still does.
    async with (
        connect("memory://?clock=manual") as backend,
        MessageCoordinator(backend, metrics=metrics) as coord,
    ):
        grabbed: list[Delivery] = []

        async def grab() -> None:
            grabbed.append(await take(coord, SVC))

        async with anyio.create_task_group() as tg:
            tg.start_soon(grab)
            with pytest.raises(RequestTimeoutError):
                await coord.request(SVC, {"q": 1}, timeout=0.05)
        await coord.reply(grabbed[0], {"too": "late"})
        # A message on the reply queue without a correlation id is not a response either.
        await coord.send(coord.reply_queue, {"stray": True})
        await metrics.until(lambda: metrics.total(RESPONSES_LATE) == 2)
        label = str(coord.reply_queue)
        await metrics.until(lambda: metrics.total(DELIVERIES_ACKED, queue=label) == 2)
        stats = await backend.queue.stats(coord.reply_queue)
        assert (stats.ready, stats.reserved, stats.dead) == (0, 0, 0)


async def test_an_abandoned_reply_queue_disappears_after_its_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with connect("memory://?clock=manual") as backend:
        async with MessageCoordinator(backend) as coord:
            with pytest.raises(RequestTimeoutError):
                await coord.request(SVC, timeout=0.01)  # starts the reader: the queue has a ttl

            async def crash(queue: AgentId) -> int:
                raise BackendUnavailableError("the process died before cleaning up")

            monkeypatch.setattr(backend.queue, "drop_queue", crash)
        assert coord.reply_queue in await backend.queue.queues()  # left behind
        await advance(backend, REPLY_QUEUE_TTL - 10)
        assert coord.reply_queue in await backend.queue.queues()
        await advance(backend, 20)
        assert coord.reply_queue not in await backend.queue.queues()


async def test_reply_queue_ttl_failure_leaves_the_reader_unstarted(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(queue: AgentId, ttl: float | None) -> None:
        raise BackendUnavailableError("down")

    async with MessageCoordinator(backend) as coord:
        monkeypatch.setattr(backend.queue, "set_queue_ttl", down)
        with pytest.raises(BackendUnavailableError):
            await coord.request(SVC, timeout=1)
        monkeypatch.undo()
        with pytest.raises(RequestTimeoutError):
            await coord.request(SVC, timeout=0.01)  # the next request starts it


async def test_request_needs_async_with(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    with pytest.raises(RuntimeError, match="async with"):
        await coord.request(SVC, timeout=1)


async def test_request_timeout_must_be_positive(backend: Backend) -> None:
    async with MessageCoordinator(backend) as coord:
        with pytest.raises(ValidationError, match="timeout"):
            await coord.request(SVC, timeout=0)


async def test_reply_needs_a_request(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(SVC, {"x": 1})
    delivery = await take(coord, SVC)
    with pytest.raises(ValidationError, match="reply_to"):
        await coord.reply(delivery, {})


async def test_reply_reader_survives_backend_errors(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_reserve = backend.queue.reserve
    calls = 0

    async def flaky_reserve(
        queue: AgentId,
        *,
        visibility_timeout: float,
        max_messages: int = 1,
        wait: float | None = None,
    ) -> list[Delivery]:
        nonlocal calls
        if queue.type == REPLY_QUEUE_TYPE:
            calls += 1
            if calls == 1:
                raise BackendUnavailableError("down")
        return await real_reserve(
            queue, visibility_timeout=visibility_timeout, max_messages=max_messages, wait=wait
        )

    monkeypatch.setattr(backend.queue, "reserve", flaky_reserve)
    policy = RetryPolicy(base=0.0)
    async with MessageCoordinator(backend, retry_policy=policy) as coord:
        async with anyio.create_task_group() as tg:
            tg.start_soon(responder, coord, SVC)
            answer = await coord.request(SVC, {"q": 1}, timeout=5)
            assert answer.payload == {"echo": {"q": 1}}
        assert calls >= 2


async def test_failing_reply_queue_drop_is_logged(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken_drop(queue: AgentId) -> int:
        raise BackendUnavailableError("gone")

    async with MessageCoordinator(backend) as coord:
        with pytest.raises(RequestTimeoutError):
            await coord.request(SVC, timeout=0.01)
        monkeypatch.setattr(backend.queue, "drop_queue", broken_drop)
    assert "could not drop reply queue" in caplog.text


# -- queue operations ---------------------------------------------------------------------


async def test_reserve_ack_release_dead_letter_extend(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coord = MessageCoordinator(backend, metrics=metrics)
    assert await coord.reserve(SVC, visibility_timeout=5) == []
    for n in range(3):
        await coord.send(SVC, {"n": n})
    batch = await coord.reserve(SVC, visibility_timeout=5, max_messages=3)
    assert [d.message.payload for d in batch] == [{"n": 0}, {"n": 1}, {"n": 2}]
    first, second, third = batch
    assert await coord.extend(first, 10)
    assert await coord.ack(first)
    assert await coord.release(second)
    assert not await coord.release(second)
    assert await coord.dead_letter(third, "bad_input", "ValueError: no")
    assert not await coord.dead_letter(third)
    assert not await coord.extend(third, 10)
    again = await take(coord, SVC, wait=0)
    assert again.message.payload == {"n": 1}
    assert again.attempt == 1  # release does not count an attempt
    dead = await backend.queue.get_dead_letter(SVC, third.entry_id)
    assert dead is not None
    assert (dead.reason, dead.error) == ("bad_input", "ValueError: no")
    assert metrics.total(DELIVERIES_ACKED, queue="svc:1") == 1
    assert metrics.total(DELIVERIES_RELEASED, queue="svc:1") == 1
    assert metrics.total(DELIVERIES_DEAD_LETTERED, queue="svc:1", reason="bad_input") == 1
    assert metrics.total(DELIVERIES_RESERVED, queue="svc:1") == 4


async def test_nack_follows_the_retry_policy() -> None:
    async with connect("memory://?clock=manual") as backend:
        assert backend.clock is not None
        metrics = WatchedMetrics()
        policy = RetryPolicy(max_attempts=3, base=2.0, jitter="none")
        coord = MessageCoordinator(backend, retry_policy=policy, metrics=metrics)
        await coord.send(SVC, {"x": 1})
        first = await take(coord, SVC, wait=0)
        assert await coord.nack(first, error="ValueError: x")
        assert not await coord.nack(first)
        assert await coord.reserve(SVC, visibility_timeout=5) == []
        await backend.clock.advance(2.0)  # base * factor**0
        second = await take(coord, SVC, wait=0)
        assert (second.attempt, second.last_error) == (2, "ValueError: x")
        assert await coord.nack(second, delay=0)  # an explicit delay wins
        third = await take(coord, SVC, wait=0)
        assert third.attempt == 3
        assert await coord.nack(third, error="boom")  # at max_attempts: dead-lettered
        dead = await backend.queue.dead_letters(SVC)
        assert [(d.reason, d.error) for d in dead.items] == [("max_attempts", "boom")]
        assert metrics.total(DELIVERIES_NACKED, queue="svc:1") == 2
        assert metrics.total(DELIVERIES_DEAD_LETTERED, reason="max_attempts") == 1


async def test_nack_respects_the_entrys_own_max_attempts(backend: Backend) -> None:
    coord = MessageCoordinator(backend, retry_policy=RetryPolicy(max_attempts=10, base=0))
    await coord.send(SVC, max_attempts=1)
    delivery = await take(coord, SVC, wait=0)
    assert await coord.nack(delivery, error="e")
    assert await backend.queue.dead_letter_count(SVC) == 1


async def test_nack_permanent_dead_letters_at_once(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(SVC)
    delivery = await take(coord, SVC, wait=0)
    assert await coord.nack(delivery, failure=FailureType.PERMANENT, error="bad")
    dead = await backend.queue.dead_letters(SVC)
    assert [(d.reason, d.error, d.attempts) for d in dead.items] == [("handler_error", "bad", 1)]


async def test_mixed_call_shapes_are_refused(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(SVC)
    delivery = await take(coord, SVC, wait=0)
    with pytest.raises(ValidationError, match="Delivery alone"):
        await coord.ack(delivery, "token")  # type: ignore[call-overload]  # refused at runtime
    with pytest.raises(ValidationError, match="token is needed"):
        await coord.ack(SVC)  # type: ignore[call-overload]  # refused at runtime


# -- middleware ---------------------------------------------------------------------------


class Recorder(PassThroughMiddleware):
    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log

    async def on_send(self, message: AgentMessage, call_next: SendNext) -> str:
        self.log.append(f"{self.name}>")
        headers = {**message.headers, self.name: "seen"}
        entry = await call_next(message.model_copy(update={"headers": headers}))
        self.log.append(f"<{self.name}")
        return entry


async def test_send_middleware_runs_in_onion_order(backend: Backend) -> None:
    log: list[str] = []
    outer, inner = Recorder("outer", log), Recorder("inner", log)
    assert isinstance(outer, Middleware)
    coord = MessageCoordinator(backend, middleware=[outer, inner])
    assert coord.middleware == (outer, inner)
    await coord.send(SVC, {"x": 1})
    assert log == ["outer>", "inner>", "<inner", "<outer"]
    delivery = await take(coord, SVC, wait=0)
    assert delivery.message.headers == {"outer": "seen", "inner": "seen"}


async def test_pass_through_middleware_changes_nothing(backend: Backend) -> None:
    coord = MessageCoordinator(backend, middleware=[PassThroughMiddleware()])
    await coord.send(SVC, {"x": 1})
    delivery = await take(coord, SVC, wait=0)
    assert delivery.message.payload == {"x": 1}
    assert delivery.message.headers == {}
