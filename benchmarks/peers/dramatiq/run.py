"""dramatiq: ``actor.send`` one at a time, drained by dramatiq's ``Worker`` (its defaults:
8 worker threads, as ``dramatiq`` the command starts per process).

The actor is registered by name (``actor_name="bench"``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dramatiq
from _common import Done, main, payload
from dramatiq.brokers.redis import RedisBroker

STATE: dict[str, Done] = {}


def cycle(url: str, n: int) -> dict[str, float]:
    broker = RedisBroker(url=url)
    dramatiq.set_broker(broker)
    done = Done(n)
    STATE["done"] = done

    @dramatiq.actor(actor_name="bench", broker=broker)
    def handler(body: dict[str, Any]) -> None:
        STATE["done"].hit()

    start = time.perf_counter()
    for i in range(n):
        handler.send(payload(i))
    enqueued = time.perf_counter()
    worker = dramatiq.Worker(broker)
    worker.start()
    done.event.wait()
    drained = time.perf_counter()
    worker.stop()
    broker.close()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(cycle, ["dramatiq", "redis"])
