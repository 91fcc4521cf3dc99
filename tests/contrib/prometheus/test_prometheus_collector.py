"""``CoordinationCollector``: queue depths and breaker states from a refreshed snapshot.

A scrape (``collect``) never calls the backend; a refresh reads at most ``max_queues`` queues
and ``max_breakers`` breakers. Memory backend, private ``CollectorRegistry``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import DuplicateTimeseries

from tta_agent_coordination import (
    AgentId,
    BackendUnavailableError,
    CircuitBreaker,
    CircuitBreakerConfig,
    MessageCoordinator,
    ValidationError,
    connect,
)
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination_prometheus import QUEUE_STATES, CoordinationCollector

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


def scrape(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(registry: CollectorRegistry, family: str) -> dict[tuple[str, ...], float]:
    """``{label values in label-name order: value}`` of one family."""
    found = scrape(registry)[family]
    return {tuple(v for _, v in sorted(s.labels.items())): s.value for s in found.samples}


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class Calls:
    """Counts the store calls a collector makes (wraps the backend's methods)."""

    def __init__(self, backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stats_all: list[int] = []
        self.breakers = 0
        self.snapshots = 0
        queue, breakers = backend.queue, backend.breakers
        stats_all, names, snapshot = queue.stats_all, breakers.breakers, breakers.snapshot

        async def counted_stats_all(*, limit: int = 100, cursor: str | None = None) -> Any:
            self.stats_all.append(limit)
            return await stats_all(limit=limit, cursor=cursor)

        async def counted_breakers() -> list[str]:
            self.breakers += 1
            return await names()

        async def counted_snapshot(name: str, config: CircuitBreakerConfig) -> Any:
            self.snapshots += 1
            return await snapshot(name, config)

        monkeypatch.setattr(queue, "stats_all", counted_stats_all)
        monkeypatch.setattr(breakers, "breakers", counted_breakers)
        monkeypatch.setattr(breakers, "snapshot", counted_snapshot)

    @property
    def total(self) -> int:
        return len(self.stats_all) + self.breakers + self.snapshots


async def fill(backend: Backend) -> None:
    """Queues of two types: a shared queue, two instance queues, a reply queue, every state."""
    coord = MessageCoordinator(backend)
    for _ in range(3):
        await coord.send(AgentId("world"), {})
    await coord.send(AgentId("world", "w1"), {}, delay=600)
    await coord.send(AgentId("world", "w2"), {})
    await coord.send(AgentId("world", "w2"), {})
    (reserved,) = await coord.reserve(AgentId("world", "w2"), visibility_timeout=600)
    await coord.send(AgentId("world", "w1"), {})
    (dead,) = await coord.reserve(AgentId("world", "w1"), visibility_timeout=600)
    assert await coord.dead_letter(dead, "handler_error")
    assert reserved.queue == AgentId("world", "w2")
    await coord.send(AgentId("tta.reply", "0" * 32), {}, message_type="response")
    await coord.send(AgentId("tta.reply", "1" * 32), {}, message_type="response")


async def test_queue_depths_by_type_and_bucket(backend: Backend) -> None:
    await fill(backend)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend)
    registry.register(collector)
    assert gauge(registry, "tta_collector_up") == 0  # nothing read yet
    assert (
        gauge(registry, "tta_queue_depth", queue="world", agent_type="world", state="ready") is None
    )

    snapshot = await collector.refresh()
    assert collector.snapshot is snapshot
    assert len(snapshot.queues) == 5
    depths = samples(registry, "tta_queue_depth")
    assert depths == {
        # the keys are the label values agent_type, queue and state, in that order
        **{("world", "world", s): n for s, n in zip(QUEUE_STATES, (3, 0, 0, 0), strict=True)},
        **{("world", "world:*", s): n for s, n in zip(QUEUE_STATES, (1, 1, 1, 1), strict=True)},
        **{
            ("tta.reply", "tta.reply:*", s): n
            for s, n in zip(QUEUE_STATES, (2, 0, 0, 0), strict=True)
        },
    }
    assert gauge(registry, "tta_collector_up") == 1
    assert gauge(registry, "tta_collector_queues") == 5
    assert gauge(registry, "tta_collector_truncated", what="queues") == 0
    assert gauge(registry, "tta_collector_refresh_errors_total") == 0
    assert gauge(registry, "tta_collector_refreshes_total") == 1
    assert collector.refreshes == 1
    assert collector.last_error is None
    age = gauge(registry, "tta_collector_snapshot_age_seconds")
    assert age is not None
    assert 0 <= age < 60
    duration = gauge(registry, "tta_collector_refresh_duration_seconds")
    assert duration is not None
    assert duration >= 0


async def test_instance_labels_keep_each_queue(backend: Backend) -> None:
    await fill(backend)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend, instance_labels=True)
    registry.register(collector)
    await collector.refresh()
    depths = samples(registry, "tta_queue_depth")
    queues = {queue for _, queue, _ in depths}
    assert queues == {
        "world",
        "world:w1",
        "world:w2",
        "tta.reply:" + "0" * 32,
        "tta.reply:" + "1" * 32,
    }
    assert depths[("world", "world:w1", "dead")] == 1
    assert depths[("world", "world:w2", "reserved")] == 1


