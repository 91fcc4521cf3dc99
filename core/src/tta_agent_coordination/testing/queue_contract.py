"""The queue contract: backend-agnostic tests of the ``QueueStore`` clauses of the contract.

Subclass :class:`QueueContract` and set ``url``. Tests of time take the ``timeline`` fixture
(:class:`~.base.Timeline`): every duration they give the backend goes through ``timeline.d()``
and time passes with ``timeline.advance()``, which moves the clock of a backend with
``clock_control`` and sleeps scaled real time on one without. Deadlines are 10 test seconds or
more, checked at least 1 after (visibility 10 s, advance 11 s) or 8 before, so order and counts
are asserted, never latency. Tests of concurrency race real tasks; nothing sleeps to hide a race.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import pytest

from ..errors import (
    InvalidReceiptError,
    MessageTooLargeError,
    QueueFullError,
    ValidationError,
)
from ..models import AgentId, AgentMessage, DeadLetterReason, Delivery, EnqueueRequest
from ..plugins import connect
from ..protocols import Backend, ClockControl, QueueStore
from .base import BackendTestBase, Timeline

__all__ = ["QueueContract"]

#: Bounds every wait of a test in real seconds: a hang fails instead of blocking the run.
DEADLINE = 10.0

SENDER = AgentId("contract", "sender")
QUEUE = AgentId("contract", "q1")
OTHER = AgentId("contract", "q2")


def message(
    recipient: AgentId = QUEUE,
    *,
    priority: int = 5,
    payload: Any = None,
    ttl: float | None = None,
) -> AgentMessage:
    """A small test message."""
    return AgentMessage(
        sender=SENDER,
        recipient=recipient,
        priority=priority,
        payload=payload if payload is not None else {},
        ttl=ttl,
    )


async def reserve_one(store: QueueStore, queue: AgentId = QUEUE, vt: float = 10.0) -> Delivery:
    """Reserve exactly one delivery (fails the test otherwise)."""
    got = await store.reserve(queue, visibility_timeout=vt)
    assert len(got) == 1, got
    return got[0]


async def drain_ids(store: QueueStore, queue: AgentId = QUEUE) -> list[str]:
    """Reserve and ack everything due; the entry ids in delivery order."""
    ids: list[str] = []
    while got := await store.reserve(queue, visibility_timeout=10, max_messages=7):
        ids.extend(d.entry_id for d in got)
        assert all(await store.ack_many([d.receipt for d in got]))
    return ids


class QueueContract(BackendTestBase):
    """The queue clauses of the contract, for any backend.

    ``shared_url`` names a URL whose backends share one store (for the namespace isolation
    test); it defaults to ``url``.
    """

    shared_url: ClassVar[str | None] = None

    @asynccontextmanager
    async def connect_with(self, **options: Any) -> AsyncGenerator[Backend, None]:
        """Another backend on ``url`` in a fresh namespace, with extra options."""
        namespace = f"t{uuid.uuid4().hex[:16]}"
        async with connect(self.target_url, namespace=namespace, **options) as backend:
            try:
                yield backend
            finally:
                await backend.drop_namespace()

    # -- basics -------------------------------------------------------------------------------

    async def test_enqueue_then_reserve_returns_the_message(self, backend: Backend) -> None:
        """Enqueue then reserve returns the message."""
        store = backend.queue
        sent = message(payload={"n": 1})
        entry_id = await store.enqueue(sent)
        delivery = await reserve_one(store)
        assert delivery.entry_id == entry_id
        assert delivery.queue == QUEUE
        assert delivery.message == sent
        assert delivery.attempt == 1
        assert delivery.max_attempts == backend.options.max_attempts
        assert delivery.last_error is None
        assert await store.reserve(QUEUE, visibility_timeout=10) == []

    async def test_each_enqueue_is_its_own_entry(self, backend: Backend) -> None:
        """Each enqueue is its own entry."""
        store = backend.queue
        sent = message()
        first = await store.enqueue(sent)
        second = await store.enqueue(sent)
        assert first != second
        assert sorted(await drain_ids(store)) == sorted([first, second])

    async def test_queues_are_separate_and_shared_type_queue_is_its_own(
        self, backend: Backend
    ) -> None:
        """Queues are separate and shared type queue is its own."""
        store = backend.queue
        shared = AgentId("contract")
        a = await store.enqueue(message(QUEUE))
        b = await store.enqueue(message(shared))
        assert await drain_ids(store, OTHER) == []
        assert await drain_ids(store, shared) == [b]
        assert await drain_ids(store, QUEUE) == [a]

    async def test_serialised_mutating_the_sent_object_changes_nothing(
        self, backend: Backend
    ) -> None:
        """Serialised mutating the sent object changes nothing."""
        store = backend.queue
        payload: dict[str, Any] = {"items": [1, 2]}
        sent = message(payload=payload)
        await store.enqueue(sent)
        payload["items"].append(3)
        payload["new"] = True
        delivery = await reserve_one(store)
        assert delivery.message.payload == {"items": [1, 2]}
        # a delivered object is a copy too: mutating it does not change a redelivery
        delivered = delivery.message.payload
        assert isinstance(delivered, dict)
        delivered["mutated"] = True
        assert await store.release(delivery.receipt)
        again = await reserve_one(store)
        assert again.message.payload == {"items": [1, 2]}

    # -- ordering -----------------------------------------------------------------------------

    async def test_highest_priority_first_then_fifo(self, backend: Backend) -> None:
        """Highest priority first then fifo."""
        store = backend.queue
        low = await store.enqueue(message(priority=1))
        normal1 = await store.enqueue(message(priority=5))
        high1 = await store.enqueue(message(priority=9))
        normal2 = await store.enqueue(message(priority=5))
        high2 = await store.enqueue(message(priority=9))
        zero = await store.enqueue(message(priority=0))
        got = await store.reserve(QUEUE, visibility_timeout=10, max_messages=10)
        assert [d.entry_id for d in got] == [high1, high2, normal1, normal2, low, zero]

    async def test_max_messages_takes_a_prefix_in_order(self, backend: Backend) -> None:
        """Max messages takes a prefix in order."""
        store = backend.queue
        ids = [await store.enqueue(message()) for _ in range(5)]
        first = await store.reserve(QUEUE, visibility_timeout=10, max_messages=3)
        second = await store.reserve(QUEUE, visibility_timeout=10, max_messages=3)
        assert [d.entry_id for d in first] == ids[:3]
        assert [d.entry_id for d in second] == ids[3:]
        assert len({d.receipt for d in first + second}) == 5

    async def test_delay_hides_an_entry_until_due(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Delay hides an entry until due."""
        store = backend.queue
        delayed = await store.enqueue(message(), delay=timeline.d(10))
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.delayed) == (0, 1)
        await timeline.advance(11)
        assert (await reserve_one(store)).entry_id == delayed

    async def test_order_within_priority_is_by_due_time(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Order within priority is by due time."""
        store = backend.queue
        late = await store.enqueue(message(), delay=timeline.d(10))
        now = await store.enqueue(message())
        await timeline.advance(11)
        after = await store.enqueue(message())
        assert await drain_ids(store) == [now, late, after]

    async def test_reclaimed_entry_orders_by_its_deadline(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Reclaimed entry orders by its deadline."""
        store = backend.queue
        first = await store.enqueue(message())
        await reserve_one(store, vt=timeline.d(10))
        await timeline.advance(11)
        later = await store.enqueue(message())
        assert await drain_ids(store) == [first, later]

    # -- visibility, receipts and attempts ----------------------------------------------------

    async def test_reserved_entry_is_invisible_then_reclaimed_without_a_sweeper(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Reserved entry is invisible then reclaimed without a sweeper."""
        store = backend.queue
        entry_id = await store.enqueue(message())
        first = await reserve_one(store, vt=timeline.d(10))
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        assert (await store.stats(QUEUE)).reserved == 1
        await timeline.advance(11)
        second = await reserve_one(store)
        assert second.entry_id == entry_id
        assert second.attempt == 2
        assert second.receipt != first.receipt
        assert await store.ack(first.receipt) is False
        assert await store.ack(second.receipt) is True
        assert (await store.stats(QUEUE)).live == 0

    async def test_stale_receipt_changes_nothing(self, backend: Backend) -> None:
        """Stale receipt changes nothing."""
        store = backend.queue
        await store.enqueue(message())
        delivery = await reserve_one(store)
        assert await store.ack(delivery.receipt) is True
        assert await store.ack(delivery.receipt) is True  # a retried ack after a lost reply
        assert await store.nack(delivery.receipt) is False
        assert await store.release(delivery.receipt) is False
        assert await store.extend(delivery.receipt, visibility_timeout=10) is False
        assert await store.dead_letter(delivery.receipt, reason="x") is False
        assert await store.dead_letter_count(QUEUE) == 0
        assert (await store.stats(QUEUE)).live == 0

    async def test_receipt_of_a_released_delivery_is_stale(self, backend: Backend) -> None:
        """Receipt of a released delivery is stale."""
        store = backend.queue
        await store.enqueue(message())
        first = await reserve_one(store)
        assert await store.release(first.receipt) is True
        second = await reserve_one(store)
        assert await store.ack(first.receipt) is False
        assert await store.nack(first.receipt) is False
        assert await store.ack(second.receipt) is True

    async def test_malformed_receipt_raises(self, backend: Backend) -> None:
        """Malformed receipt raises."""
        store = backend.queue
        for bad in ("", "nonsense", "x" * 10):
            with pytest.raises(InvalidReceiptError):
                await store.ack(bad)
            with pytest.raises(InvalidReceiptError):
                await store.nack(bad)
            with pytest.raises(InvalidReceiptError):
                await store.release(bad)

    async def test_attempts_count_nacks_and_expiries_not_releases(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Attempts count nacks and expiries not releases."""
        store = backend.queue
        await store.enqueue(message(), max_attempts=10)
        d1 = await reserve_one(store)
        assert d1.attempt == 1
        assert await store.release(d1.receipt)
        d2 = await reserve_one(store)
        assert d2.attempt == 1
        assert await store.nack(d2.receipt, error="boom")
        d3 = await reserve_one(store, vt=timeline.d(10))
        assert d3.attempt == 2
        assert d3.last_error == "boom"
        await timeline.advance(11)
        d4 = await reserve_one(store)
        assert d4.attempt == 3
        assert await store.release(d4.receipt)
        assert (await reserve_one(store)).attempt == 3

    async def test_nack_delay_makes_it_due_later(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Nack delay makes it due later."""
        store = backend.queue
        await store.enqueue(message())
        delivery = await reserve_one(store)
        assert await store.nack(delivery.receipt, delay=timeline.d(10))
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        assert (await store.stats(QUEUE)).delayed == 1
        await timeline.advance(11)
        assert (await reserve_one(store)).attempt == 2

    async def test_extend_keeps_it_reserved(self, backend: Backend, timeline: Timeline) -> None:
        """Extend keeps it reserved."""
        store = backend.queue
        await store.enqueue(message())
        delivery = await reserve_one(store, vt=timeline.d(10))
        await timeline.advance(5)
        assert await store.extend(delivery.receipt, visibility_timeout=timeline.d(20))
        await timeline.advance(10)  # 5 past the first deadline, 10 before the extended one
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        assert await store.ack(delivery.receipt) is True

    async def test_max_attempts_by_nack_dead_letters(self, backend: Backend) -> None:
        """Max attempts by nack dead letters."""
        store = backend.queue
        entry_id = await store.enqueue(message(), max_attempts=2)
        first = await reserve_one(store)
        assert not first.is_last_attempt
        assert await store.nack(first.receipt, error="e1")
        second = await reserve_one(store)
        assert second.attempt == 2
        assert second.is_last_attempt
        assert await store.nack(second.receipt, error="e2")
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        dead = await store.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert dead.reason == DeadLetterReason.MAX_ATTEMPTS
        assert dead.error == "e2"
        assert dead.attempts == 2
        assert (await store.stats(QUEUE)).live == 0

    async def test_max_attempts_by_expired_reservation_dead_letters(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Max attempts by expired reservation dead letters."""
        store = backend.queue
        entry_id = await store.enqueue(message(), max_attempts=1)
        await reserve_one(store, vt=timeline.d(10))
        await timeline.advance(11)
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        dead = await store.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert dead.reason == DeadLetterReason.MAX_ATTEMPTS
        assert dead.attempts == 1

    async def test_dead_letter_by_receipt(self, backend: Backend) -> None:
        """Dead letter by receipt."""
        store = backend.queue
        entry_id = await store.enqueue(message(payload={"k": "v"}))
        delivery = await reserve_one(store)
        assert await store.dead_letter(delivery.receipt, reason="poison", error="bad input")
        dead = await store.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert (dead.reason, dead.error, dead.attempts) == ("poison", "bad input", 1)
        assert dead.message is not None
        assert dead.message.payload == {"k": "v"}
        assert dead.dead_at >= dead.enqueued_at
        stats = await store.stats(QUEUE)
        assert (stats.live, stats.dead) == (0, 1)

    # -- ttl ----------------------------------------------------------------------------------

    async def test_expired_message_is_never_delivered(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Expired message is never delivered."""
        store = backend.queue
        entry_id = await store.enqueue(message(ttl=timeline.d(10)))
        keep = await store.enqueue(message(ttl=timeline.d(100)))
        await timeline.advance(11)
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.dead) == (1, 1)
        assert (await reserve_one(store)).entry_id == keep
        dead = await store.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert dead.reason == DeadLetterReason.EXPIRED

    async def test_expired_while_delayed_or_reserved(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Expired while delayed or reserved."""
        store = backend.queue
        delayed = await store.enqueue(message(ttl=timeline.d(10)), delay=timeline.d(20))
        reserved = await store.enqueue(message(ttl=timeline.d(10)))
        delivery = await reserve_one(store, vt=timeline.d(30))
        await timeline.advance(11)
        assert await store.release(delivery.receipt)
        assert await store.reserve(QUEUE, visibility_timeout=10) == []
        assert await store.dead_letter_count(QUEUE) == 2
        for entry_id in (delayed, reserved):
            dead = await store.get_dead_letter(QUEUE, entry_id)
            assert dead is not None
            assert dead.reason == DeadLetterReason.EXPIRED

    # -- dedup and entry ids -------------------------------------------------------------------

    async def test_dedup_key_collapses_sends_while_live(self, backend: Backend) -> None:
        """Dedup key collapses sends while live."""
        store = backend.queue
        first = await store.enqueue(message(), dedup_key="k")
        assert await store.enqueue(message(), dedup_key="k") == first
        other = await store.enqueue(message(), dedup_key="k", entry_id="explicit")
        assert other == first
        assert await store.enqueue(message(OTHER), dedup_key="k") != first  # scope: the queue
        assert (await store.stats(QUEUE)).live == 1
        delivery = await reserve_one(store)
        assert await store.enqueue(message(), dedup_key="k") == first  # reserved: still live
        assert await store.ack(delivery.receipt)
        fresh = await store.enqueue(message(), dedup_key="k")  # dedup_window 0: free again
        assert fresh != first

    async def test_dedup_key_of_a_dead_entry_is_free(self, backend: Backend) -> None:
        """Dedup key of a dead entry is free."""
        store = backend.queue
        first = await store.enqueue(message(), dedup_key="k")
        delivery = await reserve_one(store)
        assert await store.dead_letter(delivery.receipt, reason="x")
        assert await store.enqueue(message(), dedup_key="k") != first

    async def test_dedup_window_after_settling(self, timeline: Timeline) -> None:
        """Dedup window after settling."""
        async with self.connect_with(dedup_window=timeline.d(10)) as backend:
            store = backend.queue
            first = await store.enqueue(message(), dedup_key="k")
            assert await store.ack((await reserve_one(store)).receipt)
            assert await store.enqueue(message(), dedup_key="k") == first
            await self.timeline_for(backend).advance(11)
            assert await store.enqueue(message(), dedup_key="k") != first

    async def test_repeated_entry_id_writes_nothing(self, backend: Backend) -> None:
        """Repeated entry id writes nothing."""
        store = backend.queue
        assert await store.enqueue(message(), entry_id="e-1") == "e-1"
        assert await store.enqueue(message(priority=9), entry_id="e-1") == "e-1"
        assert (await store.stats(QUEUE)).live == 1
        assert await store.enqueue(message(OTHER), entry_id="e-1") == "e-1"  # scope: the queue
        assert (await store.stats(OTHER)).live == 1
        delivery = await reserve_one(store)
        assert delivery.message.priority == 5
        assert await store.ack(delivery.receipt)
        assert await store.enqueue(message(), entry_id="e-1") == "e-1"  # settled, retained
        assert (await store.stats(QUEUE)).live == 0

    async def test_entry_id_of_a_dead_letter_writes_nothing(self, backend: Backend) -> None:
        """Entry id of a dead letter writes nothing."""
        store = backend.queue
        await store.enqueue(message(), entry_id="e-2")
        assert await store.dead_letter((await reserve_one(store)).receipt, reason="x")
        assert await store.enqueue(message(), entry_id="e-2") == "e-2"
        assert (await store.stats(QUEUE)).live == 0

    async def test_entry_id_retention_ends(self, timeline: Timeline) -> None:
        """Entry id retention ends."""
        async with self.connect_with(entry_id_retention=timeline.d(10)) as backend:
            store = backend.queue
            await store.enqueue(message(), entry_id="e-3")
            assert await store.ack((await reserve_one(store)).receipt)
            assert await store.enqueue(message(), entry_id="e-3") == "e-3"
            assert (await store.stats(QUEUE)).live == 0
            await self.timeline_for(backend).advance(11)
            assert await store.enqueue(message(), entry_id="e-3") == "e-3"
            assert (await store.stats(QUEUE)).live == 1

    # -- dead letters -------------------------------------------------------------------------

    async def _kill(self, store: QueueStore, n: int, queue: AgentId = QUEUE) -> list[str]:
        ids: list[str] = []
        for i in range(n):
            ids.append(await store.enqueue(message(queue, payload={"i": i})))
            assert await store.dead_letter((await reserve_one(store, queue)).receipt, reason="x")
        return ids

    async def test_dead_letters_are_paged_oldest_first(self, backend: Backend) -> None:
        """Dead letters are paged oldest first."""
        store = backend.queue
        ids = await self._kill(store, 5)
        assert await store.dead_letter_count(QUEUE) == 5
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            page = await store.dead_letters(QUEUE, limit=2, cursor=cursor)
            pages += 1
            assert len(page.items) <= 2
            seen.extend(d.entry_id for d in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == ids
        assert pages == 3
        assert await store.get_dead_letter(QUEUE, "missing") is None
        empty = await store.dead_letters(OTHER)
        assert (empty.items, empty.next_cursor) == ([], None)

    async def test_replay_some_and_all(self, backend: Backend) -> None:
        """Replay some and all."""
        store = backend.queue
        ids = await self._kill(store, 3)
        assert await store.replay_dead_letters(QUEUE, [ids[1], "missing"]) == [ids[1]]
        assert await store.dead_letter_count(QUEUE) == 2
        delivery = await reserve_one(store)
        assert (delivery.entry_id, delivery.attempt) == (ids[1], 1)
        assert await store.ack(delivery.receipt)
        assert await store.replay_dead_letters(QUEUE) == [ids[0], ids[2]]
        assert await store.dead_letter_count(QUEUE) == 0
        assert await drain_ids(store) == [ids[0], ids[2]]

    async def test_replay_resets_the_attempt_count(self, backend: Backend) -> None:
        """Replay resets the attempt count of an entry that died after several attempts."""
        store = backend.queue
        entry_id = await store.enqueue(message(), max_attempts=2)
        assert await store.nack((await reserve_one(store)).receipt)
        assert await store.nack((await reserve_one(store)).receipt)  # dies at attempt 2
        dead = await store.get_dead_letter(QUEUE, entry_id)
        assert dead is not None
        assert dead.attempts == 2
        assert await store.replay_dead_letters(QUEUE) == [entry_id]
        again = await reserve_one(store)
        assert (again.entry_id, again.attempt, again.is_last_attempt) == (entry_id, 1, False)

    async def test_replay_is_not_refused_by_the_cap(self) -> None:
        """Replay is not refused by the cap."""
        async with self.connect_with(max_queue_length=1) as backend:
            store = backend.queue
            dead = await self._kill(store, 1)
            await store.enqueue(message())
            with pytest.raises(QueueFullError):
                await store.enqueue(message())
            assert await store.replay_dead_letters(QUEUE) == dead
            assert (await store.stats(QUEUE)).live == 2

    async def test_purge(self, backend: Backend) -> None:
        """Purge."""
        store = backend.queue
        ids = await self._kill(store, 4)
        assert await store.purge_dead_letters(QUEUE, [ids[0], "missing"]) == 1
        assert await store.get_dead_letter(QUEUE, ids[0]) is None
        assert await store.purge_dead_letters(QUEUE) == 3
        assert await store.dead_letter_count(QUEUE) == 0
        assert await store.purge_dead_letters(OTHER) == 0

    async def test_dead_letter_retention_by_length(self) -> None:
        """Dead letter retention by length."""
        async with self.connect_with(dead_letter_max_length=2) as backend:
            store = backend.queue
            ids = await self._kill(store, 4)
            page = await store.dead_letters(QUEUE)
            assert [d.entry_id for d in page.items] == ids[2:]

    async def test_dead_letter_retention_by_age(self, timeline: Timeline) -> None:
        """Dead letter retention by age."""
        async with self.connect_with(dead_letter_max_age=timeline.d(10)) as backend:
            store = backend.queue
            await self._kill(store, 2)
            await self.timeline_for(backend).advance(11)
            kept = await self._kill(store, 1)
            assert await store.dead_letter_count(QUEUE) == 1
            assert [d.entry_id for d in (await store.dead_letters(QUEUE)).items] == kept

    # -- stats, index, drop -------------------------------------------------------------------

    async def test_stats_counts_each_state(self, backend: Backend) -> None:
        """Stats counts each state."""
        store = backend.queue
        await store.enqueue(message())
        await store.enqueue(message())
        await store.enqueue(message(), delay=10)
        await reserve_one(store)
        await self._kill(store, 1)
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.delayed, stats.reserved, stats.dead) == (1, 1, 1, 1)
        assert stats.queue == QUEUE
        unknown = await store.stats(OTHER)
        assert (unknown.live, unknown.dead) == (0, 0)

    async def test_queues_index_and_stats_all(self, backend: Backend) -> None:
        """Queues index and stats all."""
        store = backend.queue
        names = [AgentId("contract", f"s{i}") for i in range(5)]
        for name in reversed(names):
            await store.enqueue(message(name))
        assert await store.queues() == names
        seen: list[AgentId] = []
        cursor: str | None = None
        while True:
            page = await store.stats_all(limit=2, cursor=cursor)
            assert len(page.items) <= 2
            seen.extend(s.queue for s in page.items)
            assert all(s.ready == 1 for s in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == sorted(names, key=str)

    async def test_empty_queue_stays_listed_until_dropped(self, backend: Backend) -> None:
        """Empty queue stays listed until dropped."""
        store = backend.queue
        assert await store.queues() == []
        await store.enqueue(message())
        assert len(await drain_ids(store)) == 1
        assert await store.queues() == [QUEUE]  # empty, still listed
        await self._kill(store, 1)
        await store.enqueue(message(), delay=100)
        await store.enqueue(message())
        assert await store.drop_queue(QUEUE) == 3  # one ready, one delayed, one dead
        assert await store.queues() == []
        assert (await store.stats(QUEUE)).dead == 0
        assert await store.drop_queue(QUEUE) == 0

    async def test_reclaim_counts_expired_reservations(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """Reclaim requeues expired reservations (dead-letters the exhausted) and counts them."""
        store = backend.queue
        assert await store.reclaim(QUEUE) == 0  # no such queue
        kept = await store.enqueue(message())
        exhausted = await store.enqueue(message(), max_attempts=1)
        first = await store.reserve(QUEUE, visibility_timeout=timeline.d(10), max_messages=2)
        assert {d.entry_id for d in first} == {kept, exhausted}
        await store.enqueue(message())  # ready, not reserved: not counted
        assert await store.reclaim(QUEUE) == 0  # nothing expired yet
        await timeline.advance(11)
        assert await store.reclaim(QUEUE) == 2
        assert await store.reclaim(QUEUE) == 0
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved, stats.dead) == (2, 0, 1)
        assert await store.ack_many([d.receipt for d in first]) == [False, False]

    async def test_queue_ttl_drops_an_idle_queue(
        self, backend: Backend, timeline: Timeline
    ) -> None:
        """A queue with a ttl is dropped once idle that long; enqueue and reserve keep it."""
        store = backend.queue
        await store.set_queue_ttl(QUEUE, timeline.d(20))
        assert await store.queues() == [QUEUE]  # created by set_queue_ttl
        await store.enqueue(message())
        await timeline.advance(10)
        assert await store.reserve(QUEUE, visibility_timeout=10) != []  # used: ttl restarts
        await timeline.advance(10)  # 10 s idle
        assert await store.queues() == [QUEUE]
        await timeline.advance(12)  # 22 s idle
        assert await store.queues() == []
        assert (await store.stats(QUEUE)).live == 0
        await store.enqueue(message())  # a later enqueue makes a new queue, without a ttl
        await timeline.advance(30)
        assert await store.queues() == [QUEUE]

    async def test_queue_ttl_none_keeps_it(self, backend: Backend, timeline: Timeline) -> None:
        """``set_queue_ttl(queue, None)`` removes the ttl; bad ttls are rejected."""
        store = backend.queue
        await store.set_queue_ttl(QUEUE, timeline.d(10))
        await store.set_queue_ttl(QUEUE, None)
        await timeline.advance(20)
        assert await store.queues() == [QUEUE]
        bad_ttls: list[Any] = [0, -1, float("nan"), "10"]  # Any: wrong types on purpose
        for bad in bad_ttls:
            with pytest.raises(ValidationError):
                await store.set_queue_ttl(OTHER, bad)
        assert await store.queues() == [QUEUE]

    async def test_drop_queue_makes_receipts_stale(self, backend: Backend) -> None:
        """Drop queue makes receipts stale."""
        store = backend.queue
        await store.enqueue(message())
        delivery = await reserve_one(store)
        assert await store.drop_queue(QUEUE) == 1
        assert await store.ack(delivery.receipt) is False

    async def test_namespaces_are_isolated(self) -> None:
        """Namespaces are isolated."""
        url = self.shared_url or self.target_url
        first, second = (f"t{uuid.uuid4().hex[:16]}" for _ in range(2))
        async with connect(url, namespace=first) as a, connect(url, namespace=second) as b:
            try:
                await a.queue.enqueue(message())
                assert await b.queue.queues() == []
                assert await b.queue.reserve(QUEUE, visibility_timeout=10) == []
                assert (await a.queue.stats(QUEUE)).ready == 1
                await b.drop_namespace()
                assert (await a.queue.stats(QUEUE)).ready == 1
            finally:
                await a.drop_namespace()
                await b.drop_namespace()

    async def test_drop_namespace_forgets_queues(self) -> None:
        """Drop namespace forgets queues."""
        async with self.connect_with() as backend:
            await backend.queue.enqueue(message())
            await backend.drop_namespace()
            assert await backend.queue.queues() == []
            assert (await backend.queue.stats(QUEUE)).live == 0

    # -- cap and size -------------------------------------------------------------------------

    async def test_cap_counts_ready_delayed_and_reserved(self) -> None:
        """Cap counts ready delayed and reserved."""
        async with self.connect_with(max_queue_length=3) as backend:
            store = backend.queue
            await store.enqueue(message())
            await store.enqueue(message(), delay=100)
            await store.enqueue(message())
            await reserve_one(store)
            with pytest.raises(QueueFullError):
                await store.enqueue(message())
            assert (await store.stats(QUEUE)).live == 3
            await store.enqueue(message(OTHER))  # the cap is per queue

    async def test_message_too_large_writes_nothing(self) -> None:
        """Message too large writes nothing."""
        async with self.connect_with(max_message_bytes=300) as backend:
            store = backend.queue
            with pytest.raises(MessageTooLargeError):
                await store.enqueue(message(payload={"big": "x" * 400}))
            with pytest.raises(MessageTooLargeError):
                await store.enqueue_many(
                    [
                        EnqueueRequest(message=message()),
                        EnqueueRequest(message=message(payload={"big": "x" * 400})),
                    ]
                )
            assert (await store.stats(QUEUE)).live == 0

    # -- batches ------------------------------------------------------------------------------

    async def test_enqueue_many_in_order(self, backend: Backend) -> None:
        """Enqueue many in order."""
        store = backend.queue
        ids = await store.enqueue_many(
            [
                EnqueueRequest(message=message(priority=1)),
                EnqueueRequest(message=message(priority=9)),
                EnqueueRequest(message=message(), entry_id="b-1"),
                EnqueueRequest(message=message(), entry_id="b-1"),
                EnqueueRequest(message=message(), dedup_key="d"),
                EnqueueRequest(message=message(), dedup_key="d"),
                EnqueueRequest(message=message(), delay=100),
            ]
        )
        assert ids[2] == ids[3] == "b-1"
        assert ids[4] == ids[5]
        assert len(set(ids)) == 5
        assert await store.enqueue_many([]) == []
        assert await drain_ids(store) == [ids[1], ids[2], ids[4], ids[0]]

    async def test_enqueue_many_without_entry_ids_resolves_dedup_keys(
        self, backend: Backend
    ) -> None:
        """Enqueue many, the store making the ids, resolves dedup keys as enqueue does.

        Per request the id its dedup key resolves to: a live entry's, or that of the batch's
        own first request with that key.
        """
        store = backend.queue
        live = await store.enqueue(message(), dedup_key="a")
        ids = await store.enqueue_many(
            [
                EnqueueRequest(message=message(), dedup_key="a"),
                EnqueueRequest(message=message(), dedup_key="b"),
                EnqueueRequest(message=message()),
                EnqueueRequest(message=message(), dedup_key="b"),
            ]
        )
        assert ids[0] == live
        assert ids[1] == ids[3]
        assert len({live, ids[1], ids[2]}) == 3
        assert (await store.stats(QUEUE)).live == 3
        assert await drain_ids(store) == [live, ids[1], ids[2]]

    async def test_enqueue_many_is_all_or_nothing_at_the_cap(self) -> None:
        """Enqueue many is all or nothing at the cap."""
        async with self.connect_with(max_queue_length=3) as backend:
            store = backend.queue
            await store.enqueue(message())
            await store.enqueue(message())
            batch = [EnqueueRequest(message=message()) for _ in range(2)]
            with pytest.raises(QueueFullError):
                await store.enqueue_many(batch)
            assert (await store.stats(QUEUE)).live == 2
            assert len(await store.enqueue_many(batch[:1])) == 1

    async def test_enqueue_many_takes_one_queue(self, backend: Backend) -> None:
        """Enqueue many takes one queue."""
        store = backend.queue
        with pytest.raises(ValidationError):
            await store.enqueue_many(
                [EnqueueRequest(message=message()), EnqueueRequest(message=message(OTHER))]
            )
        assert await store.queues() == []

    async def test_ack_many(self, backend: Backend) -> None:
        """Ack many."""
        store = backend.queue
        for _ in range(3):
            await store.enqueue(message())
        got = await store.reserve(QUEUE, visibility_timeout=10, max_messages=3)
        assert await store.ack(got[0].receipt)
        assert await store.ack_many([d.receipt for d in got]) == [True, True, True]
        assert await store.ack_many([]) == []
        await store.enqueue(message(OTHER))
        other = await reserve_one(store, OTHER)
        with pytest.raises(ValidationError):
            await store.ack_many([got[0].receipt, other.receipt])
        assert (await store.stats(OTHER)).reserved == 1

    async def test_ack_many_settles_as_ack_does(self, backend: Backend, timeline: Timeline) -> None:
        """A batch reserve and ack settle entries with a ttl and a dedup key as one at a time does.

        The acked entries never expire into dead letters, their dedup keys are free again
        (a dedup window of 0), and a receipt repeated in the batch answers True.
        """
        store = backend.queue
        keyed = await store.enqueue(message(ttl=timeline.d(10)), dedup_key="k")
        timed = await store.enqueue(message(ttl=timeline.d(10)))
        got = await store.reserve(QUEUE, visibility_timeout=timeline.d(60), max_messages=2)
        assert [d.entry_id for d in got] == [keyed, timed]
        receipts = [d.receipt for d in got]
        assert await store.ack_many([*receipts, receipts[0]]) == [True, True, True]
        fresh = await store.enqueue(message(), dedup_key="k")
        assert fresh != keyed  # the key was released
        await timeline.advance(11)  # past both ttls: what is due is checked on the next call
        assert (await reserve_one(store)).entry_id == fresh
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved, stats.dead) == (0, 1, 0)

    # -- waiting ------------------------------------------------------------------------------

    async def test_wait_is_woken_by_enqueue(self, backend: Backend) -> None:
        """Wait is woken by enqueue."""
        store = backend.queue
        got: list[Delivery] = []
        sent: list[str] = []

        async def consumer() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=10, wait=30))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                sent.append(await store.enqueue(message()))
        assert [d.entry_id for d in got] == sent

    async def test_wait_is_woken_by_the_clock(self, backend: Backend, timeline: Timeline) -> None:
        """A waiting reserve gets an entry whose delay ends while it waits."""
        store = backend.queue
        entry_id = await store.enqueue(message(), delay=timeline.d(10))
        got: list[Delivery] = []

        async def consumer() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=10, wait=DEADLINE / 2))

        with anyio.fail_after(DEADLINE):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                await timeline.advance(11)
        assert [d.entry_id for d in got] == [entry_id]

    async def test_clock_control_advance_wakes_a_waiting_reserve(
        self, backend: Backend, clock: ClockControl
    ) -> None:
        """clock_control only: an advance of 1000 s moves the clock and wakes a waiting reserve."""
        store = backend.queue
        entry_id = await store.enqueue(message(), delay=1000)
        before = await clock.now()
        got: list[Delivery] = []

        async def consumer() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=10, wait=30))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.wait_all_tasks_blocked()
                assert got == []
                await clock.advance(1001)
        assert [d.entry_id for d in got] == [entry_id]
        assert await clock.now() - before >= 1000

    async def test_wait_is_woken_by_release(self, backend: Backend) -> None:
        """Wait is woken by release."""
        store = backend.queue
        await store.enqueue(message())
        held = await reserve_one(store)
        got: list[Delivery] = []

        async def consumer() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=10, wait=30))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.wait_all_tasks_blocked()
                assert await store.release(held.receipt)
        assert [d.entry_id for d in got] == [held.entry_id]

    async def test_wait_elapses_empty(self, backend: Backend) -> None:
        """Wait elapses empty."""
        store = backend.queue
        with anyio.fail_after(5):
            start = anyio.current_time()
            assert await store.reserve(QUEUE, visibility_timeout=10, wait=0.05) == []
            assert anyio.current_time() - start >= 0.04

    # -- concurrency --------------------------------------------------------------------------

    async def test_racing_reservers_never_share_an_entry(self, backend: Backend) -> None:
        """Racing reservers never share an entry."""
        store = backend.queue
        ids = await store.enqueue_many([EnqueueRequest(message=message())] * 60)
        seen: list[str] = []

        async def reserver() -> None:
            while got := await store.reserve(QUEUE, visibility_timeout=30, max_messages=3):
                seen.extend(d.entry_id for d in got)
                await anyio.lowlevel.checkpoint()

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(reserver)
        assert sorted(seen) == sorted(ids)

    async def test_racing_producers_never_pass_the_cap(self) -> None:
        """Racing producers never pass the cap."""
        async with self.connect_with(max_queue_length=5) as backend:
            store = backend.queue
            outcomes: list[bool] = []

            async def producer() -> None:
                try:
                    await store.enqueue(message())
                    outcomes.append(True)
                except QueueFullError:
                    outcomes.append(False)

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    for _ in range(20):
                        tg.start_soon(producer)
            assert outcomes.count(True) == 5
            assert (await store.stats(QUEUE)).live == 5

    # -- bad input ----------------------------------------------------------------------------

    async def test_bad_input_raises_and_changes_nothing(self, backend: Backend) -> None:
        """Bad input raises and changes nothing."""
        store = backend.queue
        await store.enqueue(message())
        delivery = await reserve_one(store)
        wrong: Any = "not a message"  # wrong types on purpose
        bad_calls: list[Any] = [
            lambda: store.enqueue(wrong),
            lambda: store.enqueue(message(), delay=-1),
            lambda: store.enqueue(message(), max_attempts=0),
            lambda: store.enqueue(message(), entry_id=""),
            lambda: store.enqueue(message(), dedup_key=""),
            lambda: store.enqueue_many([wrong]),
            lambda: store.reserve(QUEUE, visibility_timeout=0),
            lambda: store.reserve(QUEUE, visibility_timeout=-1),
            lambda: store.reserve(QUEUE, visibility_timeout=float("nan")),
            lambda: store.reserve(QUEUE, visibility_timeout=10, max_messages=0),
            lambda: store.reserve(QUEUE, visibility_timeout=10, max_messages=1001),
            lambda: store.reserve(QUEUE, visibility_timeout=10, wait=-1),
            lambda: store.reserve(wrong, visibility_timeout=10),
            lambda: store.nack(delivery.receipt, delay=-1),
            lambda: store.extend(delivery.receipt, visibility_timeout=0),
            lambda: store.dead_letter(delivery.receipt, reason=""),
            lambda: store.dead_letters(QUEUE, limit=0),
            lambda: store.dead_letters(QUEUE, limit=1001),
            lambda: store.stats_all(limit=0),
            lambda: store.replay_dead_letters(QUEUE, "abc"),
        ]
        for call in bad_calls:
            with pytest.raises(ValidationError):
                await call()
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved, stats.delayed, stats.dead) == (0, 1, 0, 0)
        assert await store.queues() == [QUEUE]
        assert await store.ack(delivery.receipt) is True
