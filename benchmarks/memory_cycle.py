"""Full-cycle throughput of the memory driver's queue: enqueue + reserve + ack.

Run ``python benchmarks/memory_cycle.py [-n 20000] [--profile]``. Two shapes, one process:

* ``single``: one awaited call at a time (enqueue, reserve one, ack it);
* ``batched``: ``enqueue_many`` of 100, ``reserve(max_messages=100)``, ``ack_many``.

Each shape is warmed up once, then timed three times; the median is reported in messages/s.
``--profile`` runs each shape once under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio

from tta_agent_coordination.models import AgentId, AgentMessage, EnqueueRequest
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.protocols import QueueStore

SENDER = AgentId("bench", "producer")
QUEUE = AgentId("bench", "consumer")
BATCH = 100


def _message(i: int) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, payload={"i": i, "text": "hello"})


async def single(store: QueueStore, messages: list[AgentMessage]) -> None:
    for message in messages:
        await store.enqueue(message)
        (delivery,) = await store.reserve(QUEUE, visibility_timeout=30)
        await store.ack(delivery.receipt)


async def batched(store: QueueStore, messages: list[AgentMessage]) -> None:
    for start in range(0, len(messages), BATCH):
        chunk = messages[start : start + BATCH]
        await store.enqueue_many([EnqueueRequest(message=m) for m in chunk])
        deliveries = await store.reserve(QUEUE, visibility_timeout=30, max_messages=BATCH)
        assert len(deliveries) == len(chunk)
        await store.ack_many([d.receipt for d in deliveries])


Shape = Callable[[QueueStore, list[AgentMessage]], Awaitable[None]]


async def run_once(shape: Shape, n: int) -> float:
    """One timed run on a fresh backend; returns messages per second."""
    messages = [_message(i) for i in range(n)]
    async with connect("memory://", max_queue_length=max(n, 10_000)) as backend:
        start = time.perf_counter()
        await shape(backend.queue, messages)
        elapsed = time.perf_counter() - start
        stats = await backend.queue.stats(QUEUE)
        assert stats.live == 0, stats
    return n / elapsed


async def measure(shape: Shape, n: int) -> float:
    await run_once(shape, min(n, 2_000))  # warm-up
    return statistics.median([await run_once(shape, n) for _ in range(3)])


def profile(shape: Shape, n: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    anyio.run(run_once, shape, n)
    profiler.disable()
    print(f"\n--- cProfile: {shape.__name__}, n={n} (top 15 by own time) ---")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> None:
    parser = argparse.ArgumentParser(description="Full-cycle throughput of the memory queue.")
    parser.add_argument("-n", type=int, default=20_000, help="messages per run (default 20000)")
    parser.add_argument("--profile", action="store_true", help="also profile each shape")
    args = parser.parse_args()
    n: int = args.n
    shapes: list[Shape] = [single, batched]
    print(f"memory driver, full cycle (enqueue + reserve + ack), n={n}, median of 3")
    print(f"{'shape':<10} {'msg/s':>12} {'µs/msg':>9}")
    for shape in shapes:
        rate = anyio.run(measure, shape, n)
        print(f"{shape.__name__:<10} {rate:>12,.0f} {1e6 / rate:>9.1f}")
    if args.profile:
        for shape in shapes:
            profile(shape, n)


if __name__ == "__main__":
    main()
