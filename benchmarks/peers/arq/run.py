"""arq: ``enqueue_job`` one at a time, drained by arq's ``Worker`` (max_jobs=50,
poll_delay=0.01: the default 0.5 s poll caps a worker near 500 jobs/s).

The handler is registered by name (``func(handler, name="bench")``): arq's worker runs only
functions it knows by name.
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
from arq import create_pool
from arq.connections import RedisSettings
from arq.worker import Worker, func


async def cycle(url: str, n: int) -> dict[str, float]:
    settings = RedisSettings.from_dsn(url)
    pool = await create_pool(settings)
    done = Done(n)
    finished = asyncio.Event()
    done.hook = finished.set

    async def handler(ctx: dict[str, Any], body: dict[str, Any]) -> None:
        done.hit()

    start = time.perf_counter()
    for i in range(n):
        await pool.enqueue_job("bench", payload(i))
    enqueued = time.perf_counter()
    worker = Worker(
        functions=[func(handler, name="bench")],
        redis_settings=settings,
        max_jobs=50,
        poll_delay=0.01,
        handle_signals=False,
        keep_result=0,
    )
    task = asyncio.create_task(worker.main())
    await finished.wait()
    drained = time.perf_counter()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    with contextlib.suppress(asyncio.CancelledError):
        await worker.close()
    await pool.aclose()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(lambda url, n: asyncio.run(cycle(url, n)), ["arq", "redis"])
