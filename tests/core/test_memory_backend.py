from __future__ import annotations

import pytest

from tta_agent_coordination import Backend, ValidationError, connect
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.protocols import (
    CAPABILITIES,
    BreakerStore,
    ClockControl,
    QueueStore,
    RegistryStore,
)

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_memory_backend_is_a_backend_with_all_three_stores() -> None:
    async with connect("memory://") as backend:
        assert isinstance(backend, Backend)
        assert isinstance(backend.queue, QueueStore)
        assert isinstance(backend.registry, RegistryStore)
        assert isinstance(backend.breakers, BreakerStore)
        assert isinstance(backend.clock, ClockControl)
        assert backend.capabilities == {"clock_control"}
        assert backend.capabilities <= CAPABILITIES
        assert backend.url == "memory://?namespace=tta"


async def test_private_stores_are_separate_and_named_ones_shared() -> None:
    a, b = MemoryBackend(), MemoryBackend()
    assert a.queue is not b.queue
    one = connect("memory://shared-x?namespace=app")
    two = connect("memory://shared-x?namespace=app")
    other_ns = connect("memory://shared-x?namespace=other")
    assert one.queue is two.queue
    assert one.registry is two.registry
    assert one.breakers is two.breakers
    assert one.clock is two.clock is other_ns.clock
    assert one.queue is not other_ns.queue
    assert one.url == "memory://shared-x?namespace=app"
    for backend in (one, two, other_ns):
        await backend.aclose()
    fresh = connect("memory://shared-x?namespace=app")
    assert fresh.queue is not one.queue  # the last close forgot the named store
    await fresh.aclose()
    await fresh.aclose()  # idempotent


async def test_a_named_store_keeps_its_clock() -> None:
    first = MemoryBackend(name="clocked", clock=MemoryClock(manual=True))
    try:
        with pytest.raises(ValidationError, match="own clock"):
            MemoryBackend(name="clocked", clock=MemoryClock())
        second = MemoryBackend(name="clocked")
        assert second.clock is first.clock
        await second.aclose()
    finally:
        await first.aclose()


async def test_a_named_manual_clock_store_can_be_connected_twice() -> None:
    async with (
        connect("memory://twice?clock=manual") as first,
        connect("memory://twice?clock=manual&namespace=other") as second,
    ):
        assert first.clock is second.clock
        assert isinstance(first, MemoryBackend)
        assert first.clock.manual
        async with connect("memory://twice") as joined:  # no clock named: joins the manual one
            assert joined.clock is first.clock
        with pytest.raises(ValidationError, match="already exists with a manual clock"):
            connect("memory://twice?clock=system")
    async with connect("memory://twice") as system:
        with pytest.raises(ValidationError, match="already exists with a system clock"):
            connect("memory://twice?clock=manual")
        assert isinstance(system, MemoryBackend)
        assert not system.clock.manual


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("memory://name/path", "takes a name"),
        ("memory://bad%20name", "memory store name"),
        ("memory://?clock=sundial", "clock must be"),
        ("memory://?socket_timeout=3", "unknown memory:// options: socket_timeout"),
    ],
)
async def test_bad_memory_urls(url: str, match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        connect(url)


async def test_manual_clock_stands_still_until_advanced() -> None:
    async with connect("memory://?clock=manual") as backend:
        clock = backend.clock
        assert clock is not None
        start = await clock.now()
        assert await clock.now() == start
        await clock.advance(2.5)
        assert await clock.now() == start + 2.5


async def test_system_clock_can_be_advanced_and_notifies_listeners() -> None:
    clock = MemoryClock(start=0)
    calls: list[float] = []
    clock.subscribe(lambda: calls.append(clock.time()))
    before = clock.time()
    await clock.advance(100)
    assert clock.time() >= before + 100
    assert len(calls) == 1
    manual = MemoryClock(manual=True, start=10)
    assert manual.time() == 10


@pytest.mark.parametrize("seconds", [-1, float("nan")])
async def test_the_clock_never_goes_back(seconds: float) -> None:
    with pytest.raises(ValidationError):
        await MemoryClock().advance(seconds)


async def test_drop_namespace_clears_only_its_namespace() -> None:
    async with (
        connect("memory://drop-ns?namespace=a") as a,
        connect("memory://drop-ns?namespace=b") as b,
    ):
        await a.breakers.reset("x")
        await b.breakers.reset("y")
        await a.drop_namespace()
        assert await a.breakers.breakers() == []
        assert await b.breakers.breakers() == ["y"]
