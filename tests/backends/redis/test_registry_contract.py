"""The packaged registry contract, unchanged, against a real redis-server."""

from __future__ import annotations

import pytest

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.registry_contract import RegistryContract


class TestRedisRegistry(RegistryContract):
    url = REDIS_URL


class TestRedisClusterRegistry(RegistryContract):
    """The same contract on a Redis Cluster of three masters started for the tests."""

    url = "redis+cluster://"  # the cluster's address is known only once it runs

    @pytest.fixture(autouse=True)
    def backend_url(self, cluster_url: str) -> str:
        """The URL of the cluster the session started (overrides the class's ``url``)."""
        self.target_url = cluster_url
        return cluster_url
