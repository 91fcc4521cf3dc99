"""The queue contract, unchanged, on a Redis Cluster of three masters started for the tests."""

from __future__ import annotations

import uuid

import pytest
from redis.crc import key_slot

from tta_agent_coordination import connect
from tta_agent_coordination.models import AgentId, AgentMessage
from tta_agent_coordination.testing.queue_contract import QueueContract
from tta_agent_coordination_redis import RedisBackend


class TestRedisClusterQueue(QueueContract):
    url = "redis+cluster://"  # the cluster's address is known only once it runs: see below

    @pytest.fixture(autouse=True)
    def backend_url(self, cluster_url: str) -> str:
        """The URL of the cluster the session started (overrides the class's ``url``)."""
        self.target_url = cluster_url
        return cluster_url


@pytest.mark.anyio
async def test_queues_spread_over_slots_and_operations_stay_on_one(cluster_url: str) -> None:
    namespace = f"t{uuid.uuid4().hex[:16]}"
    async with connect(cluster_url, namespace=namespace) as backend:
        assert isinstance(backend, RedisBackend)
        assert "cluster" in backend.capabilities
        try:
            names = [AgentId("c", f"q{i}") for i in range(8)]
            for queue in names:
                sender = AgentId("c", "s")
                await backend.queue.enqueue(AgentMessage(sender=sender, recipient=queue))
            keys = backend.connection.keys
            slots = {key_slot(keys.queue(str(q), "ready").encode()) for q in names}
            assert len(slots) > 1  # the queues do not all sit on one slot
            for queue in names:
                per_queue = {key_slot(k.encode()) for k in keys.queue_keys(str(queue))}
                assert len(per_queue) == 1
            assert await backend.queue.queues() == sorted(names)
            for queue in names:
                got = await backend.queue.reserve(queue, visibility_timeout=10)
                assert await backend.queue.ack(got[0].receipt)
        finally:
            await backend.drop_namespace()
        assert await backend.queue.queues() == []


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
