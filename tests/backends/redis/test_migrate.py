"""Migration from the original's Redis data, against a real Redis, into Redis and memory."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
from redis.asyncio import Redis

from redis_helpers import REDIS_URL
from tta_agent_coordination import connect
from tta_agent_coordination.models import AgentId, AgentMessage, BreakerState, CircuitBreakerConfig
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination_redis.migrate import (
    RAW_MESSAGE_TYPE,
    ROUTING_HEADER,
    MigrationReport,
    convert_message,
    migrate_from_url,
    migrate_original,
)

pytestmark = pytest.mark.anyio

WB = "world_builder"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def original(mid: str, *, prio: int = 5, inst: str | None = None, **extra: Any) -> str:
    message = {
        "message_id": mid,
        "sender": {"type": "input_processor", "instance": None},
        "recipient": {"type": WB, "instance": inst},
        "message_type": "request",
        "payload": {"n": mid},
        "priority": prio,
        "routing": {"topic": "t", "tags": ["a"]},
        "timestamp": "2026-01-02T03:04:05",
    }
    return json.dumps({"message": message, "priority": prio, "enqueued_at": None, **extra})


@pytest.fixture
async def source() -> AsyncIterator[tuple[Redis, str]]:
    client = Redis.from_url(REDIS_URL)
    prefix = f"ao{uuid.uuid4().hex[:10]}"
    now_us = time.time() * 1e6
    dup = original("dup")
    await client.rpush(f"{prefix}:queue:{WB}:default", dup, dup, original("late"), "junk")
    await client.zadd(f"{prefix}:sched:{WB}:default:prio:5", {dup: now_us - 5e6})
    await client.zadd(
        f"{prefix}:sched:{WB}:default:prio:9", {original("late", prio=9): now_us + 3600e6}
    )
    held = original("held", inst="w2", delivery_attempts=2, last_error=None)
    await client.hset(f"{prefix}:reserved:{WB}:w2", "res_0123456789abcdef", held)
    await client.rpush(
        f"{prefix}:dlq:{WB}:default",
        original("dead", delivery_attempts=3, last_error="boom"),
        "not json {",
    )
    opened = {"state": "open", "failure_count": 5}
    await client.set(f"{prefix}:cb:state:llm", json.dumps(opened))
    await client.set(f"{prefix}:cb:state:db", json.dumps({"state": "closed"}))
    await client.set(f"{prefix}:cb:state:bad", "{")
    await client.zadd(f"{prefix}:sched:{WB}:default:prio:x", {"x": 1})
    await client.hset(f"{prefix}:reserved:odd", "t", "x")
    await client.zadd(f"{prefix}:sched:odd", {"x": 1})
    await client.rpush(f"{prefix}:dlq:odd", "x")
    await client.rpush(f"{prefix}:queue:odd", "x")
    await client.rpush(f"{prefix}:queue:other:default", original("gone"))
    await client.zadd(f"{prefix}:sched:lonely:default:prio:1", {original("solo"): now_us})
    try:
        yield client, prefix
    finally:
        scan = cast("AsyncIterator[bytes]", client.scan_iter(match=f"{prefix}:*"))
        keys = [k async for k in scan]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture(params=["memory", "redis"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    url = (
        "memory://"
        if request.param == "memory"
        else f"{REDIS_URL}?namespace=m{uuid.uuid4().hex[:12]}"
    )
    async with connect(url) as backend:
        try:
            yield backend
        finally:
            await backend.drop_namespace()


async def check(target: Backend) -> None:
    q = target.queue
    shared, w2 = AgentId(WB), AgentId(WB, "w2")
    stats = await q.stats(shared)
    assert (stats.ready, stats.delayed, stats.reserved, stats.dead) == (1, 1, 0, 2)
    assert (await q.stats(w2)).ready == 1
    (ready,) = await q.reserve(shared, visibility_timeout=30, max_messages=5)
    assert ready.message.message_id == "dup"
    assert ready.message.headers[ROUTING_HEADER] == '{"tags":["a"],"topic":"t"}'
    assert ready.message.created_at.year == 2026
    await q.release(ready.receipt)
    (held,) = await q.reserve(w2, visibility_timeout=30)
    assert (held.message.message_id, held.attempt) == ("held", 3)
    await q.release(held.receipt)
    dead = (await q.dead_letters(shared)).items
    by_type = {d.message.message_type if d.message else None: d for d in dead}
    assert by_type["request"].reason == "migrated"
    assert (by_type["request"].error, by_type["request"].attempts) == ("boom", 3)
    raw = by_type[RAW_MESSAGE_TYPE]
    assert raw.message is not None
    assert raw.message.payload == {"raw": "not json {"}
    snapshot = await target.breakers.snapshot("llm", CircuitBreakerConfig())
    assert snapshot.state == BreakerState.OPEN
    assert (
        await target.breakers.snapshot("db", CircuitBreakerConfig())
    ).state == BreakerState.CLOSED


def moved(report: MigrationReport, queue: str) -> dict[str, int]:
    return report.queues[queue].moved


async def test_migrates_once(source: tuple[Redis, str], target: Backend) -> None:
    client, prefix = source
    dry = await migrate_original(client, prefix, target, dry_run=True)
    assert dry.total_moved == 6
    assert (await target.queue.queues()) == []
    report = await migrate_original(client, prefix, target)
    assert moved(report, WB) == {"ready": 1, "delayed": 1, "reserved": 0, "dead": 2}
    assert moved(report, f"{WB}:w2")["reserved"] == 1
    assert report.queues[WB].raw_kept == 1
    assert (report.queues[WB].audit_length, report.queues[WB].audit_mismatch) == (4, 2)
    assert report.queues["other"].audit_mismatch == 1
    assert report.queues["lonely"].audit_mismatch == 1
    assert report.breakers == {"llm": "opened", "db": "closed", "bad": "unreadable"}
    assert len(report.skipped_keys) == 5
    assert report.as_dict()["total_moved"] == 6
    await check(target)
    again = await migrate_original(client, prefix, target)
    assert again.total_moved == 0
    assert again.queues[WB].present == {"ready": 1, "delayed": 1, "reserved": 0, "dead": 2}
    assert again.breakers["llm"] == "already_open"
    dry_again = await migrate_original(client, prefix, target, dry_run=True)
    assert dry_again.queues[WB].present["dead"] == 2
    await check(target)


class KilledError(Exception):
    pass


class Dying:
    """A backend whose queue raises after ``budget`` enqueues (a kill in the middle)."""

    def __init__(self, inner: Backend, budget: int) -> None:
        self._inner = inner
        self.budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def queue(self) -> Any:
        outer = self

        class Q:
            def __getattr__(self, name: str) -> Any:
                return getattr(outer._inner.queue, name)

            async def enqueue(self, message: AgentMessage, **kw: Any) -> str:
                if outer.budget == 0:
                    raise KilledError
                outer.budget -= 1
                return await outer._inner.queue.enqueue(message, **kw)

        return Q()


@pytest.mark.parametrize("budget", [1, 3, 4])
async def test_kill_in_the_middle(source: tuple[Redis, str], target: Backend, budget: int) -> None:
    client, prefix = source
    with pytest.raises(KilledError):
        await migrate_original(client, prefix, cast("Backend", Dying(target, budget)))
    await migrate_original(client, prefix, target)
    await check(target)
    assert (await migrate_original(client, prefix, target)).total_moved == 0


async def test_from_url_and_late_writes(source: tuple[Redis, str]) -> None:
    client, prefix = source
    url = f"{REDIS_URL}?namespace=m{uuid.uuid4().hex[:12]}"
    first = await migrate_from_url(REDIS_URL, prefix, url)
    assert first.total_moved == 6
    await client.zadd(f"{prefix}:sched:{WB}:default:prio:1", {original("late-writer", prio=1): 0})
    second = await migrate_from_url(REDIS_URL, prefix, url)
    assert moved(second, WB)["ready"] == 1
    assert second.total_moved == 1
    async with connect(url) as backend:
        await backend.drop_namespace()


def test_convert_message_defaults() -> None:
    data = {"sender": {"type": "a", "instance": "default"}, "recipient": {"type": WB}}
    message = convert_message(data, AgentId(WB), None)
    assert (message.priority, message.sender, message.headers) == (5, AgentId("a", "default"), {})


class NoClock(Dying):
    """A backend without a clock hook: the source server's TIME decides the delays."""

    @property
    def clock(self) -> None:
        return None


