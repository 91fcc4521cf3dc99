from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import tta_agent_coordination as tta
from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    BackendOptions,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    CircuitOpenError,
    MessageCoordinator,
    RedisMessageCoordinator,
)
from tta_agent_coordination.backends.memory import MemoryBackend
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.plugins import plugin_registry

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeRedisClient:
    """Stands in for a redis-py client: the driver plugin wraps it into a backend."""

    def __init__(self) -> None:
        self.backends: list[MemoryBackend] = []


class FakeDriverPlugin:
    @hookimpl
    def tta_backend_from_client(self, client: Any, namespace: str) -> Any:
        if isinstance(client, FakeRedisClient):
            backend = MemoryBackend(BackendOptions(namespace=namespace), name=f"fake-{namespace}")
            client.backends.append(backend)
            return backend
        return None


@pytest.fixture
def fake_driver() -> Iterator[None]:
    plugin_registry().register(FakeDriverPlugin(), name="fake-redis-driver")
    yield
    plugin_registry().unregister("fake-redis-driver")


async def test_the_contracts_example_works_as_written(fake_driver: None) -> None:
    redis_client = FakeRedisClient()
    sender = AgentId(type="input_processor", instance="worker-1")
    recipient = AgentId(type="world_builder", instance="worker-2")
    message = AgentMessage(sender=sender, recipient=recipient, payload={"text": "a cave"})
    coordinator = RedisMessageCoordinator(redis_client)
    result = await coordinator.send_message(sender, recipient, message)
    assert result.delivered
    assert isinstance(coordinator, MessageCoordinator)
    assert coordinator.backend.options.namespace == "ao"
    received = await coordinator.receive(recipient, visibility_timeout=5)
    assert received is not None
    assert received.message.payload == {"text": "a cave"}
    assert await coordinator.ack(recipient, received.token)
    await coordinator.aclose()
    assert redis_client.backends[0]._closed


async def test_a_url_or_a_backend_works_too() -> None:
    by_url = RedisMessageCoordinator("memory://", key_prefix="story")
    assert by_url.backend.options.namespace == "story"
    await by_url.aclose()
    backend = MemoryBackend()
    given = RedisMessageCoordinator(backend)
    await given.aclose()
    assert not backend._closed  # a backend it was given stays open


async def test_the_breaker_takes_a_client_and_the_original_config(fake_driver: None) -> None:
    client = FakeRedisClient()
    config = CircuitBreakerConfig(
        failure_threshold=1, timeout_seconds=60, half_open_max_calls=3, success_threshold=2
    )
    breaker = CircuitBreaker(client, "llm", config)

    async def boom() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await breaker.call(boom)
    with pytest.raises(CircuitBreakerOpenError) as info:
        await breaker.call(boom)
    assert isinstance(info.value, CircuitOpenError)
    assert info.value.retry_after > 0


def test_the_original_names_are_importable_from_the_root() -> None:
    for name in (
        "RedisMessageCoordinator",
        "RedisAgentRegistry",
        "CircuitBreaker",
        "CircuitBreakerConfig",
        "CircuitBreakerOpenError",
        "AgentId",
        "AgentMessage",
        "MessageType",
        "MessagePriority",
        "MessageResult",
        "QueueMessage",
        "ReceivedMessage",
        "FailureType",
    ):
        assert name in tta.__all__
        assert getattr(tta, name) is not None
