"""What the contract cannot see: round trips, idle waiting, key layout, NOSCRIPT, eviction.

Tests that change server state (``SCRIPT FLUSH``, ``CONFIG SET``, ``CONFIG RESETSTAT``) run on
a private redis-server started on a free loopback port and stopped by its pid; the shared
server's configuration is never touched.
"""

from __future__ import annotations

import asyncio
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, cast

import anyio
import pytest
import redis as sync_redis
from redis.asyncio import ConnectionPool, Redis
from redis.crc import key_slot

from redis_helpers import REDIS_URL, command_calls, free_port, fresh, pop_scripts
from tta_agent_coordination import connect
from tta_agent_coordination.errors import (
    BackendConfigWarning,
    BackendError,
    BackendUnavailableError,
    ValidationError,
)
from tta_agent_coordination.models import AgentId, AgentMessage, EnqueueRequest
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination_redis import LAYOUT_VERSION, RedisBackend, _scripts, queue
from tta_agent_coordination_redis._errors import boundary, translate
from tta_agent_coordination_redis.plugin import tta_backend_from_client, tta_backend_schemes

pytestmark = pytest.mark.anyio

QUEUE = AgentId("rt", "q1")
SENDER = AgentId("rt", "sender")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(priority: int = 5, ttl: float | None = None) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, priority=priority, ttl=ttl)


