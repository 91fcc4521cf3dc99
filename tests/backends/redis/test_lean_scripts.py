"""The scripts' lean path (packed here, same bytes as redis-py) and their batched writes.

``_scripts`` packs ``EVALSHA`` calls itself (keys and leading arguments of a queue packed once)
and sends them on a connection from the client's pool; a client whose ``execute_command`` is
not redis-py's own (a subclass, instrumentation) keeps going through it. The batch scripts write
with one variadic command per structure; a batch answers as the receipts one by one would (the
batch test passes on the per-entry scripts too).
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import Connection

from redis_helpers import REDIS_URL, Servers
from tta_agent_coordination.errors import BackendUnavailableError
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery, EnqueueRequest
from tta_agent_coordination.plugins import connect
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


def test_a_packed_plain_command_is_what_redis_py_sends() -> None:
    assert _scripts.pack_command(["BLPOP", "k:hand:1", "k:wake", 2.5]) == redis_py_bytes(
        "BLPOP", "k:hand:1", "k:wake", 2.5
    )
    assert _scripts.pack_command(["X", *ARGS]) == redis_py_bytes("X", *ARGS)


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
    def __init__(self, connection: FakeConnection, max_connections: int = 100) -> None:
        self.connection = connection
        self.max_connections = max_connections
        self.borrowed = 0
        self.released: list[FakeConnection] = []

    async def get_connection(self) -> FakeConnection:
        self.borrowed += 1
        return self.connection

    async def release(self, connection: FakeConnection) -> None:
        self.released.append(connection)


def kept_for(pool: FakePool) -> _scripts.KeptConnections:
    return _scripts.KeptConnections(pool)  # type: ignore[arg-type]


def held(kept: _scripts.KeptConnections) -> list[object]:
    return list(kept.connections)


async def test_a_reply_is_read_and_the_connection_kept_for_the_next_call() -> None:
    connection = FakeConnection(None)
    pool = FakePool(connection)
    kept = kept_for(pool)
    assert kept.limit == 8  # an eighth of the pool's 100, at most 8
    assert await _scripts._send_packed(kept, b"cmd") == b"ok"
    assert await _scripts._send_packed(kept, b"cmd2") == b"ok"
    assert connection.sent == [b"cmd", b"cmd2"]
    assert pool.borrowed == 1  # the second call took the kept connection, not the pool's
    assert pool.released == []
    assert not connection.disconnected
    await kept.close()
    assert pool.released == [connection]
    await kept.close()  # idempotent
    assert pool.released == [connection]


async def test_a_small_pool_gets_its_connections_back_at_once() -> None:
    connection = FakeConnection(None)
    pool = FakePool(connection, max_connections=7)
    kept = kept_for(pool)
    assert kept.limit == 0
    assert await _scripts._send_packed(kept, b"cmd") == b"ok"
    assert pool.released == [connection]


async def test_no_more_than_the_limit_is_kept() -> None:
    pool = FakePool(FakeConnection(None), max_connections=8)
    kept = kept_for(pool)
    assert kept.limit == 1
    first: Any = FakeConnection(None)
    second: Any = FakeConnection(None)
    await kept.give(first)
    await kept.give(second)
    assert held(kept) == [first]
    assert pool.released == [second]


async def test_a_forked_child_borrows_its_own_connections() -> None:
    connection = FakeConnection(None)
    pool = FakePool(connection)
    kept = kept_for(pool)
    parent: Any = FakeConnection(None)
    await kept.give(parent)
    kept.pid = -1  # as in a forked child: the kept connection is the parent's
    taken: object = await kept.take()
    assert taken is connection
    assert held(kept) == []
    assert pool.borrowed == 1
    kept.pid = -1
    await kept.give(parent)  # a child's give never keeps a parent's
    assert pool.released == [parent]
    kept.connections.append(parent)
    await kept.close()  # nor does a child hand the parent's back to the pool
    assert pool.released == [parent]
    assert held(kept) == []


async def test_an_error_reply_leaves_the_connection_usable() -> None:
    connection = FakeConnection(redis_errors.NoScriptError("NOSCRIPT"))
    pool = FakePool(connection)
    kept = kept_for(pool)
    with pytest.raises(redis_errors.NoScriptError):
        await _scripts._send_packed(kept, b"cmd")
    assert not connection.disconnected
    assert held(kept) == [connection]


@pytest.mark.parametrize("fail", [KeyboardInterrupt(), redis_errors.ConnectionError("lost")])
async def test_a_connection_with_an_unread_reply_is_disconnected(fail: BaseException) -> None:
    connection = FakeConnection(fail)
    pool = FakePool(connection)
    kept = kept_for(pool)
    with pytest.raises(type(fail)):
        await _scripts._send_packed(kept, b"cmd")
    assert connection.disconnected
    assert pool.released == [connection]
    assert held(kept) == []


async def test_a_lost_connection_returns_every_kept_one_to_the_pool() -> None:
    lost = FakeConnection(redis_errors.ConnectionError("server restarted"))
    pool = FakePool(FakeConnection(None))
    kept = kept_for(pool)
    others: list[Any] = [FakeConnection(None), FakeConnection(None)]
    for connection in [*others, lost]:
        await kept.give(cast("Any", connection))
    with pytest.raises(redis_errors.ConnectionError):
        await _scripts._send_packed(kept, b"cmd")  # takes the last kept: the lost one
    assert held(kept) == []  # the retry borrows from the pool, which checks what it lends
    assert pool.released == [lost, *others]


@pytest.mark.parametrize("owns_client", [True, False])
async def test_closing_the_backend_returns_the_kept_connections(
    namespace: str, owns_client: bool
) -> None:
    client = Redis.from_url(REDIS_URL)
    pool = client.connection_pool
    backend = RedisBackend(client, BackendOptions(namespace=namespace), owns_client=owns_client)
    try:
        async with backend:
            await backend.queue.enqueue(message(1))
            assert pool._in_use_connections  # kept by the driver between its calls
            await backend.drop_namespace()
        assert not pool._in_use_connections
        if not owns_client:  # the caller's client still works, on the returned connection
            assert await client.ping()
    finally:
        await client.aclose()


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


# -- writing: straight to the socket when it takes the command whole -------------------------


def big_batch(count: int, size: int) -> list[EnqueueRequest]:
    """``count`` requests of about ``size`` bytes each."""
    return [
        EnqueueRequest(
            message=AgentMessage(sender=QUEUE, recipient=QUEUE, payload={"x": "y" * size})
        )
        for _ in range(count)
    ]


def count_redis_py_sends(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """From now on, every command redis-py's ``send_packed_command`` writes (the list fills)."""
    sent: list[bytes] = []
    original = Connection.send_packed_command

    async def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent.append(command)
        await original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return sent


