"""The queue contract, unchanged, on a Redis Cluster of three masters started for the tests."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
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


@pytest.mark.anyio
async def test_one_round_trip_per_operation_on_a_known_queue(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[int] = []
    original = ClusterNode.execute_command

    async def counting(node: ClusterNode, *args: Any, **kwargs: Any) -> Any:
        sent.append(1)
        return await original(node, *args, **kwargs)

    monkeypatch.setattr(ClusterNode, "execute_command", counting)
    namespace = f"t{uuid.uuid4().hex[:16]}"
    queue = AgentId("c", "rt")
    sender = AgentId("c", "s")
    async with connect(cluster_url, namespace=namespace) as backend:
        store = backend.queue
        try:
            await store.stats(queue)  # first use: connect, learn the slots, read the clock
            before = len(sent)
            await store.enqueue(AgentMessage(sender=sender, recipient=queue))
            assert len(sent) - before == 2  # the script created the queue: one index update
            counts: dict[str, int] = {}
            before = len(sent)
            await store.enqueue(AgentMessage(sender=sender, recipient=queue))
            counts["enqueue"] = len(sent) - before
            before = len(sent)
            got = await store.reserve(queue, visibility_timeout=10, max_messages=2)
            counts["reserve"] = len(sent) - before
            before = len(sent)
            assert await store.ack_many([d.receipt for d in got]) == [True, True]
            counts["ack_many"] = len(sent) - before
            before = len(sent)
            await store.stats(queue)
            counts["stats"] = len(sent) - before
            assert counts == dict.fromkeys(counts, 1), counts
        finally:
            await backend.drop_namespace()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
