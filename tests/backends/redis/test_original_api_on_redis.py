"""The original API on Redis: constructors that take a redis-py client, as the original did."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from redis_helpers import REDIS_URL
from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerOpenError,
    FailureType,
    RedisAgentRegistry,
    RedisMessageCoordinator,
)
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination_redis.backend import RedisBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the original API is asyncio-only


@pytest.fixture
def prefix() -> str:
    return f"ao{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def redis_client(prefix: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        cleanup = RedisBackend(client, BackendOptions(namespace=prefix))
        await cleanup.drop_namespace()
        await client.aclose()


async def test_the_contracts_example_on_a_redis_client(redis_client: Redis, prefix: str) -> None:
    sender = AgentId(type="input_processor", instance="worker-1")
    recipient = AgentId(type="world_builder", instance="worker-2")
    message = AgentMessage(sender=sender, recipient=recipient, payload={"text": "a cave"})
    coordinator = RedisMessageCoordinator(redis_client, key_prefix=prefix)
    result = await coordinator.send_message(sender, recipient, message)
    assert result.delivered
    # A second process, with its own client, receives it.
    other_client = Redis.from_url(REDIS_URL)
    try:
        other = RedisMessageCoordinator(other_client, key_prefix=prefix)
        received = await other.receive(recipient, visibility_timeout=5)
        assert received is not None
        assert received.message.payload == {"text": "a cave"}
        assert await other.nack(recipient, received.token, FailureType.PERMANENT, "bad") is True
        dead = await other.backend.queue.dead_letters(recipient)
        assert [d.entry_id for d in dead.items] == [result.entry_id]
        await other.aclose()
    finally:
        await other_client.aclose()
    await coordinator.aclose()
    assert await redis_client.ping()  # a client it was given is not closed


async def test_keys_live_beside_the_originals_without_colliding(
    redis_client: Redis, prefix: str
) -> None:
    original_key = f"{prefix}:queue:world_builder:worker-2"
    await redis_client.rpush(original_key, b'{"legacy": true}')
    try:
        coordinator = RedisMessageCoordinator(redis_client, key_prefix=prefix)
        recipient = AgentId("world_builder", "worker-2")
        message = AgentMessage(sender=AgentId("input_processor"), recipient=recipient)
        assert (await coordinator.send_message(message.sender, recipient, message)).delivered
        ours: list[bytes] = [
            key
            async for key in redis_client.scan_iter(match=f"{prefix}:tta1:*")  # pyright: ignore[reportUnknownVariableType]  # redis-py's untyped iterator
        ]
        assert ours, "our keys carry the layout version"
        assert await redis_client.lrange(original_key, 0, -1) == [b'{"legacy": true}']
    finally:
        await redis_client.delete(original_key)


async def test_the_original_registry_on_a_redis_client(redis_client: Redis, prefix: str) -> None:
    registry = RedisAgentRegistry(redis_client, key_prefix=prefix, heartbeat_ttl_s=30)
    await registry.register(AgentId("narrative_generator", "ng-1"))
    listed = await registry.list_registered()
    assert [(e["agent_id"], e["alive"]) for e in listed] == [
        ({"type": "narrative_generator", "instance": "ng-1"}, True)
    ]
    await registry.stop_heartbeats()
    assert await registry.deregister(AgentId("narrative_generator", "ng-1"))


async def test_a_breaker_on_a_redis_client_is_shared_by_processes(
    redis_client: Redis, prefix: str
) -> None:
    config = CircuitBreakerConfig(failure_threshold=2, timeout_seconds=60)
    first = CircuitBreaker(redis_client, "llm", config, key_prefix=prefix)
    other_client = Redis.from_url(REDIS_URL)
    second = CircuitBreaker(other_client, "llm", config, key_prefix=prefix)

    async def boom() -> None:
        raise RuntimeError("the model is down")

    try:
        for _ in range(2):
            with pytest.raises(RuntimeError):
                await first.call(boom)
        with pytest.raises(CircuitBreakerOpenError) as refused:
            await second.call(boom)  # the other process sees it open
        assert refused.value.retry_after > 50
    finally:
        await second.aclose()
        await first.aclose()
        await other_client.aclose()
