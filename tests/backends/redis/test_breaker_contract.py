"""The packaged breaker-state contract, unchanged, against a real redis-server."""

from __future__ import annotations

from tta_agent_coordination.testing.breaker_contract import BreakerContract

from redis_helpers import REDIS_URL


class TestRedisBreakers(BreakerContract):
    url = REDIS_URL
