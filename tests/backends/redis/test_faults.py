"""Connection faults: lost replies, killed connections, a stopped server (issue 6, item 8).

Each test runs on a private redis-server (``CLIENT KILL`` and stopping a server must never hit
the shared one). A "lost reply" is made real: the command runs on the server, its reply is
read, then every client connection is killed (``CLIENT KILL TYPE normal``) and the caller sees
a connection error, as after a network failure between the server's answer and the client.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import pytest
import redis as sync_redis
from redis.asyncio.connection import AbstractConnection

from redis_helpers import Servers, fresh
from tta_agent_coordination import connect
from tta_agent_coordination.errors import BackendUnavailableError
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery, EnqueueRequest
from tta_agent_coordination_redis import RedisBackend

pytestmark = pytest.mark.anyio

QUEUE = AgentId("faults", "q")
SENDER = AgentId("faults", "sender")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message() -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE)


def kill_clients(url: str) -> int:
    """Kill every normal client connection of the server but our own; how many were killed."""
    with sync_redis.Redis.from_url(url) as admin:
        killed = cast(
            "object", admin.execute_command("CLIENT KILL", "TYPE", "normal", "SKIPME", "yes")
        )
        assert isinstance(killed, int)
        return killed


class LoseReplies:
    """While armed, the next reply is read, then every connection is killed and lost."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
        self.armed = 0
        self.lost = 0
        original = AbstractConnection.read_response

        async def read_response(conn: AbstractConnection, *args: Any, **kwargs: Any) -> object:
            reply = cast("object", await original(conn, *args, **kwargs))
            if self.armed:
                self.armed -= 1
                self.lost += 1
                kill_clients(url)
                await conn.disconnect()
                msg = "connection lost after the server answered"
                raise sync_redis.ConnectionError(msg)
            return reply

        monkeypatch.setattr(AbstractConnection, "read_response", read_response)


@pytest.fixture
def lose(monkeypatch: pytest.MonkeyPatch, private_server: str) -> LoseReplies:
    return LoseReplies(monkeypatch, private_server)


async def warm(backend: RedisBackend) -> None:
    """Connect, check the server and load every script the tests use.

    A script not yet cached would be sent again with ``EVAL`` on a connection the pool may
    have to open, and the armed reply would then be the new connection's handshake, not the
    script's.
    """
    store = backend.queue
    await store.enqueue(message())
    got = await store.reserve(QUEUE, visibility_timeout=10)
    assert await store.release(got[0].receipt)  # the settle script
    got = await store.reserve(QUEUE, visibility_timeout=10)
    await store.ack(got[0].receipt)
    await store.stats(QUEUE)


async def test_a_retried_enqueue_after_a_lost_reply_writes_once(
    private_server: str, lose: LoseReplies
) -> None:
    async with fresh(private_server) as backend:
        await warm(backend)
        lose.armed = 1
        entry_id = await backend.queue.enqueue(message())
        assert lose.lost == 1
        assert (await backend.queue.stats(QUEUE)).live == 1
        (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=10, max_messages=5)
        assert delivery.entry_id == entry_id


async def test_a_retried_batch_after_a_lost_reply_writes_once(
    private_server: str, lose: LoseReplies
) -> None:
    async with fresh(private_server) as backend:
        await warm(backend)
        lose.armed = 1
        ids = await backend.queue.enqueue_many([EnqueueRequest(message=message())] * 10)
        assert lose.lost == 1
        assert len(set(ids)) == 10
        assert (await backend.queue.stats(QUEUE)).live == 10


async def test_a_retried_ack_after_a_lost_reply_answers_true(
    private_server: str, lose: LoseReplies
) -> None:
    async with fresh(private_server) as backend:
        await warm(backend)
        await backend.queue.enqueue_many([EnqueueRequest(message=message())] * 3)
        got = await backend.queue.reserve(QUEUE, visibility_timeout=10, max_messages=3)
        lose.armed = 1
        assert await backend.queue.ack(got[0].receipt) is True
        lose.armed = 1
        assert await backend.queue.ack_many([d.receipt for d in got[1:]]) == [True, True]
        assert lose.lost == 2
        assert (await backend.queue.stats(QUEUE)).live == 0


async def test_a_settle_whose_reply_was_lost_is_not_reported_as_done_twice(
    private_server: str, lose: LoseReplies
) -> None:
    async with fresh(private_server) as backend:
        await warm(backend)
        await backend.queue.enqueue(message())
        (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=10)
        lose.armed = 1
        # the nack happened; its retry finds the receipt no longer current: False, not a
        # second nack (the attempt is counted once)
        assert await backend.queue.nack(delivery.receipt) is False
        (again,) = await backend.queue.reserve(QUEUE, visibility_timeout=10)
        assert again.attempt == 2


async def test_killed_connections_between_operations_are_replaced(private_server: str) -> None:
    async with fresh(private_server) as backend:
        await warm(backend)
        for _ in range(3):
            kill_clients(private_server)
            await backend.queue.enqueue(message())
        assert (await backend.queue.stats(QUEUE)).live == 3


async def test_a_waiting_consumer_survives_its_connection_being_killed(
    private_server: str,
) -> None:
    async with fresh(private_server) as backend:
        namespace = backend.options.namespace
        producer = connect(private_server, namespace=namespace)  # another client, same queues
        await warm(backend)
        got: list[Delivery] = []

        async def consumer() -> None:
            got.extend(await backend.queue.reserve(QUEUE, visibility_timeout=10, wait=20))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.sleep(0.3)  # blocked in BLPOP now
                assert kill_clients(private_server) >= 1
                await anyio.sleep(0.3)  # the consumer has reconnected and blocks again
                await producer.queue.enqueue(message())
        await producer.aclose()
        assert len(got) == 1


async def test_a_stopped_server_raises_backend_unavailable_then_recovers(
    servers: Servers,
) -> None:
    port = servers.start()
    url = f"redis://127.0.0.1:{port}/0?socket_connect_timeout=1"
    async with connect(url, namespace="tstopped") as backend:
        assert isinstance(backend, RedisBackend)
        await warm(backend)
        servers.stop_one(port)
        with anyio.fail_after(10):
            with pytest.raises(BackendUnavailableError) as info:
                await backend.queue.enqueue(message())
            assert isinstance(info.value, ConnectionError)
            with pytest.raises(BackendUnavailableError):
                await backend.queue.reserve(QUEUE, visibility_timeout=10, wait=1)
        servers.start(port=port)  # a restarted, empty server: scripts are reloaded on NOSCRIPT
        entry_id = await backend.queue.enqueue(message())
        (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=10)
        assert delivery.entry_id == entry_id
        await backend.drop_namespace()
