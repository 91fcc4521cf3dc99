from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from tta_agent_coordination import (
    AgentId,
    BackendUnavailableError,
    Capability,
    CapabilityQuery,
    ValidationError,
    connect,
)
from tta_agent_coordination.backends.memory import MemoryBackend
from tta_agent_coordination.compat import RedisAgentRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the compat layer is asyncio-only, as the original was


@dataclass
class OriginalAgent:
    """The shape of the original code's agent objects."""

    agent_id: AgentId
    name: str = "agent"
    capabilities: Any = field(default_factory=list)
    status: Any = None


class Status:
    value = "running"


async def test_register_writes_without_being_awaited_and_settles_on_stop() -> None:
    backend = MemoryBackend()
    registry = RedisAgentRegistry(backend, heartbeat_ttl_s=30)
    agent = OriginalAgent(
        AgentId("world_builder", "w1"),
        name="builder",
        capabilities=[
            "describe",
            {"name": "summarise", "version": "1.3", "tags": ["en"]},
            Capability("plan"),
        ],
        status=Status(),
    )
    registry.register(agent)  # never awaited, as with the original
    await registry.stop_heartbeats()
    info = await registry.registry.get(agent.agent_id)
    assert info is not None
    assert info.metadata == {"name": "builder", "status": "running"}
    assert [c.name for c in info.capabilities] == ["describe", "summarise", "plan"]
    assert await registry.registry.discover(CapabilityQuery("summarise", ">=1.2,<2"))


async def test_awaiting_register_returns_the_session_and_list_registered() -> None:
    backend = MemoryBackend()
    registry = RedisAgentRegistry(backend, heartbeat_ttl_s=10)
    token = await registry.register(AgentId("input_processor", "w1"))
    assert isinstance(token, str)
    listed = await registry.list_registered()
    assert listed[0]["agent_id"] == {"type": "input_processor", "instance": "w1"}
    assert listed[0]["alive"] is True
    assert isinstance(listed[0]["last_heartbeat"], float)
    await backend.clock.advance(11)
    (gone,) = await registry.list_registered()
    assert gone["alive"] is False
    assert gone["last_heartbeat"] is None


async def test_heartbeats_keep_agents_alive_until_stopped() -> None:
    backend = MemoryBackend()
    registry = RedisAgentRegistry(backend, heartbeat_ttl_s=10, heartbeat_interval_s=0.01)
    agent_id = AgentId("narrative_generator", "n1")
    await registry.register(agent_id)
    first = await registry.registry.get(agent_id)
    assert first is not None
    beats = 0
    beaten = asyncio.Event()
    original = registry.heartbeat_once

    async def counted() -> None:
        nonlocal beats
        await original()
        beats += 1
        if beats == 2:
            beaten.set()

    registry.heartbeat_once = counted  # type: ignore[method-assign]
    await registry.start_heartbeats()
    registry.start_heartbeats()  # idempotent: still one background task
    await asyncio.wait_for(beaten.wait(), timeout=5)
    info = await registry.registry.get(agent_id)
    assert info is not None
    assert info.last_heartbeat > first.last_heartbeat
    background = registry._heartbeats
    assert background is not None
    await registry.stop_heartbeats()
    assert background.cancelled()
    await backend.clock.advance(11)
    assert await registry.registry.get(agent_id) is None


async def test_deregister() -> None:
    registry = RedisAgentRegistry(MemoryBackend())
    agent = OriginalAgent(AgentId("world_builder", "w2"))
    await registry.register(agent)
    assert await registry.deregister(agent) is True
    assert await registry.deregister(agent.agent_id) is False
    assert await registry.list_registered() == []


async def test_a_replaced_session_stops_being_heartbeated(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend()
    registry = RedisAgentRegistry(backend)
    agent_id = AgentId("world_builder", "w3")
    await registry.register(agent_id)
    await registry.registry.register(agent_id, replace=True)  # another process takes the id
    with caplog.at_level(logging.WARNING):
        await registry.heartbeat_once()
    assert "lost its registration" in caplog.text
    assert await registry.deregister(agent_id) is False


class FailingRegistryStore:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def heartbeat(self, *args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailableError("down")


async def test_backend_errors_in_heartbeats_are_logged_and_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = RedisAgentRegistry(MemoryBackend())
    agent_id = AgentId("world_builder", "w4")
    await registry.register(agent_id)
    registry.registry._store = FailingRegistryStore(registry.registry.store)  # pyright: ignore[reportAttributeAccessIssue]  # inject a failing store
    with caplog.at_level(logging.WARNING):
        await registry.heartbeat_once()
    assert "retrying next interval" in caplog.text
    assert await registry.deregister(agent_id) is True  # still ours


async def test_a_failed_registration_is_logged_on_stop(caplog: pytest.LogCaptureFixture) -> None:
    registry = RedisAgentRegistry(MemoryBackend())
    registry.register(AgentId("world_builder", "w5"))
    registry.registry._store = None  # type: ignore[assignment]  # the write fails
    with caplog.at_level(logging.WARNING):
        await registry.stop_heartbeats()
    assert "a registration failed" in caplog.text


async def test_a_url_store_is_made_and_closed_by_the_registry() -> None:
    registry = RedisAgentRegistry("memory://compat-reg", key_prefix="ao")
    assert registry.backend.options.namespace == "ao"
    await registry.register(AgentId("world_builder", "w6"))
    async with connect("memory://compat-reg?namespace=ao") as other:
        assert await other.registry.get(AgentId("world_builder", "w6")) is not None
    await registry.aclose()
    kept = MemoryBackend()
    await RedisAgentRegistry(kept).aclose()  # a backend it was given stays open


@pytest.mark.parametrize(
    "agent",
    [
        object(),
        OriginalAgent(AgentId("a"), capabilities="describe"),
        OriginalAgent(AgentId("a"), capabilities=[{"version": "1"}]),
        OriginalAgent(AgentId("a"), capabilities=[42]),
    ],
)
async def test_bad_agents_are_rejected_before_any_write(agent: object) -> None:
    registry = RedisAgentRegistry(MemoryBackend())
    with pytest.raises(ValidationError):
        registry.register(agent)
    assert await registry.list_registered() == []


async def test_capability_objects_and_capability_sets() -> None:
    @dataclass
    class CapabilityObject:
        name: str
        version: str = "2.0"

    registry = RedisAgentRegistry(MemoryBackend())
    agent = OriginalAgent(
        AgentId("world_builder", "w7"),
        capabilities={"capabilities": [CapabilityObject("plan")], "load_factor": 0.2},
        status=3,
    )
    await registry.register(agent)
    info = await registry.registry.get(agent.agent_id)
    assert info is not None
    assert info.capabilities == (Capability("plan", "2.0"),)
    assert info.metadata["status"] == 3


def test_bad_intervals() -> None:
    with pytest.raises(ValidationError):
        RedisAgentRegistry(MemoryBackend(), heartbeat_ttl_s=0)
    with pytest.raises(ValidationError):
        RedisAgentRegistry(MemoryBackend(), heartbeat_interval_s=-1)
