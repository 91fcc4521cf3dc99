"""The queue contract, unchanged, against a real Redis."""

from __future__ import annotations

from tta_agent_coordination.testing.queue_contract import QueueContract

from redis_helpers import REDIS_URL


class TestRedisQueue(QueueContract):
    url = REDIS_URL
