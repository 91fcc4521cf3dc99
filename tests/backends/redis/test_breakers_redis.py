"""What the Redis breaker store promises beyond the contract.

One round trip per operation (and one per successful call through a closed
``CircuitBreaker``); many racing clients never get more than
``half_open_max_calls`` permits and see each transition exactly once; keys under the
namespace, its hash tag and the layout version, and gone after a drop.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Generator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any, cast

import anyio
import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from redis_helpers import REDIS_URL
from tta_agent_coordination.breaker import CircuitBreaker
from tta_agent_coordination.models import (
    BreakerDecision,
    BreakerState,
    BreakerUpdate,
    CircuitBreakerConfig,
)
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination_redis.backend import RedisBackend
from tta_agent_coordination_redis.keys import LAYOUT_VERSION

pytestmark = pytest.mark.anyio

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN

CONFIG = CircuitBreakerConfig(
    failure_threshold=5,
    recovery_timeout=10,
    half_open_max_calls=3,
    success_threshold=3,
    probe_timeout=5,
)


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


@pytest.fixture
def name() -> str:
    return f"dep-{uuid.uuid4().hex[:8]}"


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


async def test_every_operation_is_one_round_trip(backend: RedisBackend, name: str) -> None:
    """Every breaker operation, in every state, sends exactly one command."""
    store = backend.breakers
    await store.snapshot(name, CONFIG)  # the connect-time check and script loading
    permit: str | None = None

    async def probe() -> None:
        nonlocal permit
        permit = (await store.acquire(name, CONFIG)).permit

    async def advance() -> None:
        await backend.clock.advance(CONFIG.recovery_timeout + 1)

    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("acquire closed", lambda: store.acquire(name, CONFIG)),
        ("record_success closed", lambda: store.record_success(name, CONFIG)),
        *[("record_failure closed", lambda: store.record_failure(name, CONFIG))] * 5,
        ("acquire open", lambda: store.acquire(name, CONFIG)),
        ("snapshot", lambda: store.snapshot(name, CONFIG)),
        ("advance", advance),
        ("acquire half-open", probe),
        ("record_success half-open", lambda: store.record_success(name, CONFIG, permit)),
        ("record_failure half-open", lambda: store.record_failure(name, CONFIG, permit)),
        ("reset", lambda: store.reset(name)),
        ("breakers", store.breakers),
    ]
    for what, step in steps:
        with commands(backend) as sent:
            await step()
        if what == "advance":
            continue  # the test hook, not a store operation
        assert len(sent) == 1, f"{what} sent {sent}"
        assert sent[0] in {"EVALSHA", "SMEMBERS"}


async def test_a_guarded_success_on_a_closed_breaker_is_one_round_trip(
    backend: RedisBackend, name: str
) -> None:
    """Issue 9: a closed breaker adds one round trip (``acquire``) to a successful call."""
    breaker = CircuitBreaker(backend, name, CONFIG)
    await breaker.snapshot()  # the connect-time check and script loading

    async def ok() -> int:
        return 1

    async def boom() -> None:
        raise RuntimeError

    with commands(backend) as sent:
        for _ in range(3):
            assert await breaker.call(ok) == 1
    assert sent == ["EVALSHA"] * 3
    with commands(backend) as sent, pytest.raises(RuntimeError):
        await breaker.call(boom)
    assert sent == ["EVALSHA"] * 2  # acquire, record_failure
    with commands(backend) as sent:
        assert await breaker.call(ok) == 1  # forgets the consecutive failure: recorded
        assert await breaker.call(ok) == 1  # nothing left to forget: not recorded
    assert sent == ["EVALSHA"] * 3
    assert (await breaker.snapshot()).failures == 0
    assert await backend.breakers.breakers() == [name]


async def test_racing_clients_never_exceed_the_half_open_permits(
    namespace: str, name: str, server_url: str
) -> None:
    """Eight clients racing for probes get at most half_open_max_calls permits, every period."""
    async with clients(namespace, 8, server_url) as backends:
        first = backends[0]
        for _ in range(CONFIG.failure_threshold):
            await first.breakers.record_failure(name, CONFIG)
        await first.clock.advance(CONFIG.recovery_timeout + 1)
        for period in range(3):
            decisions: list[BreakerDecision] = []

            async def caller(backend: RedisBackend, into: list[BreakerDecision]) -> None:
                into.append(await backend.breakers.acquire(name, CONFIG))

            async with anyio.create_task_group() as tg:
                for backend in backends:
                    for _ in range(4):
                        tg.start_soon(caller, backend, decisions)
            allowed = [d for d in decisions if d.allowed]
            assert len(decisions) == 32
            assert len(allowed) == CONFIG.half_open_max_calls
            assert len({d.permit for d in allowed}) == CONFIG.half_open_max_calls
            transitions = [d.transition for d in decisions if d.transition is not None]
            assert len(transitions) == (1 if period == 0 else 0)
            assert all(d.snapshot.permits_in_use <= CONFIG.half_open_max_calls for d in decisions)
            for backend in backends:
                snapshot = await backend.breakers.snapshot(name, CONFIG)
                assert snapshot.state is HALF_OPEN
                assert snapshot.permits_in_use == CONFIG.half_open_max_calls
            # Crashed probes: their leases lapse and free the slots for the next period.
            await first.clock.advance(CONFIG.probe_timeout + 1)


async def test_racing_probe_outcomes_close_it_once(
    namespace: str, name: str, server_url: str
) -> None:
    """Probe successes recorded at once through different clients close it exactly once."""
    async with clients(namespace, 8, server_url) as backends:
        first = backends[0]
        for _ in range(CONFIG.failure_threshold):
            await first.breakers.record_failure(name, CONFIG)
        await first.clock.advance(CONFIG.recovery_timeout + 1)
        permits = [(await first.breakers.acquire(name, CONFIG)).permit for _ in range(3)]
        updates: list[BreakerUpdate] = []

        async def succeed(backend: RedisBackend, permit: str | None) -> None:
            updates.append(await backend.breakers.record_success(name, CONFIG, permit))

        async with anyio.create_task_group() as tg:
            for n, permit in enumerate(permits):
                tg.start_soon(succeed, backends[n], permit)
                tg.start_soon(succeed, backends[n + 3], permit)  # a duplicate report
        closing = [u.transition for u in updates if u.transition is not None]
        assert len(closing) == 1
        assert (closing[0].from_state, closing[0].to_state) == (HALF_OPEN, CLOSED)
        for backend in backends:
            assert (await backend.breakers.snapshot(name, CONFIG)).state is CLOSED


async def test_racing_failures_open_it_once(namespace: str, name: str, server_url: str) -> None:
    """Failures recorded at once by eight clients add up and open the breaker exactly once."""
    async with clients(namespace, 8, server_url) as backends:
        updates: list[BreakerUpdate] = []

        async def fail(backend: RedisBackend) -> None:
            for _ in range(3):
                update = await backend.breakers.record_failure(name, CONFIG)
                updates.append(update)

        async with anyio.create_task_group() as tg:
            for backend in backends:
                tg.start_soon(fail, backend)
        opened = [u.transition for u in updates if u.transition is not None]
        assert len(opened) == 1
        assert (opened[0].from_state, opened[0].to_state) == (CLOSED, OPEN)
        opened_at = {(await b.breakers.snapshot(name, CONFIG)).opened_at for b in backends}
        assert opened_at == {opened[0].at}


async def test_keys_carry_the_namespace_tag_and_layout_version(
    backend: RedisBackend, namespace: str
) -> None:
    """Breaker keys start with the namespace, carry the layout version and one hash tag."""
    store = backend.breakers
    await store.record_failure("alpha", CONFIG)
    await store.acquire("beta", CONFIG)
    await store.reset("names")  # a breaker called like the index cannot collide with it
    await store.snapshot("never-used", CONFIG)
    client = backend.client
    scanned = cast("AsyncIterator[bytes]", client.scan_iter(match=f"{namespace}*", count=1000))
    keys = sorted([key.decode() async for key in scanned])
    prefix = f"{namespace}:{LAYOUT_VERSION}:{{{namespace}}}:"
    assert all(key.startswith(prefix) for key in keys), keys
    assert {key.removeprefix(prefix) for key in keys} == {
        "breakers",
        "breaker:alpha",
        "breaker:names",
    }
    assert len({key_slot(key.encode()) for key in keys}) == 1
    assert await store.breakers() == ["alpha", "beta", "names"]
    await backend.drop_namespace()
    left = cast("AsyncIterator[bytes]", client.scan_iter(match=f"{namespace}*", count=1000))
    assert [key async for key in left] == []
    assert await store.breakers() == []


async def test_a_retried_acquire_gets_its_permit_back(backend: RedisBackend, name: str) -> None:
    """The permit id is fixed before the first try: a resent acquire takes no second slot."""
    store = backend.breakers
    for _ in range(CONFIG.failure_threshold):
        await store.record_failure(name, CONFIG)
    await backend.clock.advance(CONFIG.recovery_timeout + 1)
    connection = backend.connection
    keys = [
        connection.keys.clock,
        connection.keys.ns(f"breaker:{name}"),
        connection.keys.ns("breakers"),
    ]
    args = [name, 5, "", 10_000_000, 3, 3, 5_000_000, "fixed-permit"]
    first = await connection.run_script("breaker_acquire", keys, args)
    again = await connection.run_script("breaker_acquire", keys, args)
    assert first[:2] == again[:2] == [b"1", b"fixed-permit"]
    snapshot = await store.snapshot(name, CONFIG)
    assert snapshot.permits_in_use == 1
    assert (await store.record_success(name, CONFIG, "fixed-permit")).snapshot.successes == 1


async def test_a_client_that_decodes_responses_works_too(namespace: str, name: str) -> None:
    """A wrapped redis-py client with decode_responses=True (common in user code) still works."""
    client = Redis.from_url(REDIS_URL, decode_responses=True)
    backend = RedisBackend(client, BackendOptions(namespace=namespace))
    try:
        store = backend.breakers
        updates = [await store.record_failure(name, CONFIG) for _ in range(5)]
        update = updates[-1]
        assert update.transition is not None
        assert update.snapshot.state is OPEN
        await backend.clock.advance(CONFIG.recovery_timeout + 1)
        decision = await store.acquire(name, CONFIG)
        assert decision.allowed
        assert decision.permit is not None
        assert decision.snapshot.state is HALF_OPEN
        assert await store.breakers() == [name]
    finally:
        await backend.drop_namespace()
        await client.aclose()
