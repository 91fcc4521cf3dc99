"""The other hot paths: latency, the breaker, the registry, memory per message, memory driver.

* ``latency``: enqueue to handler start with an idle consumer waiting, one message at a time
  (the producer waits for the handler, without polling, then sends the next once the consumer
  is blocked again, seen in ``INFO clients``): ours
  through ``serve``, the floor a consumer blocked in ``BLPOP``;
* ``breaker``: a call through a closed ``CircuitBreaker`` against the bare call;
* ``registry``: ``discover`` with 100 and with 10,000 registered agents, 10 of them holding
  the capability asked for;
* ``memory``: Redis ``used_memory`` per queued message, ours against the Lua floor's layout;
* ``memory_driver``: the memory driver's full cycle (enqueue + reserve + ack) per second.
"""

from __future__ import annotations

import functools
import json
import math
import time
from typing import Any

import anyio
from redis.asyncio import Redis

from tta_agent_coordination import CircuitBreaker, MessageCoordinator
from tta_agent_coordination._codec import encode_message
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    Capability,
    CapabilityQuery,
    Delivery,
    EnqueueRequest,
)
from tta_agent_coordination.registry import AgentRegistry

from . import memory_cycle
from ._measure import RoundTrips, command_calls, payload, percentile
from .floors import BODY, READY, LuaFloor
from .ours import QUEUE, SENDER, backend

LATENCY_LIST = "floor:latency"


async def _until_blocked(admin: Redis, count: int = 1) -> None:
    """Wait until ``count`` clients are blocked (the consumer is idle, waiting)."""
    while True:
        info: dict[str, Any] = await admin.info("clients")
        if int(info["blocked_clients"]) >= count:
            return


def _latency_figures(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(samples, 0.5) * 1e3, "p99_ms": percentile(samples, 0.99) * 1e3}


async def latency_floor(admin: Redis, url: str, n: int) -> dict[str, float]:
    samples: list[float] = []
    handled = anyio.Event()
    producer = Redis.from_url(url)
    consumer = Redis.from_url(url)
    try:
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                nonlocal handled
                while True:
                    reply: Any = await consumer.blpop([LATENCY_LIST], timeout=0)
                    body = json.loads(reply[1])
                    samples.append(time.perf_counter() - body["t0"])
                    handled.set()

            tg.start_soon(consume)
            for i in range(n):
                await _until_blocked(admin)
                handled = anyio.Event()
                body = json.dumps({**payload(i), "t0": time.perf_counter()})
                await producer.lpush(LATENCY_LIST, body)
                await handled.wait()  # no polling while the message is on its way
            tg.cancel_scope.cancel()
    finally:
        await producer.aclose()
        await consumer.aclose()
    return _latency_figures(samples)


async def latency_ours(admin: Redis, url: str, n: int) -> dict[str, float]:
    samples: list[float] = []
    handled = anyio.Event()
    async with backend(url, n) as b:
        coord = MessageCoordinator(b, agent_id=SENDER)

        async def handler(delivery: Delivery) -> None:
            now = time.perf_counter()
            body: Any = delivery.message.payload
            samples.append(now - float(body["t0"]))
            handled.set()

        stop = anyio.Event()
        idle = math.nan
        async with anyio.create_task_group() as tg:
            await tg.start(
                functools.partial(
                    coord.serve,
                    QUEUE,
                    handler,
                    concurrency=50,
                    also_shared=False,
                    stop=stop,
                )
            )
            for i in range(n):
                await _until_blocked(admin)
                handled = anyio.Event()
                await coord.send(QUEUE, {**payload(i), "t0": time.perf_counter()})
                await handled.wait()  # no polling while the message is on its way
            while len(samples) < n or (await b.queue.stats(QUEUE)).live:
                await _until_blocked(admin)
            idle = await _idle_commands(admin, 3.0 if n >= 500 else 0.5)
            stop.set()
    return {**_latency_figures(samples), "idle_cmds_per_s": idle}


