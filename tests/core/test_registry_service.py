"""The registry service (AgentRegistry) over the memory driver, under asyncio and trio."""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing

import anyio
import anyio.lowlevel
import pytest
from pydantic import JsonValue

from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.errors import (
    AgentConflictError,
    AgentNotFoundError,
    BackendUnavailableError,
    ValidationError,
)
from tta_agent_coordination.metrics import REGISTRY_EVENTS, RecordingMetrics
from tta_agent_coordination.models import (
    AgentId,
    AgentInfo,
    Capability,
    CapabilityQuery,
    Page,
    RegistryEvent,
    RegistryEventKind,
)
from tta_agent_coordination.protocols import RegistryStore
from tta_agent_coordination.registry import AgentRegistry, Registration

pytestmark = pytest.mark.anyio

ALPHA = AgentId("summariser", "alpha")
BETA = AgentId("critic", "beta")
SUMMARISE = Capability("summarise", "1.2", tags={"en"})


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[MemoryBackend]:
    async with MemoryBackend(clock=MemoryClock(manual=True, start=1_000.0)) as backend:
        yield backend


class FlakyStore:
    """A RegistryStore wrapper whose heartbeats, sweeps or deregisters fail on demand."""

    def __init__(self, inner: RegistryStore) -> None:
        self.inner = inner
        self.fail_heartbeats = 0
        self.fail_sweeps = 0
        self.fail_deregister = False
        self.heartbeats = 0
        self.sweeps = 0
        self.beat: anyio.Event | None = None
        self.wanted = 0

    def _tick(self) -> None:
        if self.beat is not None and self.heartbeats >= self.wanted:
            self.beat.set()

    async def beats(self, count: int) -> None:
        """Wait until ``count`` more heartbeat attempts have been made."""
        self.wanted = self.heartbeats + count
        beat = self.beat = anyio.Event()
        with anyio.fail_after(10):
            await beat.wait()

    async def register(
        self,
        agent_id: AgentId,
        *,
        capabilities: Sequence[Capability] = (),
        metadata: Mapping[str, JsonValue] | None = None,
        ttl: float = 30.0,
        load: float = 0.0,
        available: bool = True,
        replace: bool = False,
    ) -> str:
        return await self.inner.register(
            agent_id,
            capabilities=capabilities,
            metadata=metadata,
            ttl=ttl,
            load=load,
            available=available,
            replace=replace,
        )

    async def heartbeat(
        self,
        agent_id: AgentId,
        token: str,
        *,
        load: float | None = None,
        available: bool | None = None,
    ) -> AgentInfo:
        self.heartbeats += 1
        self._tick()
        if self.fail_heartbeats:
            self.fail_heartbeats -= 1
            raise BackendUnavailableError("connection lost")
        return await self.inner.heartbeat(agent_id, token, load=load, available=available)

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        if self.fail_deregister:
            raise BackendUnavailableError("connection lost")
        return await self.inner.deregister(agent_id, token)

    async def get(self, agent_id: AgentId) -> AgentInfo | None:
        return await self.inner.get(agent_id)

    async def list(
        self, *, type: str | None = None, capability: str | None = None
    ) -> list[AgentInfo]:
        return await self.inner.list(type=type, capability=capability)

    async def discover(
        self, query: CapabilityQuery, *, limit: int | None = None
    ) -> builtins.list[AgentInfo]:
        return await self.inner.discover(query, limit=limit)

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        return await self.inner.read_events(after=after, limit=limit, wait=wait)

    async def sweep(self) -> int:
        self.sweeps += 1
        if self.fail_sweeps:
            self.fail_sweeps -= 1
            raise BackendUnavailableError("connection lost")
        return await self.inner.sweep()


@pytest.fixture
def flaky(backend: MemoryBackend) -> FlakyStore:
    return FlakyStore(backend.registry)


