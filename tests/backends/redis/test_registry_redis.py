"""What the Redis registry store promises beyond the contract.

One round trip per operation; expiry detected exactly once by many racing clients; events
that resume across a reconnect; waits that block (never poll) and wake at the next expiry;
keys under the namespace, its hash tag and the layout version, and gone after a drop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
)
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, cast

import anyio
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from redis_helpers import REDIS_URL, command_calls
from tta_agent_coordination.errors import AgentConflictError, EventsGapError
from tta_agent_coordination.models import (
    AgentId,
    Capability,
    CapabilityQuery,
    RegistryEvent,
    RegistryEventKind,
)
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination_redis.backend import RedisBackend
from tta_agent_coordination_redis.keys import LAYOUT_VERSION

pytestmark = pytest.mark.anyio

EXPIRED = RegistryEventKind.EXPIRED
REGISTERED = RegistryEventKind.REGISTERED
DEREGISTERED = RegistryEventKind.DEREGISTERED
UPDATED = RegistryEventKind.UPDATED

SUMMARISE = Capability("summarise", "1.4", tags={"en"})


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.fixture(params=["standalone", "cluster"])
def server_url(request: pytest.FixtureRequest) -> str:
    """The shared redis-server, or the conftest's local 3-master Redis Cluster."""
    if request.param == "cluster":
        return cast("str", request.getfixturevalue("cluster_url"))
    return REDIS_URL


@asynccontextmanager
async def clients(
    namespace: str, count: int, url: str = REDIS_URL
) -> AsyncGenerator[list[RedisBackend]]:
    """``count`` backends on one server and namespace, as many processes would be."""
    async with AsyncExitStack() as stack:
        backends: list[RedisBackend] = []
        for _ in range(count):
            backend = await stack.enter_async_context(connect(url, namespace=namespace))
            assert isinstance(backend, RedisBackend)
            backends.append(backend)
        stack.push_async_callback(backends[0].drop_namespace)
        yield backends


@pytest.fixture
async def backend(namespace: str) -> AsyncIterator[RedisBackend]:
    async with clients(namespace, 1) as (only,):
        yield only


@contextmanager
def commands(backend: RedisBackend) -> Generator[list[str]]:
    """The names of the commands ``backend`` sends while the block runs (one per round trip)."""
    client = backend.client
    original = cast("Callable[..., Awaitable[Any]]", client.execute_command)
    sent: list[str] = []

    async def counted(*args: Any, **options: Any) -> Any:
        name = args[0]
        sent.append((name.decode() if isinstance(name, bytes) else str(name)).upper())
        return await original(*args, **options)

    client.execute_command = counted  # type: ignore[method-assign]
    try:
        yield sent
    finally:
        del client.execute_command


async def all_events(backend: RedisBackend, after: str = "0") -> list[RegistryEvent]:
    events: list[RegistryEvent] = []
    cursor = after
    while True:
        page = await backend.registry.read_events(after=cursor, limit=1000)
        events.extend(page.items)
        assert page.next_cursor is not None
        cursor = page.next_cursor
        if not page.items:
            return events


# -- one round trip -----------------------------------------------------------------------


async def test_every_operation_is_one_round_trip(backend: RedisBackend) -> None:
    """Each registry operation sends exactly one command: its script."""
    registry = backend.registry
    alpha, beta = AgentId("w", "alpha"), AgentId("w", "beta")
    await registry.sweep()  # the connect-time check and script loading happen once, here
    token = ""

    async def register() -> None:
        nonlocal token
        token = await registry.register(alpha, capabilities=[SUMMARISE], ttl=30)

    operations: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("register", register),
        ("register", lambda: registry.register(beta, ttl=0.05)),
        ("heartbeat", lambda: registry.heartbeat(alpha, token, load=0.5)),
        ("get", lambda: registry.get(alpha)),
        ("list", registry.list),
        ("list", lambda: registry.list(type="w")),
        ("list", lambda: registry.list(capability="summarise")),
        ("discover", lambda: registry.discover(CapabilityQuery("summarise", ">=1", max_load=1))),
        ("read_events", lambda: registry.read_events(after="0")),
        ("read_events", registry.read_events),
        ("sweep", registry.sweep),
        ("deregister", lambda: registry.deregister(alpha, token)),
    ]
    for what, operation in operations:
        with commands(backend) as sent:
            await operation()
        assert sent == ["EVALSHA"], f"{what} sent {sent}"


