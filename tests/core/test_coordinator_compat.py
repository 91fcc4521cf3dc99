"""The original API's methods on MessageCoordinator, with the original's defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from coordinator_helpers import WatchedMetrics
from pydantic import JsonValue

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    Backend,
    FailureType,
    MessagePriority,
    MessageResult,
    MessageType,
    ValidationError,
    connect,
)
from tta_agent_coordination._compat_models import (
    CompatConfig,
    MessageSubscription,
    QueueMessage,
    ReceivedMessage,
)
from tta_agent_coordination.coordinator import MessageCoordinator
from tta_agent_coordination.metrics import DELIVERIES_DEAD_LETTERED, MESSAGES_SENT

pytestmark = pytest.mark.anyio

SENDER = AgentId(type="input_processor", instance="worker-1")
RECIPIENT = AgentId(type="world_builder", instance="worker-2")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://?clock=manual") as b:
        yield b


def message(**payload: JsonValue) -> AgentMessage:
    return AgentMessage(
        sender=SENDER,
        recipient=RECIPIENT,
        message_type=MessageType.REQUEST,
        payload=dict(payload),
        priority=MessagePriority.NORMAL,
    )


async def advance(backend: Backend, seconds: float) -> None:
    assert backend.clock is not None
    await backend.clock.advance(seconds)


async def test_the_contract_example_works_without_async_with(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    msg = message(hello="world")
    result = await coordinator.send_message(SENDER, RECIPIENT, msg)
    assert isinstance(result, MessageResult)
    assert result.delivered
    assert result.error is None
    assert result.message_id == msg.message_id
    assert result.entry_id is not None


async def test_receive_and_ack(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    msg = message(n=1)
    await coordinator.send_message(SENDER, RECIPIENT, msg)
    received = await coordinator.receive(RECIPIENT)
    assert isinstance(received, ReceivedMessage)
    assert received.message == msg
    assert received.delivery_attempts == 0
    assert isinstance(received.queue_message, QueueMessage)
    assert received.queue_message.priority == 5
    assert received.queue_message.enqueued_at is not None
    assert received.queue_message.last_error is None
    assert received.entry_id is not None
    assert received.visibility_deadline is not None
    assert await coordinator.receive(RECIPIENT) is None  # reserved: invisible to others
    assert await coordinator.ack(RECIPIENT, received.token)
    assert await coordinator.ack(RECIPIENT, received.token)  # a repeated ack stays True
    assert await coordinator.receive(RECIPIENT) is None


async def test_default_visibility_timeout_is_five_seconds(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    first = await coordinator.receive(RECIPIENT)
    assert first is not None
    await advance(backend, 4.9)
    assert await coordinator.receive(RECIPIENT) is None
    await advance(backend, 0.2)
    again = await coordinator.receive(RECIPIENT)
    assert again is not None
    assert again.delivery_attempts == 1  # the expired reservation counted
    assert not await coordinator.ack(RECIPIENT, first.token)  # stale token


async def test_sender_and_recipient_come_from_the_arguments(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    other = AgentId("narrative_generator")
    msg = message()
    result = await coordinator.send_message(SENDER, other, msg)
    assert result.delivered
    received = await coordinator.receive(other)  # the type's shared ("default") queue
    assert received is not None
    assert received.message.recipient == other
    assert received.message.message_id == msg.message_id
    assert msg.recipient == RECIPIENT  # the caller's object is unchanged


async def test_nack_transient_backs_off_without_jitter_then_dead_letters(
    backend: Backend,
) -> None:
    metrics = WatchedMetrics()
    coordinator = MessageCoordinator(backend, metrics=metrics)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    # retry_attempts=3: delivered 4 times, backoff 1, 2, 4 s between them.
    for failed, backoff in enumerate([1.0, 2.0, 4.0], start=1):
        received = await coordinator.receive(RECIPIENT)
        assert received is not None
        assert received.delivery_attempts == failed - 1
        kind = FailureType.TIMEOUT if failed == 2 else FailureType.TRANSIENT
        assert await coordinator.nack(RECIPIENT, received.token, kind, f"error {failed}")
        await advance(backend, backoff - 0.01)
        assert await coordinator.receive(RECIPIENT) is None
        await advance(backend, 0.01)
    last = await coordinator.receive(RECIPIENT)
    assert last is not None
    assert last.delivery_attempts == 3
    assert last.queue_message.last_error == "error 3"
    assert await coordinator.nack(RECIPIENT, last.token, error="error 4")
    dead = await backend.queue.dead_letters(RECIPIENT)
    assert [(d.reason, d.error, d.attempts) for d in dead.items] == [("max_attempts", "error 4", 4)]
    assert metrics.total(DELIVERIES_DEAD_LETTERED, reason="max_attempts") == 1
    assert not await coordinator.nack(RECIPIENT, last.token)  # settled: stale


async def test_nack_permanent_dead_letters_at_once(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    received = await coordinator.receive(RECIPIENT)
    assert received is not None
    assert await coordinator.nack(RECIPIENT, received.token, FailureType.PERMANENT, "bad input")
    dead = await backend.queue.dead_letters(RECIPIENT)
    assert [(d.reason, d.error) for d in dead.items] == [("handler_error", "bad input")]


async def test_configure_changes_backoff_and_retries(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    assert coordinator.compat_config == CompatConfig()
    assert (
        coordinator.compat_config.queue_size,
        coordinator.compat_config.retry_attempts,
        coordinator.compat_config.backoff_base,
        coordinator.compat_config.backoff_factor,
        coordinator.compat_config.backoff_max,
    ) == (10_000, 3, 1.0, 2.0, 30.0)
    await coordinator.configure(retry_attempts=1, backoff_base=10.0, backoff_max=15.0)
    await coordinator.configure(backoff_factor=3.0)  # None keeps the others
    config = coordinator.compat_config
    assert (config.retry_attempts, config.backoff_base, config.backoff_factor) == (1, 10.0, 3.0)
    assert config.backoff(1) == 10.0
    assert config.backoff(2) == 15.0  # capped
    await coordinator.send_message(SENDER, RECIPIENT, message())
    received = await coordinator.receive(RECIPIENT)
    assert received is not None
    assert await coordinator.nack(RECIPIENT, received.token)
    await advance(backend, 10.0)
    again = await coordinator.receive(RECIPIENT)
    assert again is not None
    assert await coordinator.nack(RECIPIENT, again.token)  # delivered retry_attempts+1 times
    assert await backend.queue.dead_letter_count(RECIPIENT) == 1


async def test_configure_rejects_bad_values(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    with pytest.raises(ValidationError):
        await coordinator.configure(queue_size=0)
    with pytest.raises(ValidationError):
        await coordinator.configure(backoff_factor=0)
    assert coordinator.compat_config == CompatConfig()


async def test_compat_backoff_never_overflows() -> None:
    assert CompatConfig(backoff_factor=10.0).backoff(10_000) == 30.0  # OverflowError
    assert CompatConfig(backoff_base=1e300, backoff_factor=1e10).backoff(3) == 30.0  # inf


async def test_a_full_queue_is_a_result_not_an_exception(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.configure(queue_size=1)
    assert (await coordinator.send_message(SENDER, RECIPIENT, message())).delivered
    result = await coordinator.send_message(SENDER, RECIPIENT, message())
    assert not result.delivered
    assert result.error is not None
    assert "full" in result.error
    assert result.entry_id is None


async def test_the_backends_cap_is_a_result_too() -> None:
    async with connect("memory://", max_queue_length=1) as backend:
        coordinator = MessageCoordinator(backend)
        assert (await coordinator.send_message(SENDER, RECIPIENT, message())).delivered
        result = await coordinator.send_message(SENDER, RECIPIENT, message())
        assert not result.delivered
        assert result.error is not None
        assert "full" in result.error


async def test_an_oversized_message_is_a_result() -> None:
    async with connect("memory://", max_message_bytes=256) as backend:
        coordinator = MessageCoordinator(backend)
        result = await coordinator.send_message(SENDER, RECIPIENT, message(blob="x" * 1000))
        assert not result.delivered
        assert result.error is not None


async def test_broadcast_message_to_listed_recipients(backend: Backend) -> None:
    metrics = WatchedMetrics()
    coordinator = MessageCoordinator(backend, metrics=metrics)
    recipients = [AgentId("world_builder", f"w{n}") for n in range(3)]
    results = await coordinator.broadcast_message(SENDER, message(), recipients)
    assert [r.delivered for r in results] == [True, True, True]
    for recipient in recipients:
        received = await coordinator.receive(recipient)
        assert received is not None
        assert received.message.recipient == recipient
    assert metrics.total(MESSAGES_SENT) == 3


async def test_broadcast_message_without_recipients_uses_the_registry(backend: Backend) -> None:
    for name in ("w1", "w2"):
        await backend.registry.register(AgentId("world_builder", name))
    coordinator = MessageCoordinator(backend)
    results = await coordinator.broadcast_message(SENDER, message())
    assert len(results) == 2
    assert all(r.delivered for r in results)
    assert await coordinator.receive(AgentId("world_builder", "w1")) is not None
    assert await coordinator.receive(RECIPIENT) is None


async def test_subscribe_records_and_returns_a_subscription(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    subscription = coordinator.subscribe_to_messages(
        RECIPIENT, [MessageType.REQUEST, MessageType.EVENT]
    )
    assert isinstance(subscription, MessageSubscription)
    assert subscription.agent_id == RECIPIENT
    assert subscription.message_types == [MessageType.REQUEST, MessageType.EVENT]
    assert subscription.subscription_id.startswith("sub_")
    coordinator.subscribe_to_messages(RECIPIENT, ["custom"])
    assert coordinator.subscriptions(RECIPIENT) == {"request", "event", "custom"}
    assert coordinator.subscriptions(SENDER) == frozenset()


async def test_recover_pending_makes_expired_reservations_available(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    assert await coordinator.receive(RECIPIENT, visibility_timeout=1) is not None
    await advance(backend, 2)
    assert await coordinator.recover_pending(RECIPIENT) == 1
    assert await coordinator.recover_pending() == 0
    stats = await backend.queue.stats(RECIPIENT)
    assert (stats.ready, stats.reserved) == (1, 0)
    again = await coordinator.receive(RECIPIENT)
    assert again is not None
    assert again.delivery_attempts == 1


async def test_receive_can_wait(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    assert await coordinator.receive(RECIPIENT, 5, wait=0.01) is None


async def test_a_raw_receipt_works_as_a_token(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    delivery = (await coordinator.reserve(RECIPIENT, visibility_timeout=5))[0]
    assert await coordinator.nack(RECIPIENT, delivery.receipt)  # attempt unknown: n = 1
    await advance(backend, 1.0)
    again = (await coordinator.reserve(RECIPIENT, visibility_timeout=5))[0]
    assert again.attempt == 2
    assert await coordinator.ack(RECIPIENT, again.receipt)


async def test_received_message_view(backend: Backend) -> None:
    coordinator = MessageCoordinator(backend)
    await coordinator.send_message(SENDER, RECIPIENT, message())
    delivery = (await coordinator.reserve(RECIPIENT, visibility_timeout=7))[0]
    handle = f"{delivery.receipt}#1"
    view = ReceivedMessage.from_delivery(delivery, handle)
    assert view.token == handle
    assert view.message == delivery.message
    assert view.visibility_deadline == delivery.visible_at.isoformat()
    assert delivery.visible_at - delivery.enqueued_at == timedelta(seconds=7)
