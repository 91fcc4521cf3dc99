"""saq: ``queue.enqueue`` one at a time, drained by saq's ``Worker`` (concurrency=50).

The handler is registered by name (``("bench", handler)``): saq's worker runs only
functions it knows by name.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Done, main, payload
from saq import Queue, Worker


async def cycle(url: str, n: int) -> dict[str, float]:
    queue = Queue.from_url(url)
    await queue.connect()
    done = Done(n)
    finished = asyncio.Event()
    done.hook = finished.set

    async def handler(ctx: dict[str, Any], *, body: dict[str, Any]) -> None:
        done.hit()

    start = time.perf_counter()
    for i in range(n):
        await queue.enqueue("bench", body=payload(i))
    enqueued = time.perf_counter()
    worker = Worker(queue, functions=[("bench", handler)], concurrency=50)
    task = asyncio.create_task(worker.start())
    await finished.wait()
    drained = time.perf_counter()
    await worker.stop()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await queue.disconnect()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(lambda url, n: asyncio.run(cycle(url, n)), ["saq", "redis"])
