"""rq: ``queue.enqueue`` one at a time, drained by rq's ``Worker`` in burst mode (its default:
a forked work horse per job, as ``rq worker`` runs it). Timed until the worker finds the
queue empty.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import main, payload
from redis import Redis
from rq import Queue, Worker
from rq_jobs import handler


def cycle(url: str, n: int) -> dict[str, float]:
    connection = Redis.from_url(url)
    queue = Queue("bench", connection=connection)
    start = time.perf_counter()
    for i in range(n):
        queue.enqueue(handler, payload(i))
    enqueued = time.perf_counter()
    worker = Worker([queue], connection=connection)
    worker.work(burst=True, logging_level="WARNING")
    drained = time.perf_counter()
    assert queue.count == 0
    connection.close()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(cycle, ["rq", "redis"])