async def test_breaker_states(backend: Backend) -> None:
    llm = CircuitBreaker(backend, "llm", CircuitBreakerConfig(failure_threshold=1))
    db = CircuitBreaker(backend, "db", CircuitBreakerConfig(failure_threshold=5))

    async def fail() -> None:
        raise RuntimeError("down")

    for breaker in (llm, db):
        with pytest.raises(RuntimeError):
            await breaker.call(fail)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend)
    registry.register(collector)
    await collector.refresh()
    states = samples(registry, "tta_breaker_state")
    assert states == {
        ("llm", "closed"): 0,
        ("llm", "open"): 1,
        ("llm", "half_open"): 0,
        ("db", "closed"): 1,
        ("db", "open"): 0,
        ("db", "half_open"): 0,
    }
    assert gauge(registry, "tta_breaker_failures", breaker="db") == 1
    assert gauge(registry, "tta_collector_truncated", what="breakers") == 0


async def test_scrapes_never_call_the_backend(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(backend)

    async def fail() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await CircuitBreaker(backend, "llm").call(fail)
    calls = Calls(backend, monkeypatch)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend)
    registry.register(collector)
    await collector.refresh()
    assert calls.stats_all == [500]  # one page
    assert (calls.breakers, calls.snapshots) == (1, 1)
    before = calls.total
    for _ in range(20):
        await anyio.to_thread.run_sync(generate_latest, registry)  # from another thread
    assert calls.total == before


async def test_caps_bound_each_refresh(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    coord = MessageCoordinator(backend)
    for number in range(1205):
        await coord.send(AgentId("t", f"i{number:04d}"), {})
    for number in range(7):
        await backend.breakers.reset(f"b{number}")
    calls = Calls(backend, monkeypatch)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend, max_queues=1100, max_breakers=3)
    registry.register(collector)
    snapshot = await collector.refresh()
    assert calls.stats_all == [500, 500, 100]
    assert (calls.breakers, calls.snapshots) == (1, 3)
    assert len(snapshot.queues) == 1100
    assert snapshot.queues_truncated
    assert snapshot.breakers_truncated
    assert gauge(registry, "tta_collector_truncated", what="queues") == 1
    assert gauge(registry, "tta_collector_truncated", what="breakers") == 1
    assert gauge(registry, "tta_collector_queues") == 1100
    assert gauge(registry, "tta_queue_depth", queue="t:*", agent_type="t", state="ready") == 1100
    assert len(samples(registry, "tta_breaker_failures")) == 3


async def test_exact_caps_are_not_truncated(backend: Backend) -> None:
    coord = MessageCoordinator(backend)
    for number in range(3):
        await coord.send(AgentId("t", f"i{number}"), {})
    collector = CoordinationCollector(backend, max_queues=3)
    snapshot = await collector.refresh()
    assert len(snapshot.queues) == 3
    assert snapshot.queues_truncated is False  # the page that reached the cap was the last


