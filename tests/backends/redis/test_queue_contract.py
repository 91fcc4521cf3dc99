"""The queue contract, unchanged, against a real Redis."""

from __future__ import annotations

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.queue_contract import QueueContract


class TestRedisQueue(QueueContract):
    url = REDIS_URL
