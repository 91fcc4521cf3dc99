"""Our Redis driver doing the floors' work, through the public API.

* ``single``: ``coordinator.send`` one awaited call at a time, then ``reserve`` + ``ack`` one
  at a time with one consumer;
* ``batch``: ``enqueue_many`` of 100, ``reserve(max_messages=100)``, ``ack_many``;
* ``serve``: messages sent one at a time, then drained by ``MessageCoordinator.serve`` with
  ``concurrency=50`` and a no-op handler (timed until the last ack);
* ``bare``: a reference, not a target: ``batch``'s script calls (the same scripts, arguments,
  keys and round trips), driven the way ``floor.lua_batch`` is (``json.dumps`` of the payload
  in, ``json.loads`` out, no models): what our Redis layout costs apart from the typed API.

Each reports messages per second, client round trips and Redis commands per message for the
whole cycle (enqueue + reserve + ack).
"""

from __future__ import annotations

import functools
import json
import time

import anyio
from redis.asyncio import Redis

from tta_agent_coordination import MessageCoordinator
from tta_agent_coordination._ids import new_id, new_token
from tta_agent_coordination.metrics import DELIVERIES_ACKED, Labels, NoopMetrics
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    Delivery,
    EnqueueRequest,
    MessagePriority,
)
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination_redis import RedisBackend

from ._measure import Counters, payload

SENDER = AgentId("bench", "producer")
QUEUE = AgentId("bench", "consumer")
BATCH = 100
CONCURRENCY = 50


def backend(url: str, n: int) -> Backend:
    """Our Redis backend, with a queue cap above ``n``."""
    return connect(url, namespace="bench", max_queue_length=max(n + BATCH, 10_000))


async def single(client: Redis, url: str, n: int) -> dict[str, float]:
    async with backend(url, n) as b:
        coord = MessageCoordinator(b, agent_id=SENDER)
        await b.queue.stats(QUEUE)  # connect (and the driver's first-use check) before timing
        counters = Counters(client)
        await counters.start()
        start = time.perf_counter()
        for i in range(n):
            await coord.send(QUEUE, payload(i))
        enqueued = time.perf_counter()
        for _ in range(n):
            (delivery,) = await coord.reserve(QUEUE, visibility_timeout=30)
            await coord.ack(delivery)
        figures = await counters.cycle(n, start, enqueued, time.perf_counter())
        assert (await b.queue.stats(QUEUE)).live == 0
    return figures


async def batch(client: Redis, url: str, n: int) -> dict[str, float]:
    async with backend(url, n) as b:
        store = b.queue
        await store.stats(QUEUE)
        counters = Counters(client)
        await counters.start()
        start = time.perf_counter()
        for first in range(0, n, BATCH):
            await store.enqueue_many(
                [
                    EnqueueRequest(
                        message=AgentMessage(sender=SENDER, recipient=QUEUE, payload=payload(i))
                    )
                    for i in range(first, min(n, first + BATCH))
                ]
            )
        enqueued = time.perf_counter()
        left = n
        while left:
            deliveries = await store.reserve(QUEUE, visibility_timeout=30, max_messages=BATCH)
            assert deliveries
            await store.ack_many([d.receipt for d in deliveries])
            left -= len(deliveries)
        figures = await counters.cycle(n, start, enqueued, time.perf_counter())
        assert (await store.stats(QUEUE)).live == 0
    return figures


async def bare(client: Redis, url: str, n: int) -> dict[str, float]:
    async with backend(url, n) as b:
        assert isinstance(b, RedisBackend)
        store = b.queue  # the driver's own store: its script calls, without the typed API
        name = str(QUEUE)
        options = store._plain[MessagePriority.NORMAL]  # a plain request's (enqueue.lua)
        await store.stats(QUEUE)
        counters = Counters(client)
        await counters.start()
        start = time.perf_counter()
        for first in range(0, n, BATCH):
            items = [
                (new_id(), json.dumps(payload(i)).encode(), options)
                for i in range(first, min(n, first + BATCH))
            ]
            await store._enqueue(QUEUE, items, fresh=True)
        enqueued = time.perf_counter()
        left = n
        while left:
            tokens = [new_token() for _ in range(BATCH)]
            reply = await store._run("reserve", name, 30_000, BATCH, "", "", 0, *tokens)
            ids = reply[3::3]
            for raw in reply[4::3]:
                json.loads(raw)
            assert ids
            receipts = [v for pair in zip(tokens, ids, strict=False) for v in pair]
            acked = await store._run("ack", name, len(ids), *receipts)
            assert all(int(v) == 1 for v in acked)
            left -= len(ids)
        figures = await counters.cycle(n, start, enqueued, time.perf_counter())
        assert (await store.stats(QUEUE)).live == 0
    return figures


class AckCounter(NoopMetrics):
    """A metrics sink that sets ``done`` when ``target`` deliveries have been acked."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.acked = 0
        self.done = anyio.Event()

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        if name == DELIVERIES_ACKED:
            self.acked += int(value)
            if self.acked >= self.target:
                self.done.set()


async def noop(delivery: Delivery) -> None:
    """The no-op handler."""


async def serve(client: Redis, url: str, n: int) -> dict[str, float]:
    async with backend(url, n) as b:
        acks = AckCounter(n)
        coord = MessageCoordinator(b, agent_id=SENDER, metrics=acks)
        await b.queue.stats(QUEUE)
        counters = Counters(client)
        await counters.start()
        for i in range(n):
            await coord.send(QUEUE, payload(i))
        stop = anyio.Event()
        start = drained = time.perf_counter()
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(
                    coord.serve,
                    QUEUE,
                    noop,
                    concurrency=CONCURRENCY,
                    also_shared=False,
                    stop=stop,
                )
            )
            await acks.done.wait()
            drained = time.perf_counter()
            stop.set()
        trips, calls = await counters.stop()
        assert (await b.queue.stats(QUEUE)).live == 0
    return {
        "drain": n / (drained - start),
        "round_trips": trips / n,
        "commands": calls / n,
        **counters.cpu(n),
    }
