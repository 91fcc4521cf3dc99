"""The registry contract against the memory driver, plus what only the memory driver has."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from tta_agent_coordination.backends._memory_registry import MemoryRegistryStore
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.errors import EventsGapError, ValidationError
from tta_agent_coordination.models import AgentId, Capability, CapabilityQuery, RegistryEventKind
from tta_agent_coordination.protocols import RegistryStore
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination.testing.registry_contract import RegistryContract

ALPHA = AgentId("worker", "alpha")


class TestMemoryRegistry(RegistryContract):
    url = "memory://"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def manual() -> AsyncIterator[MemoryBackend]:
    async with MemoryBackend(clock=MemoryClock(manual=True, start=1_000.0)) as backend:
        yield backend


@pytest.fixture
async def flowing() -> AsyncIterator[MemoryBackend]:
    async with MemoryBackend() as backend:
        yield backend


def test_the_store_implements_the_protocol() -> None:
    store = MemoryRegistryStore(MemoryClock(), BackendOptions())
    assert isinstance(store, RegistryStore)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "kwargs",
    [
        {"ttl": "5"},
        {"ttl": True},
        {"load": None},
        {"metadata": ["not", "a", "mapping"]},
        {"metadata": {1: "int key"}},
        {"capabilities": ["summarise"]},
    ],
)
async def test_register_type_guards(manual: MemoryBackend, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        await manual.registry.register(ALPHA, **kwargs)


@pytest.mark.anyio
async def test_guards_on_ids_queries_cursors_and_waits(manual: MemoryBackend) -> None:
    store = manual.registry
    with pytest.raises(ValidationError):
        await store.get(cast("AgentId", "worker:alpha"))
    with pytest.raises(ValidationError):
        await store.discover(cast("Any", "summarise"))
    with pytest.raises(ValidationError):
        await store.discover(CapabilityQuery("summarise"), limit=cast("int", True))
    with pytest.raises(ValidationError):
        await store.read_events(after=cast("str", 5))
    with pytest.raises(ValidationError):
        await store.read_events(wait=-1)
    with pytest.raises(ValidationError):
        await store.read_events(limit=cast("int", 2.5))


@pytest.mark.anyio
async def test_a_cursor_ahead_of_the_log_is_invalid(manual: MemoryBackend) -> None:
    store = manual.registry
    await store.register(ALPHA)
    head = (await store.read_events()).next_cursor
    assert head is not None
    with pytest.raises(ValidationError):
        await store.read_events(after=str(int(head) + 1))
    assert (await store.read_events(after="1")).items[0].agent_id == ALPHA


@pytest.mark.anyio
async def test_an_empty_log_never_hands_out_cursor_zero(manual: MemoryBackend) -> None:
    page = await manual.registry.read_events()
    assert page.next_cursor == "1"
    assert (await manual.registry.read_events(after="0")).next_cursor == "1"


@pytest.mark.anyio
async def test_clear_keeps_the_sequence_so_old_cursors_gap(manual: MemoryBackend) -> None:
    store = manual.registry
    await store.register(ALPHA)
    page = await store.read_events(after="0")
    await manual.drop_namespace()
    assert await store.get(ALPHA) is None
    assert await store.list() == []
    with pytest.raises(EventsGapError):
        await store.read_events(after="1")
    assert (await store.read_events(after=page.next_cursor)).items == []
    await store.register(ALPHA)
    events = (await store.read_events(after=page.next_cursor)).items
    assert [e.kind for e in events] == [RegistryEventKind.REGISTERED]


@pytest.mark.anyio
async def test_deregistering_an_expired_session_emits_nothing(manual: MemoryBackend) -> None:
    store = manual.registry
    token = await store.register(ALPHA, ttl=10)
    await manual.clock.advance(10)
    cursor = (await store.read_events(after="0")).next_cursor
    assert await store.deregister(ALPHA, token) is True
    assert (await store.read_events(after=cursor)).items == []
    assert [e.kind for e in (await store.read_events(after="0")).items] == [
        RegistryEventKind.REGISTERED,
        RegistryEventKind.EXPIRED,
    ]


@pytest.mark.anyio
async def test_liveness_ends_exactly_at_the_ttl(manual: MemoryBackend) -> None:
    store = manual.registry
    token = await store.register(ALPHA, ttl=10)
    await manual.clock.advance(9.5)
    info = await store.heartbeat(ALPHA, token)
    assert info.expires_at.timestamp() == pytest.approx(1_019.5)
    await manual.clock.advance(9.999)
    assert await store.get(ALPHA) is not None
    await manual.clock.advance(0.001)
    assert await store.get(ALPHA) is None


@pytest.mark.anyio
async def test_the_expiry_heap_stays_compact(manual: MemoryBackend) -> None:
    store = manual.registry
    token = await store.register(ALPHA, ttl=1_000)
    for _ in range(200):
        await store.heartbeat(ALPHA, token)
    assert len(store._heap) <= 4 * len(store._records) + 65
    await manual.clock.advance(1_001)
    assert await store.sweep() == 0  # the clock advance already swept it
    assert await store.get(ALPHA) is None


@pytest.mark.anyio
async def test_replace_moves_the_capability_index(manual: MemoryBackend) -> None:
    store = manual.registry
    await store.register(ALPHA, capabilities=[Capability("a"), Capability("a", "2")])
    await store.register(ALPHA, capabilities=[Capability("b")], replace=True)
    assert await store.list(capability="a") == []
    assert [i.agent_id for i in await store.list(capability="b")] == [ALPHA]
    assert {name: sorted(ids) for name, ids in store._by_capability.items()} == {"b": [ALPHA]}


@pytest.mark.anyio
async def test_a_clock_advance_wakes_a_waiting_reader(manual: MemoryBackend) -> None:
    store = manual.registry
    await store.register(ALPHA, ttl=10)
    cursor = (await store.read_events()).next_cursor
    kinds: list[RegistryEventKind] = []

    async def reader() -> None:
        kinds.extend(e.kind for e in (await store.read_events(after=cursor, wait=60)).items)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            await anyio.lowlevel.checkpoint()
            await manual.clock.advance(5)  # wakes the reader: nothing yet, it waits again
            await anyio.lowlevel.checkpoint()
            await manual.clock.advance(5)
    assert kinds == [RegistryEventKind.EXPIRED]


@pytest.mark.anyio
async def test_a_flowing_clock_wakes_a_reader_at_the_next_expiry(flowing: MemoryBackend) -> None:
    store = flowing.registry
    await store.register(ALPHA, ttl=0.05)
    cursor = (await store.read_events()).next_cursor
    with anyio.fail_after(5):
        page = await store.read_events(after=cursor, wait=30)
    assert [e.kind for e in page.items] == [RegistryEventKind.EXPIRED]


@pytest.mark.anyio
async def test_two_readers_share_one_wakeup(manual: MemoryBackend) -> None:
    store = manual.registry
    cursor = (await store.read_events()).next_cursor
    seen: list[int] = []

    async def reader() -> None:
        seen.append(len((await store.read_events(after=cursor, wait=60)).items))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            tg.start_soon(reader)
            await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            await store.register(ALPHA)
    assert seen == [1, 1]


@pytest.mark.anyio
async def test_a_waiting_reader_left_behind_gets_a_gap() -> None:
    options = BackendOptions(events_max_length=2)
    async with MemoryBackend(options, clock=MemoryClock(manual=True)) as backend:
        store = backend.registry
        cursor = (await store.read_events()).next_cursor
        errors: list[BaseException] = []

        async def reader() -> None:
            try:
                await store.read_events(after=cursor, wait=60)
            except EventsGapError as exc:
                errors.append(exc)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.lowlevel.checkpoint()
                for n in range(3):
                    await store.register(AgentId("w", f"i{n}"))
        assert len(errors) == 1
