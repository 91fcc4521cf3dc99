"""The breaker contract against the memory driver, plus what only the memory driver has."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tta_agent_coordination.backends._memory_breakers import MemoryBreakerStore
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.models import BreakerState, CircuitBreakerConfig
from tta_agent_coordination.protocols import BreakerStore
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination.testing.breaker_contract import BreakerContract

CONFIG = CircuitBreakerConfig(
    failure_threshold=3, recovery_timeout=10, half_open_max_calls=1, probe_timeout=5
)


class TestMemoryBreakers(BreakerContract):
    url = "memory://"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def manual() -> AsyncIterator[MemoryBackend]:
    async with MemoryBackend(clock=MemoryClock(manual=True, start=1_000.0)) as backend:
        yield backend


def test_the_store_implements_the_protocol() -> None:
    assert isinstance(MemoryBreakerStore(MemoryClock(), BackendOptions()), BreakerStore)


@pytest.mark.anyio
async def test_refused_half_open_callers_retry_at_once(manual: MemoryBackend) -> None:
    store = manual.breakers
    for _ in range(3):
        await store.record_failure("dep", CONFIG)
    opened = await store.snapshot("dep", CONFIG)
    assert opened.retry_after == 10
    await manual.clock.advance(10)
    assert (await store.snapshot("dep", CONFIG)).retry_after is None
    assert (await store.acquire("dep", CONFIG)).allowed
    refused = await store.acquire("dep", CONFIG)
    assert not refused.allowed
    assert refused.snapshot.retry_after == 0
    await manual.clock.advance(5)  # the permit's lease ends exactly now
    assert (await store.acquire("dep", CONFIG)).allowed


@pytest.mark.anyio
async def test_a_lower_threshold_applies_to_the_failures_already_counted(
    manual: MemoryBackend,
) -> None:
    store = manual.breakers
    for _ in range(2):
        await store.record_failure("dep", CONFIG.model_copy(update={"failure_threshold": 5}))
    update = await store.record_failure("dep", CONFIG.model_copy(update={"failure_threshold": 2}))
    assert update.snapshot.state is BreakerState.OPEN
    assert update.snapshot.failures == 2


@pytest.mark.anyio
async def test_drop_namespace_forgets_every_breaker(manual: MemoryBackend) -> None:
    await manual.breakers.record_failure("dep", CONFIG)
    await manual.drop_namespace()
    assert await manual.breakers.breakers() == []
    assert (await manual.breakers.snapshot("dep", CONFIG)).failures == 0