async def test_passthroughs(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    assert registry.store is backend.registry
    token = await registry.register(ALPHA, capabilities=[SUMMARISE], load=0.5)
    await registry.register(BETA)
    info = await registry.heartbeat(ALPHA, token, load=0.25)
    assert info.load == 0.25
    assert await registry.get(ALPHA) == await backend.registry.get(ALPHA)
    assert [i.agent_id for i in await registry.list()] == [BETA, ALPHA]
    assert [i.agent_id for i in await registry.list(type="summariser")] == [ALPHA]
    assert [i.agent_id for i in await registry.list(capability="summarise")] == [ALPHA]
    found = await registry.discover(CapabilityQuery("summarise", ">=1"), limit=1)
    assert [i.agent_id for i in found] == [ALPHA]
    page = await registry.read_events(after="0", limit=10)
    assert [e.kind for e in page.items] == [
        RegistryEventKind.REGISTERED,
        RegistryEventKind.REGISTERED,
        RegistryEventKind.UPDATED,
    ]
    await backend.clock.advance(31)
    assert await registry.sweep() == 0  # the advance already swept both
    assert await registry.deregister(ALPHA, token) is True


async def test_events_iterate_resume_and_count(backend: MemoryBackend) -> None:
    metrics = RecordingMetrics()
    registry = AgentRegistry(backend, metrics=metrics)
    start = (await registry.read_events()).next_cursor
    token = await registry.register(ALPHA, ttl=10)
    await registry.register(BETA, ttl=100)
    await registry.heartbeat(ALPHA, token, load=1.0)
    seen: list[RegistryEvent] = []
    with anyio.fail_after(10):
        async with aclosing(registry.events(after=start, limit=1, wait=5)) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 2:
                    break
        await backend.clock.advance(11)
        async with aclosing(registry.events(after=seen[-1].cursor, wait=5)) as events:
            async for event in events:
                seen.append(event)
                if len(seen) == 4:
                    break
    assert [(e.kind, e.agent_id) for e in seen] == [
        (RegistryEventKind.REGISTERED, ALPHA),
        (RegistryEventKind.REGISTERED, BETA),
        (RegistryEventKind.UPDATED, ALPHA),
        (RegistryEventKind.EXPIRED, ALPHA),
    ]
    assert metrics.total(REGISTRY_EVENTS) == 4
    assert metrics.total(REGISTRY_EVENTS, kind="registered") == 2
    assert metrics.total(REGISTRY_EVENTS, agent_type="summariser") == 3
    assert metrics.total(REGISTRY_EVENTS, kind="expired", agent_type="summariser") == 1


async def test_events_from_now_wait_for_new_ones(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    await registry.register(BETA)
    got: list[RegistryEvent] = []

    async def watch() -> None:
        async with aclosing(registry.events()) as events:
            async for event in events:
                got.append(event)
                return

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for _ in range(5):
                await anyio.lowlevel.checkpoint()
            await registry.register(ALPHA)
    assert [(e.kind, e.agent_id) for e in got] == [(RegistryEventKind.REGISTERED, ALPHA)]


async def test_events_validate_wait(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    with pytest.raises(ValidationError):
        async with aclosing(registry.events(wait=0)) as events:
            await anext(events)


async def test_registered_registers_heartbeats_and_deregisters(
    backend: MemoryBackend, flaky: FlakyStore
) -> None:
    registry = AgentRegistry(flaky)
    async with registry.registered(
        ALPHA, capabilities=[SUMMARISE], metadata={"zone": "eu"}, ttl=10, heartbeat_interval=0.01
    ) as me:
        assert isinstance(me, Registration)
        assert me.agent_id == ALPHA
        assert me.interval == 0.01
        assert (me.load, me.available, me.lost) == (0.0, True, None)
        info = await backend.registry.get(ALPHA)
        assert info is not None
        assert info.metadata == {"zone": "eu"}
        await flaky.beats(3)
        assert flaky.sweeps >= 2
        await me.set_load(0.4)
        assert me.load == 0.4
        found = await registry.discover(CapabilityQuery("summarise"))
        assert [(i.agent_id, i.load) for i in found] == [(ALPHA, 0.4)]
        await me.set_available(False)
        assert me.available is False
        assert await registry.discover(CapabilityQuery("summarise")) == []
        await flaky.beats(2)
        live = await backend.registry.get(ALPHA)
        assert live is not None
        assert (live.load, live.available) == (0.4, False)
        with pytest.raises(AgentConflictError):
            await registry.register(ALPHA)
    assert await backend.registry.get(ALPHA) is None
    kinds = [e.kind for e in (await backend.registry.read_events(after="0")).items]
    assert kinds == [
        RegistryEventKind.REGISTERED,
        RegistryEventKind.UPDATED,
        RegistryEventKind.UPDATED,
        RegistryEventKind.DEREGISTERED,
    ]


async def test_the_default_interval_is_a_third_of_the_ttl(backend: MemoryBackend) -> None:
    async with AgentRegistry(backend).registered(ALPHA, ttl=30) as me:
        assert me.interval == 10


async def test_heartbeats_survive_transient_errors(
    backend: MemoryBackend, flaky: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tta_agent_coordination.registry")
    registry = AgentRegistry(flaky)
    async with registry.registered(ALPHA, ttl=10, heartbeat_interval=0.01):
        flaky.fail_heartbeats = 2
        flaky.fail_sweeps = 1
        await flaky.beats(5)
        assert flaky.fail_heartbeats == 0
        assert flaky.fail_sweeps == 0
        # the clock moves past the ttl: the next heartbeat re-registers the agent
        await backend.clock.advance(11)
        await flaky.beats(2)
        assert await backend.registry.get(ALPHA) is not None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("heartbeat of summariser:alpha failed" in m for m in messages) == 2
    assert sum("sweep failed" in m for m in messages) == 1
    kinds = [e.kind for e in (await backend.registry.read_events(after="0")).items]
    assert kinds == [
        RegistryEventKind.REGISTERED,
        RegistryEventKind.EXPIRED,
        RegistryEventKind.REGISTERED,
        RegistryEventKind.DEREGISTERED,
    ]


async def test_a_replaced_session_stops_heartbeats(
    backend: MemoryBackend, flaky: FlakyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="tta_agent_coordination.registry")
    registry = AgentRegistry(flaky)
    async with registry.registered(ALPHA, ttl=10, heartbeat_interval=0.01) as me:
        await backend.registry.register(ALPHA, replace=True)
        await flaky.beats(1)
        with anyio.fail_after(10):
            while me.lost is None:
                await anyio.lowlevel.checkpoint()
        assert isinstance(me.lost, AgentConflictError)
        with pytest.raises(AgentConflictError):
            await me.set_load(0.5)
    assert await backend.registry.get(ALPHA) is not None  # the new session is untouched
    assert any("lost" in r.getMessage() for r in caplog.records)


async def test_a_vanished_session_is_lost_on_the_next_heartbeat(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    async with registry.registered(ALPHA, ttl=10, heartbeat_interval=60) as me:
        assert await registry.deregister(ALPHA, me.token) is True
        with pytest.raises(AgentNotFoundError):
            await me.set_load(0.5)
        assert isinstance(me.lost, AgentNotFoundError)


async def test_an_error_in_the_block_propagates_unwrapped_and_deregisters(
    backend: MemoryBackend,
) -> None:
    registry = AgentRegistry(backend)
    with pytest.raises(KeyError, match="boom"):
        async with registry.registered(ALPHA, heartbeat_interval=60):
            raise KeyError("boom")
    assert await backend.registry.get(ALPHA) is None


async def test_cancellation_deregisters(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    entered = anyio.Event()

    async def agent() -> None:
        async with registry.registered(ALPHA, heartbeat_interval=60):
            entered.set()
            await anyio.sleep_forever()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(agent)
            await entered.wait()
            assert await backend.registry.get(ALPHA) is not None
            tg.cancel_scope.cancel()
    assert await backend.registry.get(ALPHA) is None
    kinds = [e.kind for e in (await backend.registry.read_events(after="0")).items]
    assert kinds[-1] is RegistryEventKind.DEREGISTERED


async def test_a_failed_deregister_is_logged_not_raised(
    flaky: FlakyStore, backend: MemoryBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tta_agent_coordination.registry")
    async with AgentRegistry(flaky).registered(ALPHA, heartbeat_interval=60):
        flaky.fail_deregister = True
    assert any("deregistering summariser:alpha failed" in r.getMessage() for r in caplog.records)
    assert await backend.registry.get(ALPHA) is not None


async def test_a_conflicting_registration_raises_before_the_block(backend: MemoryBackend) -> None:
    registry = AgentRegistry(backend)
    token = await registry.register(ALPHA)
    with pytest.raises(AgentConflictError):
        async with registry.registered(ALPHA):
            pytest.fail("the block must not run")  # pragma: no cover
    assert await registry.deregister(ALPHA, token) is True


@pytest.mark.parametrize("interval", [0.0, -1.0, float("nan")])
async def test_the_interval_is_validated(backend: MemoryBackend, interval: float) -> None:
    with pytest.raises(ValidationError):
        async with AgentRegistry(backend).registered(ALPHA, heartbeat_interval=interval):
            pytest.fail("the block must not run")  # pragma: no cover
    assert await backend.registry.get(ALPHA) is None