async def test_a_wait_blocks_without_polling(backend: RedisBackend) -> None:
    """An empty wait is one script, one blocking XREAD and one script again: no polling."""
    registry = backend.registry
    cursor = (await registry.read_events()).next_cursor
    with commands(backend) as sent:
        started = time.monotonic()
        page = await registry.read_events(after=cursor, wait=0.5)
        elapsed = time.monotonic() - started
    assert page.items == []
    assert elapsed >= 0.45
    assert sent == ["EVALSHA", "XREAD", "EVALSHA"]
    assert "KEYS" not in sent
    assert "SCAN" not in sent


async def test_a_wait_wakes_at_the_next_expiry(backend: RedisBackend) -> None:
    """A waiting reader reports an expiry when it happens, with nobody else calling."""
    registry = backend.registry
    await registry.register(AgentId("w", "short"), ttl=0.3)
    cursor = (await registry.read_events()).next_cursor
    started = time.monotonic()
    with anyio.fail_after(5):
        page = await registry.read_events(after=cursor, wait=30)
    elapsed = time.monotonic() - started
    assert [(e.kind, e.agent_id) for e in page.items] == [(EXPIRED, AgentId("w", "short"))]
    assert elapsed < 2


# -- many clients -------------------------------------------------------------------------


async def test_racing_clients_emit_one_expired_per_expiry(namespace: str, server_url: str) -> None:
    """Eight clients racing every kind of operation after expiries emit each expired once."""
    async with clients(namespace, 8, server_url) as backends:
        first = backends[0]
        agents = [AgentId("w", f"i{n}") for n in range(20)]
        for n, agent_id in enumerate(agents):
            await backends[n % 8].registry.register(agent_id, capabilities=[SUMMARISE], ttl=10)
        cursor = (await first.registry.read_events()).next_cursor
        assert cursor is not None
        await first.clock.advance(12)

        async def race(backend: RedisBackend, n: int) -> None:
            registry = backend.registry
            for _ in range(3):
                await registry.sweep()
                await registry.list()
                await registry.get(agents[n])
                await registry.discover(CapabilityQuery("summarise"))
                await registry.read_events(after=cursor)

        async with anyio.create_task_group() as tg:
            for n, backend in enumerate(backends):
                tg.start_soon(race, backend, n)
                tg.start_soon(backend.registry.sweep)
        events = await all_events(first, cursor)
        expired = sorted(e.agent_id for e in events if e.kind is EXPIRED)
        assert expired == sorted(agents)
        assert all(e.kind is EXPIRED for e in events)
        for backend in backends:
            assert await backend.registry.list() == []
            assert await backend.registry.sweep() == 0


async def test_racing_registers_of_one_id_leave_one_session(
    namespace: str, server_url: str
) -> None:
    """Eight clients registering one id at once: exactly one wins, the rest conflict."""
    async with clients(namespace, 8, server_url) as backends:
        alpha = AgentId("w", "alpha")
        outcomes: list[str] = []

        async def attempt(backend: RedisBackend) -> None:
            try:
                outcomes.append(await backend.registry.register(alpha))
            except AgentConflictError:
                outcomes.append("conflict")

        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(attempt, backend)
        winners = [o for o in outcomes if o != "conflict"]
        assert len(winners) == 1
        info = await backends[3].registry.heartbeat(alpha, winners[0])
        assert info.agent_id == alpha


# -- events across a reconnect ------------------------------------------------------------