async def test_source_time_and_consumed_entries(source: tuple[Redis, str], target: Backend) -> None:
    client, prefix = source
    report = await migrate_original(client, prefix, cast("Backend", NoClock(target, 100)))
    assert moved(report, WB)["delayed"] == 1
    w2 = AgentId(WB, "w2")
    (held,) = await target.queue.reserve(w2, visibility_timeout=30)
    assert await target.queue.ack(held.receipt)
    other = AgentMessage(sender=AgentId("a"), recipient=w2)
    await target.queue.enqueue(other)
    again = await migrate_original(client, prefix, target)
    assert again.total_moved == 0
    assert (await target.queue.stats(w2)).ready == 1


async def test_busy_target_queue(source: tuple[Redis, str]) -> None:
    """More entries of others than one reserve returns, ahead of ours: all handed back."""
    client, prefix = source
    async with connect("memory://") as target:
        shared = AgentId(WB)
        busy = [AgentMessage(sender=AgentId("a"), recipient=shared, priority=9) for _ in range(700)]
        for message in busy:
            await target.queue.enqueue(message)
        await migrate_original(client, prefix, target)
        stats = await target.queue.stats(shared)
        assert (stats.ready, stats.delayed, stats.reserved, stats.dead) == (701, 1, 0, 2)
        deliveries = await target.queue.reserve(shared, visibility_timeout=30, max_messages=1000)
        assert {d.attempt for d in deliveries} == {1}
