"""The scripts' lean path (packed here, same bytes as redis-py) and their batched writes.

``_scripts`` packs ``EVALSHA`` calls itself (keys and leading arguments of a queue packed once)
and sends them on a connection from the client's pool; a client whose ``execute_command`` is
not redis-py's own (a subclass, instrumentation) keeps going through it. The batch scripts write
with one variadic command per structure; a batch answers as the receipts one by one would (the
batch test passes on the per-entry scripts too).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from redis_helpers import REDIS_URL
from tta_agent_coordination.models import AgentId, AgentMessage, EnqueueRequest
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination_redis import RedisBackend, _scripts

pytestmark = pytest.mark.anyio

QUEUE = AgentId("lean", "q1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(i: int) -> AgentMessage:
    return AgentMessage(sender=QUEUE, recipient=QUEUE, payload={"i": i})


def redis_py_bytes(*args: Any) -> bytes:
    """What redis-py itself would write for the command."""
    return b"".join(Connection().pack_command(*args))


ARGS: list[Any] = ["name", 10_000, 0, -1, 2.5, "", b"raw\x00bytes", "é ü", "x" * 7000, -3]


def test_packed_command_is_what_redis_py_sends() -> None:
    script = _scripts.Script("ack")
    keys = ["ns:tta1:{ns}:clock", "ns:tta1:{ns/a:b}:meta"]
    expected = redis_py_bytes("EVALSHA", script.sha, len(keys), *keys, *ARGS)
    assert _scripts.pack_evalsha(script, keys, ARGS) == expected
    head = _scripts.Packed(keys, ARGS[:4])
    assert head.nargs == 4
    assert _scripts.pack_evalsha(script, keys, ARGS, packed=head) == expected


@pytest.mark.parametrize("bad", [True, None, 1j, ["a"]])
def test_an_argument_redis_py_refuses_is_refused(bad: object) -> None:
    script = _scripts.Script("ack")
    with pytest.raises(redis_errors.DataError):
        _scripts.pack_evalsha(script, ["k"], ["ok", bad])


class Instrumented(Redis):
    """A client whose execute_command is wrapped (as tracing instrumentation does)."""

    calls = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        Instrumented.calls += 1
        execute = cast("Callable[..., Awaitable[Any]]", super().execute_command)
        return await execute(*args, **options)


def test_only_a_plain_pooled_client_takes_the_lean_path() -> None:
    plain = Redis.from_url(REDIS_URL)
    assert _scripts._lean_pool(plain) is plain.connection_pool
    assert _scripts._lean_pool(Instrumented.from_url(REDIS_URL)) is None
    assert _scripts._lean_pool(Redis.from_url(REDIS_URL, single_connection_client=True)) is None
    wrapped = Redis.from_url(REDIS_URL)
    wrapped.execute_command = Instrumented.execute_command  # type: ignore[method-assign]
    assert _scripts._lean_pool(wrapped) is None


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:16]}"


@pytest.mark.parametrize("client_class", [Redis, Instrumented])
async def test_queue_works_on_both_paths(client_class: type[Redis], namespace: str) -> None:
    client = client_class.from_url(REDIS_URL)
    backend = RedisBackend(client, BackendOptions(namespace=namespace), owns_client=True)
    Instrumented.calls = 0
    async with backend:
        try:
            message = AgentMessage(sender=QUEUE, recipient=QUEUE, payload={"text": "é" * 3})
            entry = await backend.queue.enqueue(message)
            (delivery,) = await backend.queue.reserve(QUEUE, visibility_timeout=30)
            assert delivery.entry_id == entry
            assert delivery.message.payload == {"text": "ééé"}
            assert await backend.queue.ack(delivery.receipt)
            assert (await backend.queue.stats(QUEUE)).live == 0
        finally:
            await backend.drop_namespace()
    if client_class is Instrumented:
        assert Instrumented.calls >= 4  # every script went through the wrapped method
    else:
        assert Instrumented.calls == 0


class FakeConnection:
    def __init__(self, fail: BaseException | None) -> None:
        self.fail = fail
        self.sent: list[bytes] = []
        self.disconnected = False

    async def send_packed_command(self, command: bytes) -> None:
        self.sent.append(command)

    async def read_response(self) -> object:
        if self.fail is not None:
            raise self.fail
        return b"ok"

    async def disconnect(self, nowait: bool = False) -> None:
        self.disconnected = True


class FakePool:
    def __init__(self, connection: FakeConnection) -> None:
        self.connection = connection
        self.released: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        return self.connection

    async def release(self, connection: FakeConnection) -> None:
        self.released.append(connection)


async def test_a_reply_is_read_and_the_connection_returned() -> None:
    connection = FakeConnection(None)
    pool = FakePool(connection)
    assert await _scripts._send_packed(pool, b"cmd") == b"ok"  # type: ignore[arg-type]
    assert connection.sent == [b"cmd"]
    assert pool.released == [connection]
    assert not connection.disconnected


async def test_an_error_reply_leaves_the_connection_usable() -> None:
    connection = FakeConnection(redis_errors.NoScriptError("NOSCRIPT"))
    pool = FakePool(connection)
    with pytest.raises(redis_errors.NoScriptError):
        await _scripts._send_packed(pool, b"cmd")  # type: ignore[arg-type]
    assert not connection.disconnected
    assert pool.released == [connection]


@pytest.mark.parametrize("fail", [KeyboardInterrupt(), redis_errors.ConnectionError("lost")])
async def test_a_connection_with_an_unread_reply_is_disconnected(fail: BaseException) -> None:
    connection = FakeConnection(fail)
    pool = FakePool(connection)
    with pytest.raises(type(fail)):
        await _scripts._send_packed(pool, b"cmd")  # type: ignore[arg-type]
    assert connection.disconnected
    assert pool.released == [connection]


# -- batches: one variadic command per structure ------------------------------------------


async def test_a_batch_acks_like_one_receipt_at_a_time(namespace: str) -> None:
    client = Redis.from_url(REDIS_URL)
    backend = RedisBackend(client, BackendOptions(namespace=namespace), owns_client=True)
    async with backend:
        store = backend.queue
        try:
            await store.enqueue_many(
                [
                    EnqueueRequest(message=message(i), delay=5 if i == 2 else None, dedup_key=key)
                    for i, key in enumerate(["a", None, None, "a"])
                ]
            )
            stats = await store.stats(QUEUE)
            assert (stats.ready, stats.delayed) == (2, 1)  # the second "a" is the first's entry
            old = await store.reserve(QUEUE, visibility_timeout=1, max_messages=10)
            assert [d.message.payload for d in old] == [{"i": 0}, {"i": 1}]
            await backend.clock.advance(2)  # the reservations expire
            new = await store.reserve(QUEUE, visibility_timeout=30, max_messages=10)
            assert [d.attempt for d in new] == [2, 2]
            first, second = new
            receipts = [first.receipt, first.receipt, old[0].receipt, second.receipt]
            assert await store.ack_many(receipts) == [True, True, False, True]
            assert await store.ack_many([first.receipt, old[1].receipt]) == [True, False]
            assert (await store.stats(QUEUE)).live == 1  # the delayed one
        finally:
            await backend.drop_namespace()