class RoundTrips:
    """Counts what the client writes to its sockets (one write is one round trip).

    redis-py writes a command or a pipeline with ``StreamWriter.writelines``; the driver's
    script calls write their packed bytes with ``StreamWriter.write``.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        write, writelines = asyncio.StreamWriter.write, asyncio.StreamWriter.writelines

        def counting_write(writer: asyncio.StreamWriter, data: Any) -> None:
            self.count += 1
            write(writer, data)

        def counting_writelines(writer: asyncio.StreamWriter, data: Any) -> None:
            self.count += 1
            writelines(writer, data)

        monkeypatch.setattr(asyncio.StreamWriter, "write", counting_write)
        monkeypatch.setattr(asyncio.StreamWriter, "writelines", counting_writelines)

    async def measure(self, call: Callable[[], Awaitable[Any]]) -> tuple[int, Any]:
        before = self.count
        result = await call()
        return self.count - before, result


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    return RoundTrips(monkeypatch)


# -- a private server ---------------------------------------------------------------------


def admin(url: str) -> sync_redis.Redis:
    return sync_redis.Redis.from_url(url)


def scan(client: sync_redis.Redis, namespace: str) -> list[str]:
    """Keys that mention ``namespace`` (a keyspace scan: in tests only, never in the driver)."""
    keys = cast("Iterator[bytes]", client.scan_iter(match=f"*{namespace}*", count=1000))
    return [k.decode() for k in keys]


# -- one round trip each ------------------------------------------------------------------


async def test_every_operation_is_one_round_trip(round_trips: RoundTrips) -> None:
    async with fresh() as backend:
        store = backend.queue

        async def cycle() -> dict[str, int]:
            counts: dict[str, int] = {}
            counts["enqueue"], _ = await round_trips.measure(lambda: store.enqueue(message()))
            batch = [EnqueueRequest(message=message()) for _ in range(100)]
            counts["enqueue_many"], ids = await round_trips.measure(
                lambda: store.enqueue_many(batch)
            )
            assert len(ids) == 100
            counts["reserve"], got = await round_trips.measure(
                lambda: store.reserve(QUEUE, visibility_timeout=10, max_messages=5)
            )
            assert len(got) == 5
            counts["ack"], ok = await round_trips.measure(lambda: store.ack(got[0].receipt))
            assert ok
            counts["nack"], ok = await round_trips.measure(lambda: store.nack(got[1].receipt))
            assert ok
            counts["release"], ok = await round_trips.measure(lambda: store.release(got[2].receipt))
            assert ok
            counts["extend"], ok = await round_trips.measure(
                lambda: store.extend(got[3].receipt, visibility_timeout=10)
            )
            assert ok
            counts["dead_letter"], ok = await round_trips.measure(
                lambda: store.dead_letter(got[4].receipt, reason="x")
            )
            assert ok
            more = await store.reserve(QUEUE, visibility_timeout=10, max_messages=50)
            counts["ack_many"], oks = await round_trips.measure(
                lambda: store.ack_many([d.receipt for d in more])
            )
            assert oks == [True] * 50
            counts["stats"], _ = await round_trips.measure(lambda: store.stats(QUEUE))
            counts["reclaim"], _ = await round_trips.measure(lambda: store.reclaim(QUEUE))
            await store.purge_dead_letters(QUEUE)
            return counts

        await cycle()  # the first use connects, checks the server and loads the scripts
        counts = await cycle()
        assert counts == dict.fromkeys(counts, 1), counts


async def test_every_other_queue_operation_is_one_round_trip(round_trips: RoundTrips) -> None:
    async with fresh() as backend:
        store = backend.queue
        other = AgentId("rt", "q2")

        async def cycle() -> dict[str, int]:
            await store.enqueue(message())
            (delivery,) = await store.reserve(QUEUE, visibility_timeout=10)
            await store.dead_letter(delivery.receipt, reason="x")
            counts: dict[str, int] = {}
            counts["dead_letters"], page = await round_trips.measure(
                lambda: store.dead_letters(QUEUE)
            )
            entry_id = page.items[0].entry_id
            counts["dead_letter_count"], _ = await round_trips.measure(
                lambda: store.dead_letter_count(QUEUE)
            )
            counts["get_dead_letter"], _ = await round_trips.measure(
                lambda: store.get_dead_letter(QUEUE, entry_id)
            )
            counts["replay_dead_letters"], _ = await round_trips.measure(
                lambda: store.replay_dead_letters(QUEUE, [entry_id])
            )
            (delivery,) = await store.reserve(QUEUE, visibility_timeout=10)
            await store.dead_letter(delivery.receipt, reason="x")
            counts["purge_dead_letters"], _ = await round_trips.measure(
                lambda: store.purge_dead_letters(QUEUE)
            )
            counts["set_queue_ttl"], _ = await round_trips.measure(
                lambda: store.set_queue_ttl(other, 100)
            )
            counts["queues"], _ = await round_trips.measure(store.queues)
            counts["drop_queue"], _ = await round_trips.measure(lambda: store.drop_queue(other))
            counts["clock.now"], _ = await round_trips.measure(backend.clock.now)
            return counts

        await cycle()
        counts = await cycle()
        assert counts == dict.fromkeys(counts, 1), counts
        await store.stats_all(limit=10)  # the pipeline has its connection (scripts keep theirs)
        trips, page = await round_trips.measure(lambda: store.stats_all(limit=10))
        assert (trips, [s.queue for s in page.items]) == (2, [QUEUE])  # the index, the stats


async def test_round_trips_do_not_grow_with_the_queue(round_trips: RoundTrips) -> None:
    async with fresh() as backend:
        store = backend.queue
        await store.enqueue_many([EnqueueRequest(message=message()) for _ in range(1000)])
        got = await store.reserve(QUEUE, visibility_timeout=10, max_messages=3)
        trips, ok = await round_trips.measure(lambda: store.ack(got[0].receipt))
        assert (trips, ok) == (1, True)


# -- an idle waiting consumer -------------------------------------------------------------


async def test_an_idle_waiting_consumer_sends_next_to_nothing(
    private_server: str, round_trips: RoundTrips
) -> None:
    server = admin(private_server)
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message(), delay=1000)  # the queue exists, nothing due for a while
        await store.reserve(QUEUE, visibility_timeout=10)  # warm: connect, check, load
        # and the blocking connection (the scripts keep theirs): its handshake is not counted
        await store.reserve(QUEUE, visibility_timeout=10, wait=0.01)
        server.config_resetstat()
        start = time.monotonic()
        # 2 s: under the longest block (half of redis-py's default 5 s socket timeout)
        trips, got = await round_trips.measure(
            lambda: store.reserve(QUEUE, visibility_timeout=10, wait=2)
        )
        assert got == []
        assert time.monotonic() - start >= 1.9
        calls = command_calls(server)
    server.close()
    # one reserve script (which registers the waiter), one BLPOP blocked for the whole wait,
    # one reserve script at the end (which leaves the waiters): nothing else was sent
    assert trips == 3, trips
    assert (pop_scripts(calls), calls.get("blpop", 0)) == (2, 1), calls


async def test_a_waiting_consumer_wakes_at_the_earliest_due_time() -> None:
    async with fresh() as backend:
        store = backend.queue
        entry_id = await store.enqueue(message(), delay=0.3)
        with anyio.fail_after(5):
            start = time.monotonic()
            got = await store.reserve(QUEUE, visibility_timeout=10, wait=10)
        assert [d.entry_id for d in got] == [entry_id]
        assert time.monotonic() - start < 2


async def test_a_waiting_consumer_gets_an_expired_reservation_on_time() -> None:
    async with fresh() as backend:
        store = backend.queue
        entry_id = await store.enqueue(message())
        await store.reserve(QUEUE, visibility_timeout=0.4)  # a consumer that crashes
        with anyio.fail_after(5):
            start = time.monotonic()
            got = await store.reserve(QUEUE, visibility_timeout=10, wait=10)
        assert [(d.entry_id, d.attempt) for d in got] == [(entry_id, 2)]
        assert 0.3 < time.monotonic() - start < 2


@pytest.mark.slow
async def test_an_idle_minute_costs_next_to_nothing(
    private_server: str, round_trips: RoundTrips
) -> None:
    """The issue's measure: commands over an idle minute of waiting.

    One reserve script, then BLPOP in blocks just under redis-py's socket timeout (5 s by
    default: blocks of 4 s), nothing in between, and one script to leave the waiters.
    """
    server = admin(private_server)
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message(), delay=3600)
        await store.reserve(QUEUE, visibility_timeout=10)  # warm: connect, check, load
        # and the blocking connection (the scripts keep theirs): its handshake is not counted
        await store.reserve(QUEUE, visibility_timeout=10, wait=0.01)
        server.config_resetstat()
        trips, got = await round_trips.measure(
            lambda: store.reserve(QUEUE, visibility_timeout=10, wait=60)
        )
        assert got == []
        calls = command_calls(server)
        block = backend.connection.max_block
    server.close()
    blocks = 1 if block is None else math.ceil(60 / block)
    assert trips == 2 + blocks, (trips, blocks)
    assert (pop_scripts(calls), calls.get("blpop", 0)) == (2, blocks), calls


async def test_many_waiting_consumers_all_get_work() -> None:
    async with fresh() as backend:
        store = backend.queue
        got: list[str] = []
        ids: list[str] = []

        async def consumer() -> None:
            deliveries = await store.reserve(QUEUE, visibility_timeout=10, wait=10)
            got.extend(d.entry_id for d in deliveries)

        with anyio.fail_after(8):
            async with anyio.create_task_group() as tg:
                for _ in range(4):
                    tg.start_soon(consumer)
                await anyio.sleep(0.2)
                ids.extend(await store.enqueue_many([EnqueueRequest(message=message())] * 4))
        assert sorted(got) == sorted(ids)


# -- key layout ---------------------------------------------------------------------------


async def test_keys_start_with_the_namespace_and_carry_the_layout_version() -> None:
    async with fresh(dedup_window=100) as backend:
        namespace = backend.options.namespace
        store = backend.queue
        other = AgentId("rt")
        await store.enqueue(message(ttl=100), dedup_key="d")
        await store.enqueue(message(), delay=100)
        await store.enqueue(message(), entry_id="fixed")
        got = await store.reserve(QUEUE, visibility_timeout=10, max_messages=2)
        assert await store.ack(got[0].receipt)
        assert await store.dead_letter(got[1].receipt, reason="x")
        await store.set_queue_ttl(other, 100)
        await backend.clock.advance(1)
        client = admin(REDIS_URL)
        found = scan(client, namespace)
        assert len(found) >= 10, found
        prefix = f"{namespace}:{LAYOUT_VERSION}:"
        queue_tag = f"{{{namespace}/{QUEUE}}}"
        for key in found:
            assert key.startswith(prefix), key
            rest = key[len(prefix) :]
            assert rest.startswith("{"), key
            tag = rest[: rest.index("}") + 1]
            assert tag in {f"{{{namespace}}}", queue_tag, f"{{{namespace}/{other}}}"}, key
            # never the original code's keys: {pfx}:queue:, :sched:, :reserved:, :dlq:, ...
            assert key.split(":")[1] == LAYOUT_VERSION
        slots = {key_slot(k.encode()) for k in found if queue_tag in k}
        assert len(slots) == 1  # one queue, one cluster slot
        await backend.drop_namespace()
        assert scan(client, namespace) == []
        client.close()


async def test_a_message_body_is_stored_once_by_id() -> None:
    async with fresh() as backend:
        entry_id = await backend.queue.enqueue(message())
        client = admin(REDIS_URL)
        keys = backend.connection.keys
        assert client.hexists(keys.queue(str(QUEUE), "body"), entry_id)
        ready = client.zrange(keys.queue(str(QUEUE), "ready"), 0, -1)
        assert all(len(member) < 200 for member in ready)  # ids, not bodies
        client.close()


# -- scripts, errors, configuration --------------------------------------------------------


async def test_noscript_after_a_flush_reloads_the_script(private_server: str) -> None:
    server = admin(private_server)
    async with fresh(private_server) as backend:
        store = backend.queue
        await store.enqueue(message())
        server.script_flush()
        delivery = (await store.reserve(QUEUE, visibility_timeout=10))[0]
        server.script_flush()
        assert await store.ack(delivery.receipt)
        server.script_flush()
        assert (await store.stats(QUEUE)).live == 0
        server.script_flush()
        assert (await store.stats_all()).items[0].queue == QUEUE
    server.close()


async def test_maxmemory_policy_that_evicts_warns(private_server: str) -> None:
    server = admin(private_server)
    server.config_set("maxmemory-policy", "allkeys-lru")
    try:
        with pytest.warns(BackendConfigWarning, match="allkeys-lru"):
            async with fresh(private_server) as backend:
                await backend.queue.stats(QUEUE)
    finally:
        server.config_set("maxmemory-policy", "noeviction")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with fresh(private_server) as backend:
            await backend.queue.stats(QUEUE)
    server.close()


async def test_an_unreachable_server_raises_backend_unavailable() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.5"
    async with connect(url, namespace="unreachable") as backend:
        with pytest.raises(BackendUnavailableError) as info:
            await backend.queue.enqueue(message())
        assert isinstance(info.value, ConnectionError)


# -- the plugin ---------------------------------------------------------------------------


def test_schemes_are_lazy_references() -> None:
    schemes = tta_backend_schemes()
    assert set(schemes) == {"redis", "rediss", "redis+cluster"}
    assert all(ref.startswith("tta_agent_coordination_redis.backend:") for ref in schemes.values())


async def test_from_client_wraps_a_redis_client_only() -> None:
    client = Redis.from_url(REDIS_URL)
    backend = tta_backend_from_client(client, "tfromclient")
    assert isinstance(backend, RedisBackend)
    assert backend.options.namespace == "tfromclient"
    assert tta_backend_from_client(object(), "x") is None
    await backend.aclose()
    await client.aclose()


def test_url_masks_the_password_and_rejects_unknown_options() -> None:
    backend = connect("redis://user:secret@127.0.0.1:6379/0?namespace=app")
    assert "secret" not in backend.url
    assert backend.url.startswith("redis://user:***@127.0.0.1:6379/0")
    assert "tls" in connect("rediss://127.0.0.1:6380/0").capabilities
    with pytest.raises(ValidationError):
        connect("redis://127.0.0.1:6379/0?bogus=1")


async def test_a_long_wait_is_cut_below_the_socket_timeout() -> None:
    async with fresh(f"{REDIS_URL}?socket_timeout=0.5") as backend:
        assert backend.connection.max_block == pytest.approx(0.25)
        store = backend.queue
        start = time.monotonic()
        assert await store.reserve(QUEUE, visibility_timeout=10, wait=1.2) == []
        assert 1.1 <= time.monotonic() - start < 3


# -- the error boundary -------------------------------------------------------------------


async def test_the_boundary_retries_transient_errors_then_gives_up() -> None:
    tries: list[int] = []

    async def flaky() -> str:
        tries.append(1)
        if len(tries) < 3:
            raise sync_redis.ConnectionError("reset by peer")
        return "done"

    assert await boundary(flaky, what="test") == "done"
    assert len(tries) == 3

    async def down() -> str:
        raise sync_redis.TimeoutError("timed out")

    with pytest.raises(BackendUnavailableError, match="after 2 tries") as info:
        await boundary(down, what="test", tries=2)
    assert isinstance(info.value.__cause__, sync_redis.TimeoutError)


async def test_the_boundary_does_not_retry_an_error_reply() -> None:
    tries: list[int] = []

    async def refused() -> str:
        tries.append(1)
        raise sync_redis.ResponseError("WRONGTYPE")

    with pytest.raises(BackendError, match="WRONGTYPE"):
        await boundary(refused, what="test")
    assert len(tries) == 1
    with pytest.raises(BackendUnavailableError):
        async with translate("test"):
            raise sync_redis.ConnectionError("gone")


# -- input checks and small paths ----------------------------------------------------------


async def test_bad_arguments_are_validation_errors() -> None:
    async with fresh() as backend:
        store = backend.queue
        await store.enqueue(message())
        (delivery,) = await store.reserve(QUEUE, visibility_timeout=10)
        with pytest.raises(ValidationError):
            await store.reserve(QUEUE, visibility_timeout=10, max_messages="3")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await store.nack(delivery.receipt, error=5)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await store.ack(5)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await store.enqueue_many("x")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            await store.ack_many("x")
        with pytest.raises(ValidationError):
            await store.dead_letters(QUEUE, cursor="x")
        with pytest.raises(ValidationError):
            await store.stats_all(cursor="bad cursor")
        with pytest.raises(ValidationError):
            await backend.clock.advance(-1)
        assert await store.ack(delivery.receipt)


async def test_stats_all_of_an_empty_namespace_and_of_a_vanished_queue() -> None:
    async with fresh() as backend:
        assert (await backend.queue.stats_all()).items == []
        await backend.queue.enqueue(message())
        client = admin(REDIS_URL)
        client.zadd(backend.connection.keys.queues, {"ghost": 0})  # listed, but has no keys
        client.close()
        page = await backend.queue.stats_all()
        assert [s.queue for s in page.items] == [QUEUE]


def test_urls_are_checked_and_masked() -> None:
    ipv6 = connect("redis://user:pw@[::1]:6379/0")
    assert ipv6.url.startswith("redis://user:***@[::1]:6379/0")
    assert connect("redis://:pw@localhost/0").url.startswith("redis://:***@localhost/0")
    options = BackendOptions()
    with pytest.raises(ValidationError, match="serves"):
        RedisBackend.from_url("memory://", options)
    for bad in (
        "redis://localhost/0?ssl_ca_certs=/x",
        "redis://localhost/0?socket_timeout=soon",
        "redis+cluster://localhost:7000/3",
    ):
        with pytest.raises(ValidationError):
            connect(bad)


async def test_aclose_is_idempotent_and_a_foreign_client_is_not_closed() -> None:
    backend = connect(REDIS_URL)
    await backend.aclose()
    await backend.aclose()
    client = Redis.from_url(REDIS_URL)
    wrapped = RedisBackend(client)
    assert wrapped.url == "redis://(client)"
    assert wrapped.client is client
    await wrapped.aclose()
    assert await client.ping()
    await client.aclose()


def test_from_client_ignores_other_redis_objects() -> None:
    assert tta_backend_from_client(ConnectionPool(), "x") is None


def test_an_include_is_inlined_once(monkeypatch: pytest.MonkeyPatch) -> None:
    texts = {"top": "--#include a\n--#include b\nTOP", "a": "--#include b\nA", "b": "B"}
    monkeypatch.setattr(_scripts, "_read", texts.__getitem__)
    assert _scripts.load_script("top") == "B\nA\n-- (included above: b)\nTOP"


def test_helpers_the_script_never_calls_are_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = (
        "local X = 1\n"
        "local function used(a)\n  return helper(a) -- not_called() in a comment\nend\n"
        "local function helper(a)\n  return a\nend\n"
        "-- only_by_dead() is never called: it goes, then dead() goes with it\n"
        "local function dead()\n  return only_by_dead()\nend\n"
        "local function only_by_dead()\n  return X\nend\n"
        "local function not_called()\n  return 2\nend\n"
    )
    texts = {"top": "--#include lib\nreturn used(X)", "lib": lib}
    monkeypatch.setattr(_scripts, "_read", texts.__getitem__)
    text = _scripts.load_script("top")
    assert "local function used(" in text
    assert "local function helper(" in text
    for gone in ("dead", "only_by_dead", "not_called"):
        assert f"local function {gone}(" not in text
    assert text.endswith("return used(X)")


async def test_translate_turns_error_replies_into_backend_errors() -> None:
    with pytest.raises(BackendError, match="WRONGTYPE"):
        async with translate("test"):
            raise sync_redis.ResponseError("WRONGTYPE")


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        ({"redis_version": "6.0.20"}, True),
        ({"node-1": {"redis_version": "5.0.14"}}, True),  # a cluster's reply, by node
        ({"redis_version": "6.2.0"}, False),
        ({"redis_version": "7.2.4"}, False),  # Valkey reports its Redis compatibility level
        ({"redis_version": "unknown"}, False),
        ({}, False),
    ],
)
async def test_a_server_older_than_6_2_is_refused(
    monkeypatch: pytest.MonkeyPatch, reply: dict[str, Any], refused: bool
) -> None:
    async with fresh() as backend:

        async def info(section: str | None = None) -> dict[str, Any]:
            assert section == "server"
            return reply

        monkeypatch.setattr(backend.connection.client, "info", info)
        if refused:
            with pytest.raises(BackendError, match=r"too old for this driver: it needs 6\.2"):
                await backend.queue.stats(QUEUE)
            with pytest.raises(BackendError, match="too old"):  # every call, not only the first
                await backend.queue.stats(QUEUE)
        else:
            assert (await backend.queue.stats(QUEUE)).live == 0
        monkeypatch.undo()  # drop_namespace at the end runs on the real server


async def test_a_server_whose_info_is_disabled_is_not_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fresh() as backend:

        async def info(section: str | None = None) -> dict[str, Any]:
            raise sync_redis.ResponseError("unknown command 'INFO'")

        monkeypatch.setattr(backend.connection.client, "info", info)
        assert (await backend.queue.stats(QUEUE)).live == 0
        monkeypatch.undo()


def test_times_from_the_scripts_are_shared_and_the_memo_stays_bounded() -> None:
    made = queue._shared_ts(1_764_880_000_123)  # pyright: ignore[reportPrivateUsage]
    assert made == datetime(2025, 12, 4, 20, 26, 40, 123_000, tzinfo=UTC)
    assert queue._shared_ts(1_764_880_000_123) is made  # pyright: ignore[reportPrivateUsage]
    for ms in range(1000):
        assert queue._shared_ts(ms * 1000) == datetime.fromtimestamp(ms, UTC)  # pyright: ignore[reportPrivateUsage]
    assert len(queue._TIMES) <= queue._TIMES_KEPT  # pyright: ignore[reportPrivateUsage]


async def test_a_batch_of_deliveries_carries_each_entry_s_own_times() -> None:
    async with fresh() as backend:
        store = backend.queue
        first = await store.enqueue_many([EnqueueRequest(message=message()) for _ in range(3)])
        await backend.clock.advance(2)
        later = await store.enqueue(message())
        got = await store.reserve(QUEUE, visibility_timeout=30, max_messages=4)
        assert [d.entry_id for d in got] == [*first, later]
        assert len({d.enqueued_at for d in got[:3]}) == 1
        assert (got[3].enqueued_at - got[0].enqueued_at).total_seconds() >= 2
        assert len({d.visible_at for d in got}) == 1
        assert 30 <= (got[0].visible_at - got[3].enqueued_at).total_seconds() < 31


async def test_a_batch_keeps_its_sorted_sets_skip_lists_and_leaves_no_seed() -> None:
    # A batch of 16 or more into a small sorted set goes in with a member longer than the
    # listpack's limit (removed at once): the set is a skip list, whose ZADD and ZREM do not
    # scan it. A batch below that leaves a new set a listpack.
    async with fresh() as backend:
        store = backend.queue
        name = str(QUEUE)
        keys = backend.connection.keys

        async def encoding(part: str) -> tuple[str, list[str]]:
            key = keys.queue(name, part)

            async def look(c: Any) -> tuple[Any, Any]:
                return await c.object("encoding", key), await c.zrange(key, 0, -1)

            found, members = await backend.connection.call(look, what="test")
            texts = [m.decode() for m in cast("list[bytes]", members)]
            return cast("bytes", found).decode(), texts

        few = await store.enqueue_many([EnqueueRequest(message=message()) for _ in range(3)])
        assert (await encoding("ready"))[0] == "listpack"
        ids = await store.enqueue_many([EnqueueRequest(message=message()) for _ in range(40)])
        kind, members = await encoding("ready")
        assert (kind, len(members)) == ("skiplist", 43)
        got = await store.reserve(QUEUE, visibility_timeout=30, max_messages=43)
        kind, members = await encoding("reserved")
        assert (kind, sorted(members)) == ("skiplist", sorted([*few, *ids]))
        assert await store.ack_many([d.receipt for d in got]) == [True] * 43
        kind, members = await encoding("settled")
        assert (kind, sorted(members)) == ("skiplist", sorted([*few, *ids]))
        assert (await store.stats(QUEUE)).live == 0