async def test_zero_caps_read_nothing(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    await fill(backend)
    calls = Calls(backend, monkeypatch)
    collector = CoordinationCollector(backend, max_queues=0, max_breakers=0)
    snapshot = await collector.refresh()
    assert calls.total == 0
    assert snapshot.queues == ()
    assert snapshot.breakers == ()


async def test_a_failed_refresh_keeps_the_last_snapshot(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fill(backend)
    registry = CollectorRegistry()
    collector = CoordinationCollector(backend)
    registry.register(collector)
    good = await collector.refresh()

    async def broken(*, limit: int = 100, cursor: str | None = None) -> Any:
        raise BackendUnavailableError("redis is down")

    monkeypatch.setattr(backend.queue, "stats_all", broken)
    with pytest.raises(BackendUnavailableError):
        await collector.refresh()
    assert collector.snapshot is good
    assert collector.errors == 1
    assert collector.last_error is not None
    assert "redis is down" in collector.last_error
    assert gauge(registry, "tta_collector_up") == 0
    assert gauge(registry, "tta_collector_refresh_errors_total") == 1
    assert gauge(registry, "tta_collector_refreshes_total") == 1
    assert gauge(registry, "tta_queue_depth", queue="world", agent_type="world", state="ready") == 3


async def test_a_hanging_backend_times_out(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def hangs(*, limit: int = 100, cursor: str | None = None) -> Any:
        await anyio.sleep_forever()

    monkeypatch.setattr(backend.queue, "stats_all", hangs)
    collector = CoordinationCollector(backend, timeout=0.05)
    with pytest.raises(TimeoutError):
        await collector.refresh()
    assert collector.errors == 1
    assert collector.snapshot is None


async def test_running_refreshes_in_the_background(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    coord = MessageCoordinator(backend)
    await coord.send(AgentId("world"), {})
    refreshed = anyio.Event()
    stats_all = backend.queue.stats_all
    count = 0

    async def counted(*, limit: int = 100, cursor: str | None = None) -> Any:
        nonlocal count
        count += 1
        if count == 3:
            refreshed.set()
        return await stats_all(limit=limit, cursor=cursor)

    monkeypatch.setattr(backend.queue, "stats_all", counted)
    collector = CoordinationCollector(backend, interval=0.01)
    async with collector.running() as running:
        assert running is collector
        first = collector.snapshot
        assert first is not None  # the first refresh is done when the block starts
        assert len(first.queues) == 1
        await coord.send(AgentId("other"), {})
        with anyio.fail_after(5):
            await refreshed.wait()
        latest = collector.snapshot
        assert latest is not None
        assert latest is not first
        assert latest.taken_at > first.taken_at


async def test_the_refresher_survives_failures(
    backend: Backend, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0
    third = anyio.Event()

    async def flaky(*, limit: int = 100, cursor: str | None = None) -> Any:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        raise BackendUnavailableError(f"down {calls}")

    monkeypatch.setattr(backend.queue, "stats_all", flaky)
    collector = CoordinationCollector(backend, interval=0.01)
    async with collector.running():
        assert collector.snapshot is None
        with anyio.fail_after(5):
            await third.wait()
        assert collector.errors >= 2  # the third call's failure is counted as it returns
    assert "refreshing queue and breaker stats failed" in caplog.text


async def test_describe_names_for_the_clash_check(backend: Backend) -> None:
    registry = CollectorRegistry()
    registry.register(CoordinationCollector(backend))
    with pytest.raises(DuplicateTimeseries):
        registry.register(CoordinationCollector(backend))
    described = {m.name for m in CoordinationCollector(backend).describe()}
    assert {"tta_queue_depth", "tta_breaker_state", "tta_collector_up"} <= described
    assert all(not m.samples for m in CoordinationCollector(backend).describe())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"interval": 0}, "positive"),
        ({"interval": -1.0}, "positive"),
        ({"interval": float("inf")}, "finite"),
        ({"timeout": "1"}, "finite"),
        ({"timeout": True}, "finite"),
        ({"max_queues": -1}, "at least 0"),
        ({"max_queues": 1.5}, "must be an int"),
        ({"max_breakers": False}, "must be an int"),
    ],
)
async def test_bad_arguments(backend: Backend, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        CoordinationCollector(backend, **kwargs)


async def test_an_error_in_the_block_comes_out_as_itself(backend: Backend) -> None:
    collector = CoordinationCollector(backend)
    with pytest.raises(KeyError, match="mine"):
        async with collector.running():
            raise KeyError("mine")