async def test_events_resume_after_a_reconnect(namespace: str, server_url: str) -> None:
    """A reader that closes its backend and reconnects continues from its cursor exactly."""
    async with clients(namespace, 1, server_url) as (writer,):
        registry = writer.registry
        start = (await registry.read_events()).next_cursor
        assert start is not None
        seen: list[RegistryEvent] = []
        cursor = start
        tokens: dict[AgentId, str] = {}
        for round_ in range(4):
            async with connect(server_url, namespace=namespace) as reader:
                for n in range(3):
                    agent_id = AgentId("w", f"r{round_}n{n}")
                    tokens[agent_id] = await registry.register(agent_id)
                page = await reader.registry.read_events(after=cursor, limit=2)
                seen.extend(page.items)
                assert page.next_cursor is not None
                cursor = page.next_cursor
            # Written while no reader is connected.
            for agent_id, token in list(tokens.items())[-2:]:
                await registry.heartbeat(agent_id, token, load=float(round_ + 1))
        async with connect(server_url, namespace=namespace) as last:
            assert isinstance(last, RedisBackend)
            seen.extend(await all_events(last, cursor))
        everything = await all_events(writer, start)
        assert seen == everything
        assert len({e.cursor for e in seen}) == len(seen)
        assert [int(e.cursor) for e in seen] == list(
            range(int(seen[0].cursor), int(seen[0].cursor) + len(seen))
        )
        assert sum(e.kind is REGISTERED for e in seen) == 12
        assert sum(e.kind is UPDATED for e in seen) == 8


async def test_a_clock_advance_wakes_a_reader_on_another_client(namespace: str) -> None:
    """Advancing the clock detects the expiries it causes and wakes readers on any client."""
    async with clients(namespace, 2) as (first, second):
        await first.registry.register(AgentId("w", "alpha"), ttl=10)
        cursor = (await second.registry.read_events()).next_cursor
        got: list[RegistryEvent] = []

        async def reader() -> None:
            got.extend((await second.registry.read_events(after=cursor, wait=30)).items)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await anyio.sleep(0.1)
                await first.clock.advance(12)
        assert await first.registry.sweep() == 0
        assert [(e.kind, e.agent_id) for e in got] == [(EXPIRED, AgentId("w", "alpha"))]


async def test_old_cursors_gap_after_drop_namespace(namespace: str) -> None:
    """After drop_namespace the log continues above old cursors: they gap, never skip."""
    async with clients(namespace, 1) as (backend,):
        registry = backend.registry
        cursor = (await registry.read_events()).next_cursor
        assert cursor is not None
        await registry.register(AgentId("w", "alpha"))
        await backend.drop_namespace()
        for n in range(3):
            await registry.register(AgentId("w", f"i{n}"))
        events = await all_events(backend)
        assert int(events[0].cursor) > int(cursor) + 1
        with pytest.raises(EventsGapError):
            await registry.read_events(after=cursor)


# -- the key layout -----------------------------------------------------------------------


async def registry_keys(client: Redis, namespace: str) -> list[str]:
    """Every key under the namespace (SCAN: in this test only, never in the driver)."""
    keys = cast("AsyncIterator[bytes]", client.scan_iter(match=f"{namespace}*", count=1000))
    return sorted([key.decode() async for key in keys])


async def test_keys_carry_the_namespace_tag_and_layout_version(namespace: str) -> None:
    """Registry keys start with the namespace, carry the layout version and one hash tag."""
    async with clients(namespace, 1) as (backend,):
        registry = backend.registry
        token = await registry.register(
            AgentId("w", "alpha"), capabilities=[SUMMARISE, Capability("translate")]
        )
        await registry.register(AgentId("critic"), capabilities=[SUMMARISE], ttl=10)
        await registry.heartbeat(AgentId("w", "alpha"), token, load=0.5)
        keys = await registry_keys(backend.client, namespace)
        prefix = f"{namespace}:{LAYOUT_VERSION}:{{{namespace}}}:"
        assert keys
        assert all(key.startswith(prefix) for key in keys), keys
        names = {key.removeprefix(prefix) for key in keys}
        assert names == {
            "registry:head",
            "registry:events",
            "registry:live",
            "registry:ids",
            "registry:agent:w:alpha",
            "registry:agent:critic",
            "registry:cap:summarise",
            "registry:cap:translate",
        }
        slots = {key_slot(key.encode()) for key in keys}
        assert len(slots) == 1
        await backend.drop_namespace()
        assert await registry_keys(backend.client, namespace) == []


async def test_original_layout_keys_are_untouched(namespace: str) -> None:
    """Keys of the original code under the same prefix are neither read nor removed."""
    async with clients(namespace, 1) as (backend,):
        client = backend.client
        original = {
            f"{namespace}:agents:w:alpha": b'{"name": "old"}',
            f"{namespace}:cb:state:dep": b'{"state": "open"}',
        }
        for key, value in original.items():
            await client.set(key, value)
        try:
            await backend.registry.register(AgentId("w", "alpha"))
            assert [i.agent_id for i in await backend.registry.list()] == [AgentId("w", "alpha")]
            await backend.drop_namespace()
            for key, value in original.items():
                assert await client.get(key) == value
        finally:
            await client.delete(*original)


