"""The stateful contract test (queue, registry and breaker machines against the model), on a
real redis-server and on a real local Redis Cluster.

Examples follow the ``HYPOTHESIS_PROFILE`` (``ci`` is the light profile ``.ci/run`` sets).
"""

from __future__ import annotations

import pytest

from redis_helpers import REDIS_URL
from tta_agent_coordination.testing.stateful import StatefulContract


class TestRedisStateful(StatefulContract):
    url = REDIS_URL


class TestRedisClusterStateful(StatefulContract):
    url = "redis+cluster://"  # the cluster's address is known only once it runs

    @pytest.fixture(autouse=True)
    def backend_url(self, cluster_url: str) -> str:
        """The URL of the cluster the session started (overrides the class's ``url``)."""
        self.target_url = cluster_url
        return cluster_url
