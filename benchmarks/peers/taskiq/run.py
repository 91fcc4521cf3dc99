"""taskiq-redis: ``task.kiq`` one at a time onto a ``ListQueueBroker``, drained by taskiq's
``Receiver`` (the loop ``taskiq worker`` runs in each worker process; max_async_tasks=50).

The list broker pops with ``BRPOP`` and never tracks in-flight messages: a worker that
crashes loses what it took, so taskiq here is not a reliable queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Done, main, payload
from taskiq.receiver import Receiver
from taskiq_redis import ListQueueBroker


async def cycle(url: str, n: int) -> dict[str, float]:
    broker = ListQueueBroker(url, queue_name="bench")
    done = Done(n)
    finished = asyncio.Event()
    done.hook = finished.set

    @broker.task(task_name="bench")
    async def handler(body: dict[str, Any]) -> None:
        done.hit()

    await broker.startup()
    start = time.perf_counter()
    for i in range(n):
        await handler.kiq(payload(i))
    enqueued = time.perf_counter()
    stop = asyncio.Event()
    receiver = Receiver(broker, max_async_tasks=50, run_startup=False)
    task = asyncio.create_task(receiver.listen(stop))
    await finished.wait()
    drained = time.perf_counter()
    stop.set()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await broker.shutdown()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(lambda url, n: asyncio.run(cycle(url, n)), ["taskiq", "taskiq-redis", "redis"])
