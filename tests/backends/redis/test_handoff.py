"""Hand-off: an enqueue reserves the new entry for a waiting consumer and hands it over.

``docs/decisions/0005-redis-handoff.md``: a waiting ``reserve`` registers in the queue's
``waiters`` set and blocks on its own hand list and the wake list; an enqueue of one entry due
now, with nothing ready before it, reserves the entry for the live waiter whose wait ends
first and pushes the delivery to that waiter's list. These tests pin what a user can see (the
delivery, its visibility, round trips) and every way a waiter leaves: handed, timed out,
cancelled, gone.
"""

from __future__ import annotations

import time
from typing import Any, cast

import anyio
import anyio.lowlevel
import pytest

from redis_helpers import command_calls, fresh, pop_scripts
from tta_agent_coordination.errors import BackendUnavailableError
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery, EnqueueRequest
from tta_agent_coordination_redis import RedisBackend

pytestmark = pytest.mark.anyio

QUEUE = AgentId("hand", "q")
SENDER = AgentId("hand", "sender")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def message(n: int = 0) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, payload={"n": n})


def key(backend: RedisBackend, name: str) -> str:
    return backend.connection.keys.queue(str(QUEUE), name)


async def waiters(backend: RedisBackend) -> int:
    name = key(backend, "waiters")
    return int(await backend.connection.call(lambda c: c.zcard(name), what="test"))


async def hand_keys(backend: RedisBackend) -> list[str]:
    pattern = key(backend, "hand:*")
    found = await backend.connection.call(lambda c: c.keys(pattern), what="test")
    return [k.decode() for k in cast("list[bytes]", found)]


async def make_empty_queue(backend: RedisBackend) -> None:
    """Make the queue exist and hold nothing (a waiter registers only on a queue that exists)."""
    store = backend.queue
    await store.enqueue(message(-1))
    assert await store.ack((await store.reserve(QUEUE, visibility_timeout=30))[0].receipt)


async def until_registered(backend: RedisBackend, n: int = 1) -> None:
    """Wait (bounded) until ``n`` consumers are registered as waiting (a read per look)."""
    with anyio.fail_after(5):
        while await waiters(backend) < n:
            await anyio.lowlevel.checkpoint()


async def register(backend: RedisBackend, waiter: str, visibility_ms: int = 30_000) -> None:
    """Register a waiter as a waiting reserve does, without blocking (a consumer that is gone)."""
    got, _ = await backend.queue._reserve_now(  # pyright: ignore[reportPrivateUsage]
        QUEUE, visibility_ms, 1, waiter=waiter, mode="first", wait_ms=60_000
    )
    assert got == []


def script_calls(url: str) -> int:
    return pop_scripts(command_calls(url))


#: Entry ids a hand-off carries: one the driver makes, and a given one with multi-byte
#: characters and the item's own separator in it (the item counts bytes, not characters).
ENTRY_IDS = [None, "é:ü:1"]


@pytest.mark.parametrize("given", ENTRY_IDS)
async def test_a_waiting_consumer_gets_the_new_entry_without_another_script(
    private_server: str, given: str | None
) -> None:
    async with fresh(private_server) as backend:
        store = backend.queue
        await make_empty_queue(backend)
        got: list[Delivery] = []
        sent_at, before, entry_id = 0.0, 0, ""

        async def consume() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=7, wait=10))

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await until_registered(backend)
            before = script_calls(private_server)
            sent_at = time.time()
            entry_id = await store.enqueue(message(1), entry_id=given)
        after = script_calls(private_server)
        assert given is None or entry_id == given

        assert after - before == 1  # the enqueue's script only: the consumer ran none
        (delivery,) = got
        assert (delivery.entry_id, delivery.attempt, delivery.message.payload) == (
            entry_id,
            1,
            {"n": 1},
        )
        # reserved for the waiter's own visibility (7 s), from the enqueue
        assert 6 < delivery.visible_at.timestamp() - sent_at < 8
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved) == (0, 1)
        assert await store.ack(delivery.receipt)
        assert await waiters(backend) == 0
        assert await hand_keys(backend) == []


