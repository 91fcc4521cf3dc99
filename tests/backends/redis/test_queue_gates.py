"""The queue scripts' gates: scans whose first deadline is ahead are skipped, never one that is due.

Each queue keeps two times in its info hash (``md``: the earliest reservation deadline, delayed
entry or ttl; ``pn``: the earliest settled id or dedup key to forget). A script that finds them
in the future skips the sorted-set scans. These tests pin both halves: the common calls run few
commands (counted by the server), and every way a deadline can come earlier still lowers the gate,
as does a queue written before the gates existed.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from redis.typing import EncodableT, FieldT

from redis_helpers import command_calls, fresh, pop_scripts
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery, EnqueueRequest
from tta_agent_coordination_redis import RedisBackend

pytestmark = pytest.mark.anyio

QUEUE = AgentId("gates", "q")
SENDER = AgentId("gates", "sender")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(ttl: float | None = None) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, payload={"x": 1}, ttl=ttl)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {k: v - before.get(k, 0) for k, v in after.items()}
    for own in ("info", "hello", "client|setinfo"):  # the counting connection's own
        changed.pop(own, None)
    return {k: v for k, v in changed.items() if v}


def info_key(backend: RedisBackend) -> str:
    return backend.connection.keys.queue(str(QUEUE), "info")


async def forget_gates(backend: RedisBackend) -> None:
    """Make the queue look as one written before the gates existed."""
    key = info_key(backend)
    await backend.connection.call(lambda c: c.hdel(key, "md", "pn"), what="test")


async def reserve_one(backend: RedisBackend, visibility: float = 30) -> Delivery:
    (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=visibility)
    return delivery


async def test_the_common_calls_skip_the_scans(private_server: str) -> None:
    async with fresh(private_server) as backend:
        store = backend.queue
        for _ in range(3):  # the queue exists, has settled ids and a reservation deadline ahead
            await store.enqueue(message())
            await store.ack((await reserve_one(backend)).receipt)
        await store.enqueue(message())

        before = command_calls(private_server)
        await store.enqueue(message())
        enqueue = delta(before, command_calls(private_server))
        before = command_calls(private_server)
        delivery = await reserve_one(backend)
        reserve = delta(before, command_calls(private_server))
        before = command_calls(private_server)
        assert await store.ack(delivery.receipt)
        ack = delta(before, command_calls(private_server))

    # one script call each; no scan of a sorted set by score in any of them
    for ran in (enqueue, reserve, ack):
        assert pop_scripts(ran) == 1
    assert sum(enqueue.values()) <= 11, enqueue  # 19 before the gates
    assert enqueue.get("zrange", 0) == 0, enqueue
    assert sum(reserve.values()) <= 10, reserve  # 21 before
    assert reserve.get("zrange", 0) == 1, reserve  # the ready entries themselves
    assert sum(ack.values()) <= 9, ack
    assert "zrange" not in ack, ack


async def test_only_a_given_entry_id_is_looked_up(private_server: str) -> None:
    """An id the driver makes for the call (a random UUID) cannot be taken yet: its first try
    looks up nothing (a retry does: ``test_faults``); a given one is looked up, live and settled.
    """
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message())
        await store.ack((await reserve_one(backend)).receipt)  # a settled id to look among
        sends: dict[str, Callable[[], Awaitable[object]]] = {
            "made": lambda: store.enqueue(message()),
            "given": lambda: store.enqueue(message(), entry_id="mine"),
            "made_batch": lambda: store.enqueue_many([EnqueueRequest(message=message())] * 3),
            "given_batch": lambda: store.enqueue_many(
                [EnqueueRequest(message=message(), entry_id=f"b{i}") for i in range(3)]
            ),
        }
        runs: dict[str, dict[str, int]] = {}
        for name, send in sends.items():
            before = command_calls(private_server)
            await send()
            runs[name] = delta(before, command_calls(private_server))

    assert "hexists" not in runs["made"], runs["made"]
    assert "zscore" not in runs["made"], runs["made"]
    assert (runs["given"]["hexists"], runs["given"]["zscore"]) == (1, 1), runs["given"]
    assert "zmscore" not in runs["made_batch"], runs["made_batch"]
    assert runs["made_batch"]["hmget"] == 1, runs["made_batch"]  # the info fields only
    assert runs["given_batch"]["zmscore"] == 1, runs["given_batch"]
    assert runs["given_batch"]["hmget"] == 2, runs["given_batch"]  # and the ids in meta


async def test_a_queue_written_before_the_gates_is_maintained() -> None:
    async with fresh() as backend:
        store = backend.queue
        first = await store.enqueue(message())
        await reserve_one(backend, visibility=5)
        await forget_gates(backend)
        await backend.clock.advance(6)
        again = await reserve_one(backend)
        assert (again.entry_id, again.attempt) == (first, 2)  # the lapsed reservation came back

        await store.ack(again.receipt)
        await forget_gates(backend)
        await backend.clock.advance(2 * 3600)  # past entry_id_retention: the id is forgotten
        assert await store.enqueue(message(), entry_id=first) == first
        assert (await store.stats(QUEUE)).ready == 1


async def test_a_gate_unknown_after_a_drop_is_found_again() -> None:
    async with fresh() as backend:
        store = backend.queue
        await store.enqueue(message())
        await store.drop_queue(QUEUE)
        await store.enqueue(message())
        await reserve_one(backend, visibility=2)
        await backend.clock.advance(3)
        assert (await reserve_one(backend)).attempt == 2


async def test_every_earlier_deadline_lowers_the_gate() -> None:
    async with fresh() as backend:
        store = backend.queue
        # a reservation for a minute sets the gate a minute ahead ...
        await store.enqueue(message())
        long = await reserve_one(backend, visibility=60)
        # ... a delayed entry due in one second lowers it
        soon = await store.enqueue(message(), delay=1)
        await backend.clock.advance(1.5)
        got = await reserve_one(backend)
        assert got.entry_id == soon
        # a nack with a short delay lowers it
        assert await store.nack(got.receipt, delay=1)
        await backend.clock.advance(1.5)
        got = await reserve_one(backend)
        assert (got.entry_id, got.attempt) == (soon, 2)
        # extending a reservation to a shorter visibility lowers it
        assert await store.extend(long.receipt, visibility_timeout=1)
        await backend.clock.advance(1.5)
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved) == (1, 1)  # the long one was reclaimed
        # a ttl lowers it: the entry expires into the dead letters on time
        await store.enqueue(message(ttl=1))
        await backend.clock.advance(1.5)
        stats = await store.stats(QUEUE)
        assert stats.dead == 1


async def test_a_batch_costs_a_fixed_number_of_commands(private_server: str) -> None:
    """enqueue_many, reserve(max_messages), ack_many: one command per structure, not per entry."""
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message())  # the queue exists and has a settled id
        await store.ack((await reserve_one(backend)).receipt)

        before = command_calls(private_server)
        await store.enqueue_many([EnqueueRequest(message=message()) for _ in range(50)])
        enqueue = delta(before, command_calls(private_server))
        before = command_calls(private_server)
        deliveries = await store.reserve(QUEUE, visibility_timeout=30, max_messages=50)
        reserve = delta(before, command_calls(private_server))
        before = command_calls(private_server)
        assert await store.ack_many([d.receipt for d in deliveries]) == [True] * 50
        ack = delta(before, command_calls(private_server))

    assert len(deliveries) == 50
    for ran in (enqueue, reserve, ack):
        assert pop_scripts(ran) == 1
        assert sum(ran.values()) <= 12, ran  # 2 to 4 per entry before the batch reads


async def test_a_batch_writes_each_entry_as_a_single_enqueue_does() -> None:
    """A batch writes its plain entries (due now, no ttl, no dedup key) from one shape per run
    of alike options: meta and ready score read back exactly as one enqueue at a time writes
    them, beside entries with a ttl, a delay or a dedup key."""
    requests = [
        EnqueueRequest(message=message()),
        EnqueueRequest(message=message()),
        EnqueueRequest(message=message().model_copy(update={"priority": 7}), max_attempts=2),
        EnqueueRequest(message=message(ttl=60)),
        EnqueueRequest(message=message(), delay=30),
        EnqueueRequest(message=message(), dedup_key="k"),
        EnqueueRequest(message=message()),
    ]

    async def written(batch: bool) -> list[tuple[list[tuple[str, Any]], float | None]]:
        async with fresh() as backend:
            store, keys = backend.queue, backend.connection.keys
            if batch:
                ids = await store.enqueue_many(requests)
            else:
                ids = [
                    await store.enqueue(
                        r.message,
                        delay=r.delay,
                        dedup_key=r.dedup_key,
                        max_attempts=r.max_attempts,
                    )
                    for r in requests
                ]
            meta_key, ready_key = keys.queue(str(QUEUE), "meta"), keys.queue(str(QUEUE), "ready")
            metas = cast(
                "list[bytes]",
                await backend.connection.call(lambda c: c.hmget(meta_key, ids), what="t"),
            )
            ready = cast(
                "list[tuple[bytes, float]]",
                await backend.connection.call(
                    lambda c: c.zrange(ready_key, 0, -1, withscores=True), what="t"
                ),
            )
        scores = {member[12:].decode(): score for member, score in ready}
        out: list[tuple[list[tuple[str, Any]], float | None]] = []
        for entry_id, raw in zip(ids, metas, strict=True):
            meta: dict[str, Any] = json.loads(raw)
            assert raw == json.dumps(meta, separators=(",", ":")).encode()  # compact, in order
            meta.pop("e")  # the clock moved between the runs (and with it a ttl's deadline)
            meta.pop("x", None)
            score = scores.get(entry_id)
            band = None if score is None else score // 2**42  # the priority band
            out.append((list(meta.items()), band))  # the fields in their order
        return out

    assert await written(batch=True) == await written(batch=False)


async def test_meta_in_another_key_order_is_reserved_and_acked_all_the_same() -> None:
    """Reserve and ack read the meta text as encode_meta writes it (splicing the reservation in,
    checking the receipt, without decoding); a meta in any other key order (another writer)
    takes the decoding path, with the same outcome, and is written back in encode_meta's."""
    async with fresh() as backend:
        store, keys = backend.queue, backend.connection.keys
        ids = [await store.enqueue(message(ttl=60 if i == 1 else None)) for i in range(3)]
        meta_key = keys.queue(str(QUEUE), "meta")
        expiry_key = keys.queue(str(QUEUE), "expiry")
        call = backend.connection.call
        before = cast("list[bytes]", await call(lambda c: c.hmget(meta_key, ids), what="t"))
        # another writer's order: "a" first, "s" after "q"
        pairs = list(zip(ids, before, strict=True))
        reordered: dict[FieldT, EncodableT] = {
            i: json.dumps(json.loads(raw), sort_keys=True).encode() for i, raw in pairs
        }
        assert all(reordered[i] != raw for i, raw in pairs)
        await call(lambda c: c.hset(meta_key, mapping=reordered), what="t")
        one = await store.reserve(QUEUE, visibility_timeout=30)  # one entry: its own path
        two = await store.reserve(QUEUE, visibility_timeout=30, max_messages=2)
        got = [*one, *two]
        assert [d.entry_id for d in got] == ids
        raws = cast("list[bytes]", await call(lambda c: c.hmget(meta_key, ids), what="t"))
        assert all(raw.startswith(b'{"p":') and b'"s":"v","t":"' in raw for raw in raws)
        assert await store.ack(got[0].receipt)
        assert await store.ack_many([d.receipt for d in got[1:]]) == [True, True]
        assert (await store.stats(QUEUE)).live == 0
        assert await call(lambda c: c.zcard(expiry_key), what="t") == 0
