"""kombu: ``producer.publish`` one at a time, drained by a ``ConsumerMixin`` worker (kombu's
documented consumer; prefetch 50, each message acked after its handler: the Redis
transport keeps unacked messages and restores them after the visibility timeout).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import Done, main, payload
from kombu import Connection, Exchange, Queue
from kombu.mixins import ConsumerMixin

EXCHANGE = Exchange("bench", type="direct")
QUEUE = Queue("bench", EXCHANGE, routing_key="bench")


class Worker(ConsumerMixin):
    def __init__(self, connection: Connection, done: Done) -> None:
        self.connection = connection
        self.done = done

    def get_consumers(self, consumer_class: Any, channel: Any) -> list[Any]:
        consumer = consumer_class(queues=[QUEUE], callbacks=[self.handle], accept=["json"])
        consumer.qos(prefetch_count=50)
        return [consumer]

    def handle(self, body: dict[str, Any], message: Any) -> None:
        message.ack()
        self.done.hit()
        if self.done.event.is_set():
            self.should_stop = True


def cycle(url: str, n: int) -> dict[str, float]:
    done = Done(n)
    with Connection(url) as connection:
        producer = connection.Producer(serializer="json")
        QUEUE(connection.default_channel).declare()
        start = time.perf_counter()
        for i in range(n):
            producer.publish(payload(i), exchange=EXCHANGE, routing_key="bench")
        enqueued = time.perf_counter()
        Worker(connection, done).run()
        drained = time.perf_counter()
    return {"enqueue": n / (enqueued - start), "drain": n / (drained - enqueued)}


if __name__ == "__main__":
    main(cycle, ["kombu", "redis"])