@pytest.mark.parametrize("given", ENTRY_IDS)
async def test_a_handed_entry_is_collected_when_the_wait_ends_first(given: str | None) -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        await register(backend, "ab" * 8)
        # handed to a waiter not blocked right now
        entry_id = await store.enqueue(message(1), entry_id=given)
        assert (await store.stats(QUEUE)).reserved == 1
        got, _ = await store._reserve_now(  # pyright: ignore[reportPrivateUsage]
            QUEUE, 30_000, 1, waiter="ab" * 8, mode="leave"
        )
        assert [(d.entry_id, d.message.payload) for d in got] == [(entry_id, {"n": 1})]
        assert await store.ack(got[0].receipt)
        assert await waiters(backend) == 0
        assert await hand_keys(backend) == []


async def test_an_entry_handed_to_a_waiter_that_is_gone_comes_back_after_its_visibility() -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        await register(backend, "cd" * 8, visibility_ms=2_000)
        entry_id = await store.enqueue(message(1))
        (hand,) = await hand_keys(backend)
        ttl = await backend.connection.call(lambda c: c.pttl(hand), what="test")
        assert 0 < int(ttl) <= 2_000  # the list goes when the reservation lapses
        assert await store.reserve(QUEUE, visibility_timeout=30) == []
        await backend.clock.advance(3)
        (again,) = await store.reserve(QUEUE, visibility_timeout=30)
        assert (again.entry_id, again.attempt) == (entry_id, 2)


async def handed_delivery(backend: RedisBackend) -> Delivery:
    """An entry handed to a waiter (registered, not blocked), collected by that waiter."""
    await register(backend, "ef" * 8)
    await backend.queue.enqueue(message(1))
    (got,) = (
        await backend.queue._reserve_now(  # pyright: ignore[reportPrivateUsage]
            QUEUE, 30_000, 1, waiter="ef" * 8, mode="leave"
        )
    )[0]
    return got


async def test_a_handed_entry_given_back_is_ready_behind_what_was_ready_before_it() -> None:
    # A handed entry never was ready: it takes its place among ready entries (its sequence
    # number) when it is given back, behind the entries already waiting at the same score.
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        handed = await handed_delivery(backend)
        await store.enqueue(message(2))
        await store.enqueue(message(3))
        assert await store.release(handed.receipt)
        got = await store.reserve(QUEUE, visibility_timeout=30, max_messages=3)
        assert [(d.message.payload, d.attempt) for d in got] == [
            ({"n": 2}, 1),
            ({"n": 3}, 1),
            ({"n": 1}, 1),
        ]
        assert await store.ack_many([d.receipt for d in got]) == [True] * 3


async def test_a_handed_entry_nacked_with_a_delay_comes_back_when_due() -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        handed = await handed_delivery(backend)
        assert await store.nack(handed.receipt, delay=5, error="later")
        assert await store.reserve(QUEUE, visibility_timeout=30) == []
        await backend.clock.advance(6)
        (again,) = await store.reserve(QUEUE, visibility_timeout=30)
        assert (again.entry_id, again.attempt, again.last_error) == (
            handed.entry_id,
            2,
            "later",
        )
        assert await store.ack(again.receipt)


async def test_a_cancelled_waiting_reserve_leaves_the_waiters() -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: store.reserve(QUEUE, visibility_timeout=30, wait=30))
            await until_registered(backend)
            tg.cancel_scope.cancel()
        assert await waiters(backend) == 0
        await store.enqueue(message(1))
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved) == (1, 0)  # nobody waits: not handed


async def test_only_one_new_entry_due_now_with_nothing_ready_is_handed() -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        await register(backend, "ef" * 8)
        await store.enqueue_many(
            [EnqueueRequest(message=message(i)) for i in range(2)]
        )  # a batch goes the usual way
        await store.enqueue(message(2), delay=60)  # so does a delayed entry
        await store.enqueue(message(3))  # and one that would jump the ready ones
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.reserved) == (3, 1, 0)
        assert await waiters(backend) == 1  # still registered, nothing handed
        # the waiter takes the oldest ready entry, in order, when it looks again
        got, _ = await store._reserve_now(  # pyright: ignore[reportPrivateUsage]
            QUEUE, 30_000, 1, waiter="ef" * 8, mode="again"
        )
        assert [d.message.payload for d in got] == [{"n": 0}]
        assert await waiters(backend) == 0