async def _idle_commands(admin: Redis, seconds: float) -> float:
    """Commands per second the server runs while the consumer waits with nothing to do.

    A consumer that polled at a fixed interval would show here; a blocked ``BLPOP`` runs
    nothing until its block ends (half the socket timeout). The two ``INFO`` calls that
    bracket the window are left out.
    """
    await _until_blocked(admin)
    before = await command_calls(admin)
    await anyio.sleep(seconds)  # the idle window being observed, not a wait for a condition
    return (await command_calls(admin) - before - 1) / seconds


async def _nothing() -> None:
    return None


async def breaker(admin: Redis, url: str, n: int) -> dict[str, float]:
    async with backend(url, n) as b:
        guarded = CircuitBreaker(b, "bench")
        await guarded.call(_nothing)  # connect and create it
        start = time.perf_counter()
        for _ in range(n):
            await _nothing()
        bare = time.perf_counter() - start
        trips = RoundTrips.count
        start = time.perf_counter()
        for _ in range(n):
            await guarded.call(_nothing)
        through = time.perf_counter() - start
        trips = RoundTrips.count - trips
    return {
        "bare_us": bare / n * 1e6,
        "guarded_us": through / n * 1e6,
        "overhead_us": (through - bare) / n * 1e6,
        "round_trips": trips / n,
    }


async def _register(registry: AgentRegistry, start: int, stop: int, needles: int) -> None:
    for i in range(start, stop):
        name = "needle" if i < needles else f"hay{i % 50}"
        await registry.register(
            AgentId("bench", f"a{i}"), capabilities=[Capability(name, "1.0")], ttl=3600
        )


async def registry(
    admin: Redis, url: str, n: int, *, small: int = 100, large: int = 10_000
) -> dict[str, float]:
    """``n`` discover calls with ``small`` agents registered, then with ``large``."""
    query = CapabilityQuery("needle", ">=1")
    figures: dict[str, float] = {}
    async with backend(url, n) as b:
        reg = AgentRegistry(b)
        registered = 0
        for label, size in (("small", small), ("large", large)):
            await _register(reg, registered, size, needles=10)
            registered = size
            found = await reg.discover(query)
            assert len(found) == 10, len(found)
            start = time.perf_counter()
            for _ in range(n):
                await reg.discover(query)
            figures[f"{label}_us"] = (time.perf_counter() - start) / n * 1e6
    figures["ratio"] = figures["large_us"] / figures["small_us"]
    return figures


async def _used_memory(admin: Redis) -> int:
    info: dict[str, Any] = await admin.info("memory")
    return int(info["used_memory"])


async def memory(admin: Redis, url: str, n: int) -> dict[str, float]:
    """Bytes of ``used_memory`` per queued message: ours, and the Lua floor's layout."""
    chunk = 1000
    base = await _used_memory(admin)
    async with backend(url, n) as b:
        for first in range(0, n, chunk):
            await b.queue.enqueue_many(
                [
                    EnqueueRequest(
                        message=AgentMessage(sender=SENDER, recipient=QUEUE, payload=payload(i))
                    )
                    for i in range(first, min(n, first + chunk))
                ]
            )
        ours = await _used_memory(admin) - base
        sample = AgentMessage(sender=SENDER, recipient=QUEUE, payload=payload(n - 1))
        ours_body = len(encode_message(sample, 1 << 20))
        await b.drop_namespace()
    base = await _used_memory(admin)
    floor = LuaFloor(admin)
    await floor.load()
    for first in range(0, n, chunk):
        async with admin.pipeline(transaction=False) as p:
            for i in range(first, min(n, first + chunk)):
                p.zadd(READY, {f"{i:032x}": i})
                p.hset(BODY, f"{i:032x}", json.dumps(payload(i)))
            await p.execute()
    floor_bytes = await _used_memory(admin) - base
    return {
        "ours_bytes": ours / n,
        "floor_bytes": floor_bytes / n,
        "ratio": ours / floor_bytes,
        "ours_body_bytes": ours_body,
        "floor_body_bytes": len(json.dumps(payload(0))),
    }


async def memory_driver(admin: Redis, url: str, n: int) -> dict[str, float]:
    return {
        "single": await memory_cycle.run_once(memory_cycle.single, n),
        "batched": await memory_cycle.run_once(memory_cycle.batched, n),
    }