async def test_a_long_wait_survives_a_short_socket_timeout(namespace: str) -> None:
    """With socket_timeout below the wait, the reader blocks in chunks instead of failing."""
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}socket_timeout=0.5"
    async with connect(url, namespace=namespace) as backend:
        try:
            registry = backend.registry
            cursor = (await registry.read_events()).next_cursor
            started = time.monotonic()
            page = await registry.read_events(after=cursor, wait=1.2)
            assert page.items == []
            assert time.monotonic() - started >= 1.15
        finally:
            await backend.drop_namespace()


# -- server-side counts, on a private server (the conftest's) ----------------------------


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    changed.pop("info", None)  # our own INFO calls
    return changed


async def test_server_counts_one_script_per_operation(private_server: str, namespace: str) -> None:
    """Counted by the server: each operation is one EVALSHA and nothing else from the client."""
    async with connect(private_server, namespace=namespace) as backend:
        registry = backend.registry
        token = await registry.register(AgentId("w", "alpha"), capabilities=[SUMMARISE])
        calls: list[tuple[str, Callable[[], Awaitable[object]]]] = [
            ("heartbeat", lambda: registry.heartbeat(AgentId("w", "alpha"), token, load=0.2)),
            ("get", lambda: registry.get(AgentId("w", "alpha"))),
            ("list", registry.list),
            ("discover", lambda: registry.discover(CapabilityQuery("summarise"))),
            ("read_events", lambda: registry.read_events(after="0")),
            ("sweep", registry.sweep),
            ("deregister", lambda: registry.deregister(AgentId("w", "alpha"), token)),
        ]
        for what, call in calls:
            before = command_calls(private_server)
            await call()
            changed = delta(before, command_calls(private_server))
            assert changed.get("evalsha") == 1, (what, changed)
            assert "keys" not in changed
            assert "scan" not in changed
        await backend.drop_namespace()


async def test_discovery_costs_follow_the_holders(private_server: str, namespace: str) -> None:
    """discover() and list(type=) read only the agents that can match, not the registry."""
    async with connect(private_server, namespace=namespace) as backend:
        registry = backend.registry
        for n in range(300):
            await registry.register(AgentId("w", f"i{n}"), capabilities=[SUMMARISE])
        rare = Capability("rare", "1.0")
        for n in range(3):
            await registry.register(AgentId("critic", f"c{n}"), capabilities=[rare, SUMMARISE])
        before = command_calls(private_server)
        found = await registry.discover(CapabilityQuery("rare"))
        changed = delta(before, command_calls(private_server))
        assert len(found) == 3
        assert changed.get("hmget") == 3, changed
        before = command_calls(private_server)
        listed = await registry.list(type="critic")
        changed = delta(before, command_calls(private_server))
        assert len(listed) == 3
        assert changed.get("hmget") == 3, changed
        await backend.drop_namespace()


async def test_a_client_that_decodes_responses_works_too(namespace: str) -> None:
    """A wrapped redis-py client with decode_responses=True (common in user code) still works."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    backend = RedisBackend(client, BackendOptions(namespace=namespace))
    try:
        registry = backend.registry
        cursor = (await registry.read_events()).next_cursor
        token = await registry.register(AgentId("w", "alpha"), capabilities=[SUMMARISE])
        with pytest.raises(AgentConflictError):
            await registry.register(AgentId("w", "alpha"))
        info = await registry.heartbeat(AgentId("w", "alpha"), token, load=0.5)
        assert (info.load, info.available) == (0.5, True)
        found = await registry.discover(CapabilityQuery("summarise"))
        assert [i.agent_id for i in found] == [AgentId("w", "alpha")]
        events = (await registry.read_events(after=cursor)).items
        assert [e.kind for e in events] == [REGISTERED, UPDATED]
        assert await registry.deregister(AgentId("w", "alpha"), token) is True
    finally:
        await backend.drop_namespace()
        await client.aclose()
