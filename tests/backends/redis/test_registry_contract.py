"""The packaged registry contract, unchanged, against a real redis-server."""

from __future__ import annotations

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.registry_contract import RegistryContract


class TestRedisRegistry(RegistryContract):
    url = REDIS_URL
