"""The queue contract, unchanged, against a real Redis: as library functions and by SHA."""

from __future__ import annotations

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.queue_contract import QueueContract


class TestRedisQueue(QueueContract):
    url = REDIS_URL  # the queue scripts run as the driver's library functions (Redis 7+)


class TestRedisQueueBySha(QueueContract):
    url = f"{REDIS_URL}{'&' if '?' in REDIS_URL else '?'}functions=0"  # EVALSHA only