async def test_a_command_the_socket_takes_whole_skips_redis_py_send(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once connected, a script call is written to the transport directly: redis-py's
    ``send_packed_command`` (an ``asyncio.wait_for`` task per command on Python 3.11) is not
    called, and the calls do what they do."""
    async with RedisBackend.from_url(REDIS_URL, BackendOptions(namespace=namespace)) as backend:
        store = backend.queue
        try:
            await store.enqueue(message(0))  # connect, load the library
            sent = count_redis_py_sends(monkeypatch)
            entry = await store.enqueue(message(1))
            got = await store.reserve(QUEUE, visibility_timeout=30, max_messages=2)
            assert await store.ack_many([d.receipt for d in got]) == [True, True]
            assert entry in [d.entry_id for d in got]
            assert sent == []
        finally:
            monkeypatch.undo()
            await backend.drop_namespace()


async def test_a_health_checked_connection_is_written_through_redis_py(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``health_check_interval`` set, redis-py's send runs (it pings a quiet connection)."""
    url = f"{REDIS_URL}?health_check_interval=30"
    async with connect(url, namespace=namespace) as backend:
        try:
            await backend.queue.enqueue(message(0))
            sent = count_redis_py_sends(monkeypatch)
            await backend.queue.enqueue(message(1))
            assert len(sent) == 1
        finally:
            monkeypatch.undo()
            await backend.drop_namespace()


async def test_a_command_larger_than_the_socket_takes_is_written_in_full(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the socket does not take at once is waited for: an 8 MB batch arrives whole."""
    drains = 0
    original = asyncio.StreamWriter.drain

    async def counting(self: asyncio.StreamWriter) -> None:
        nonlocal drains
        drains += 1
        await original(self)

    async with RedisBackend.from_url(REDIS_URL, BackendOptions(namespace=namespace)) as backend:
        store = backend.queue
        try:
            await store.enqueue(message(0))
            monkeypatch.setattr(asyncio.StreamWriter, "drain", counting)
            ids = await store.enqueue_many(big_batch(16, 500_000))
            monkeypatch.undo()
            assert drains >= 1
            assert len(set(ids)) == 16
            assert (await store.stats(QUEUE)).ready == 17
        finally:
            monkeypatch.undo()
            await backend.drop_namespace()


async def test_a_write_the_server_does_not_take_in_time_fails_typed_then_calls_work(
    servers: Servers,
) -> None:
    """A stopped server takes no more bytes: the write gives up after the socket timeout with a
    ``BackendUnavailableError`` (the driver's retry gives up too), drops the connection, and
    once the server runs again the next call works on a fresh one."""
    port = servers.start()
    proc = servers.ports[port]
    url = f"redis://127.0.0.1:{port}/0?socket_timeout=0.5&socket_connect_timeout=0.5"
    async with connect(url, namespace="stall") as backend:
        store = backend.queue
        await store.enqueue(message(0))
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            with anyio.fail_after(20), pytest.raises(BackendUnavailableError):
                await store.enqueue_many(big_batch(16, 500_000))
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        await store.enqueue(message(1))
        # As with any lost reply, the batch may have been run (the bytes the socket had taken
        # reach the server when it runs again), but whole or not at all: it is one script.
        assert (await store.stats(QUEUE)).ready in (2, 18)


@pytest.mark.parametrize("client_class", [Redis, Instrumented])
async def test_a_waiting_reserve_blocks_on_the_lean_path(
    client_class: type[Redis], namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``BLPOP`` of a waiting reserve goes the scripts' way on a plain pooled client (not
    through redis-py's command path), and through ``execute_command`` on an instrumented one;
    on both it blocks, times out empty and then takes what is sent."""
    client = client_class.from_url(REDIS_URL)
    backend = RedisBackend(client, BackendOptions(namespace=namespace), owns_client=True)
    async with backend:
        store = backend.queue
        try:
            await store.enqueue(message(0))  # connect, load the library, make the queue
            (first,) = await store.reserve(QUEUE, visibility_timeout=30)
            assert await store.ack(first.receipt)
            sent = count_redis_py_sends(monkeypatch)
            Instrumented.calls = 0
            assert await store.reserve(QUEUE, visibility_timeout=30, wait=0.2) == []
            # redis-py sends a command as a list of chunks
            blpops = [c for c in map(b"".join, cast("list[list[bytes]]", sent)) if b"BLPOP" in c]
            if client_class is Instrumented:
                assert len(blpops) == 1
                assert Instrumented.calls >= 3  # two scripts and the BLPOP
            else:
                assert blpops == []
            got: list[Delivery] = []
            entry = ""
            async with anyio.create_task_group() as tg:

                async def consume() -> None:
                    got.extend(await store.reserve(QUEUE, visibility_timeout=30, wait=10))

                tg.start_soon(consume)
                with anyio.fail_after(5):
                    while not await backend.connection.call(
                        lambda c: c.zcard(backend.connection.keys.queue(str(QUEUE), "waiters")),
                        what="test",
                    ):
                        await anyio.lowlevel.checkpoint()
                entry = await store.enqueue(message(1))
            assert [(d.entry_id, d.message.payload) for d in got] == [(entry, {"i": 1})]
        finally:
            await backend.drop_namespace()
