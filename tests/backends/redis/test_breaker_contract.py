"""The packaged breaker-state contract, unchanged, against a real redis-server."""

from __future__ import annotations

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.breaker_contract import BreakerContract


class TestRedisBreakers(BreakerContract):
    url = REDIS_URL