async def test_many_waiting_consumers_are_each_handed_one() -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)
        got: list[Delivery] = []
        sent: list[str] = []

        async def consume() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=30, wait=10))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(consume)
            await until_registered(backend, 3)
            sent.extend([await store.enqueue(message(i)) for i in range(3)])
        assert sorted(d.entry_id for d in got) == sorted(sent)
        assert len({d.receipt for d in got}) == 3
        assert await store.ack_many([d.receipt for d in got]) == [True] * 3


async def test_concurrent_producers_and_waiting_consumers_lose_and_repeat_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Producers racing five waiting consumers: every message is handled exactly once.

    First three producers send 150 messages at once (the queue is rarely empty: mostly the wake
    list), then one sends 50, each once a consumer is registered as waiting (each one handed
    over). The consumers are cancelled while they wait at the end: they leave the waiters.
    """
    async with fresh() as backend:
        store = backend.queue
        sent: list[str] = []
        handled: list[str] = []
        handed_over: list[Delivery] = []
        total = 200
        block = store._block  # pyright: ignore[reportPrivateUsage]

        async def counting(*args: Any) -> Delivery | bool:
            popped = await block(*args)
            if isinstance(popped, Delivery):
                handed_over.append(popped)
            return popped

        monkeypatch.setattr(store, "_block", counting)

        async def produce(first: int) -> None:
            sent.extend([await store.enqueue(message(i)) for i in range(first, 150, 3)])

        async def consume(scope: anyio.CancelScope) -> None:
            while True:
                for delivery in await store.reserve(QUEUE, visibility_timeout=30, wait=5):
                    handled.append(delivery.entry_id)
                    assert await store.ack(delivery.receipt)
                    if len(handled) == total:
                        scope.cancel()

        with anyio.fail_after(60):
            async with anyio.create_task_group() as consumers:
                for _ in range(5):
                    consumers.start_soon(consume, consumers.cancel_scope)
                async with anyio.create_task_group() as producers:
                    for first in range(3):
                        producers.start_soon(produce, first)
                for i in range(150, total):
                    await until_registered(backend)
                    sent.append(await store.enqueue(message(i)))

        assert sorted(handled) == sorted(sent)  # nothing lost, nothing handled twice
        assert len(handed_over) >= 40, len(handed_over)  # the hand-off, not only the wake list
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved, stats.delayed) == (0, 0, 0)
        assert await waiters(backend) == 0  # the cancelled ones left
        assert await hand_keys(backend) == []


async def test_a_failed_first_reserve_is_reported_without_trying_to_leave(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with fresh() as backend:
        store = backend.queue
        modes: list[str] = []

        async def failing(*args: Any, mode: str = "", **kwargs: Any) -> Any:
            modes.append(mode)
            raise BackendUnavailableError("redis unreachable for reserve (test)")

        monkeypatch.setattr(store, "_reserve_now", failing)
        with pytest.raises(BackendUnavailableError, match="test"):
            await store.reserve(QUEUE, visibility_timeout=30, wait=5)
        assert modes == ["first"]  # no 'leave' sent to a server that is not answering


async def test_a_failed_wait_leaves_the_waiters(monkeypatch: pytest.MonkeyPatch) -> None:
    async with fresh() as backend:
        store = backend.queue
        await make_empty_queue(backend)

        async def failing(*args: Any) -> Any:
            assert await waiters(backend) == 1  # registered before it blocks
            raise BackendUnavailableError("the block failed (test)")

        monkeypatch.setattr(store, "_block", failing)
        with pytest.raises(BackendUnavailableError, match="test"):
            await store.reserve(QUEUE, visibility_timeout=30, wait=5)
        assert await waiters(backend) == 0
