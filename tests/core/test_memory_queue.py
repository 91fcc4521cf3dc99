"""The memory driver's queue store: the queue contract, plus memory-specific tests."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tta_agent_coordination._codec import decode_message, encode_message
from tta_agent_coordination.backends._memory_queue import _new_entry_id, _parse_receipt
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.errors import InvalidReceiptError, MessageTooLargeError, ValidationError
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery, EnqueueRequest
from tta_agent_coordination.settings import BackendOptions
from tta_agent_coordination.testing.queue_contract import QueueContract


class TestMemoryQueue(QueueContract):
    url: ClassVar[str] = "memory://"
    shared_url: ClassVar[str | None] = "memory://queue-contract"


class TestMemoryQueueManualClock(QueueContract):
    url: ClassVar[str] = "memory://?clock=manual"
    shared_url: ClassVar[str | None] = "memory://queue-contract-manual"


# ---------------------------------------------------------------------------------------------
# Memory-specific tests
# ---------------------------------------------------------------------------------------------

QUEUE = AgentId("mem", "q")
SENDER = AgentId("mem", "sender")


def msg(*, priority: int = 5, ttl: float | None = None) -> AgentMessage:
    return AgentMessage(sender=SENDER, recipient=QUEUE, priority=priority, ttl=ttl)


def manual(**options: Any) -> MemoryBackend:
    return MemoryBackend(BackendOptions(**options), clock=MemoryClock(manual=True, start=1e9))


def test_codec_round_trip_and_limit() -> None:
    sent = msg()
    data = encode_message(sent, 10_000)
    assert isinstance(data, bytes)
    assert decode_message(data) == sent
    assert decode_message(data.decode()) == sent
    with pytest.raises(MessageTooLargeError) as info:
        encode_message(sent, 10)
    assert (info.value.size, info.value.limit) == (len(data), 10)
    with pytest.raises(ValidationError):
        encode_message({"not": "a message"}, 10_000)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        decode_message(b"{}")


def test_entry_ids_are_uuid4_hex() -> None:
    for _ in range(100):
        entry_id = _new_entry_id()
        assert uuid.UUID(hex=entry_id).version == 4
        assert uuid.UUID(hex=entry_id).hex == entry_id


@pytest.mark.parametrize(
    "receipt",
    [
        "",
        "mq1.",
        "mq1.mem:q/0123456789abcdef/",  # no entry id
        "mq1.mem:q/0123456789ABCDEF/e",  # upper-case token
        "mq1.mem:q/0123/e",  # short token
        "mq1.me m:q/0123456789abcdef/e",  # bad queue name
        "mq2.mem:q/0123456789abcdef/e",  # another layout version
        "mq1.mem:q/0123456789abcdef/" + "e" * 129,  # entry id too long
    ],
)
def test_malformed_receipts_raise(receipt: str) -> None:
    with pytest.raises(InvalidReceiptError):
        _parse_receipt(receipt)


def test_receipt_parts_and_non_string() -> None:
    assert _parse_receipt("mq1.mem:q/0123456789abcdef/a/b") == ("mem:q", "0123456789abcdef", "a/b")
    with pytest.raises(InvalidReceiptError):
        _parse_receipt(123)


class TestMemoryQueueDetails:
    """Memory-driver details, on asyncio and trio (waits under both)."""

    @pytest.fixture(params=["asyncio", "trio"])
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    @pytest.mark.anyio
    async def test_well_formed_unknown_receipts_are_stale(self) -> None:
        store = manual().queue
        assert await store.ack("mq1.nobody/0123456789abcdef/e") is False
        await store.enqueue(msg())
        assert await store.ack("mq1.mem:q/0123456789abcdef/e") is False
        assert await store.nack("mq1.mem:q/0123456789abcdef/e") is False
        with pytest.raises(InvalidReceiptError):
            await store.ack_many(["mq1.mem:q/0123456789abcdef/e", "bad"])
        with pytest.raises(ValidationError):
            await store.ack_many("mq1.mem:q/0123456789abcdef/e")

    @pytest.mark.anyio
    async def test_acting_after_the_deadline_reclaims_and_is_stale(self) -> None:
        backend = manual()
        store = backend.queue
        await store.enqueue(msg())
        delivery = (await store.reserve(QUEUE, visibility_timeout=10))[0]
        await backend.clock.advance(10)
        assert await store.ack(delivery.receipt) is False
        stats = await store.stats(QUEUE)
        assert (stats.ready, stats.reserved) == (1, 0)
        again = (await store.reserve(QUEUE, visibility_timeout=10))[0]
        assert again.attempt == 2
        assert await store.extend(again.receipt, visibility_timeout=5)

    @pytest.mark.anyio
    async def test_type_checks(self) -> None:
        store = manual().queue
        await store.enqueue(msg())
        delivery = (await store.reserve(QUEUE, visibility_timeout=10))[0]
        for call in (
            lambda: store.reserve(QUEUE, visibility_timeout="10"),  # type: ignore[arg-type]
            lambda: store.reserve(QUEUE, visibility_timeout=True),
            lambda: store.reserve(QUEUE, visibility_timeout=10, max_messages=1.5),  # type: ignore[arg-type]
            lambda: store.nack(delivery.receipt, error=5),  # type: ignore[arg-type]
            lambda: store.enqueue_many("x"),  # type: ignore[arg-type]
            lambda: store.dead_letters(QUEUE, cursor="x1"),
            lambda: store.stats_all(cursor="not a queue!"),
            lambda: store.replay_dead_letters(QUEUE, [""]),
            lambda: store.get_dead_letter(QUEUE, ""),
        ):
            with pytest.raises(ValidationError):
                await call()

    @pytest.mark.anyio
    async def test_wait_on_an_existing_empty_queue_times_out(self) -> None:
        backend = MemoryBackend()
        store = backend.queue
        await store.enqueue(msg())
        delivery = (await store.reserve(QUEUE, visibility_timeout=100))[0]
        assert await store.ack(delivery.receipt)  # leaves a stale item atop the reserved heap
        with anyio.fail_after(5):
            assert await store.reserve(QUEUE, visibility_timeout=10, wait=0.02) == []
        with anyio.fail_after(5):
            assert (
                await store.reserve(AgentId("mem", "none"), visibility_timeout=10, wait=0.02) == []
            )
        assert await store.reserve(AgentId("mem", "none"), visibility_timeout=10) == []

    @pytest.mark.anyio
    async def test_wait_is_woken_by_the_due_time_on_the_system_clock(self) -> None:
        store = MemoryBackend().queue
        entry_id = await store.enqueue(msg(), delay=0.05)
        with anyio.fail_after(5):
            got = await store.reserve(QUEUE, visibility_timeout=10, wait=3)
        assert [d.entry_id for d in got] == [entry_id]

    @pytest.mark.anyio
    async def test_wait_is_woken_by_enqueue_many_and_clear(self) -> None:
        backend = manual()
        store = backend.queue
        got: list[Delivery] = []

        async def consumer() -> None:
            got.extend(await store.reserve(QUEUE, visibility_timeout=10, wait=30))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.wait_all_tasks_blocked()
                await store.enqueue_many([EnqueueRequest(message=msg())])
        assert len(got) == 1
        result: list[list[Delivery]] = []

        async def waiter() -> None:
            result.append(await store.reserve(QUEUE, visibility_timeout=10, wait=0.5))

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                tg.start_soon(waiter)
                await anyio.wait_all_tasks_blocked()
                await backend.drop_namespace()  # wakes the waiters, who find nothing
        assert result == [[], []]


@pytest.mark.anyio
async def test_heaps_are_compacted() -> None:
    backend = manual(max_queue_length=100_000)
    store = backend.queue
    # reserved-heap garbage from acks (reserved for long)
    await store.enqueue_many([EnqueueRequest(message=msg(ttl=1000)) for _ in range(600)])
    got = await store.reserve(QUEUE, visibility_timeout=100, max_messages=600)
    assert all(await store.ack_many([d.receipt for d in got]))
    queue = store._queues[str(QUEUE)]
    assert len(queue.reserved) <= 2 * queue.n_reserved + 256
    await store.stats(QUEUE)
    assert len(queue.expiry) <= 2 * len(queue.entries) + 256
    # ready- and delayed-heap garbage from ttl expiry
    await store.enqueue_many([EnqueueRequest(message=msg(ttl=5)) for _ in range(300)])
    await store.enqueue_many([EnqueueRequest(message=msg(ttl=5), delay=50) for _ in range(300)])
    await backend.clock.advance(6)
    stats = await store.stats(QUEUE)
    assert (stats.live, stats.dead) == (0, 600)
    assert len(queue.ready) <= 256
    assert len(queue.delayed) <= 256
    # the dead-letter paging index is compacted after a purge
    assert await store.purge_dead_letters(QUEUE) == 600
    assert len(queue.dead_seqs) <= 256
    assert (await store.dead_letters(QUEUE)).items == []


@pytest.mark.anyio
async def test_released_entry_with_ttl_and_stale_heap_items() -> None:
    backend = manual()
    store = backend.queue
    entry_id = await store.enqueue(msg(ttl=100))
    first = (await store.reserve(QUEUE, visibility_timeout=10))[0]
    assert await store.extend(first.receipt, visibility_timeout=20)  # leaves a stale deadline
    assert await store.release(first.receipt)
    await backend.clock.advance(30)  # the stale deadlines pass
    second = (await store.reserve(QUEUE, visibility_timeout=10))[0]
    assert (second.entry_id, second.attempt) == (entry_id, 1)
    await backend.clock.advance(100)
    assert await store.nack(second.receipt) is False  # deadline passed: reclaimed, then expired
    dead = await store.get_dead_letter(QUEUE, entry_id)
    assert dead is not None
    assert dead.reason == "expired"
    # a delayed entry that expired leaves a stale item that surfaces when its due time passes
    await store.enqueue(msg(ttl=5), delay=50)
    await backend.clock.advance(6)
    assert (await store.stats(QUEUE)).delayed == 0
    await backend.clock.advance(50)
    assert await store.reserve(QUEUE, visibility_timeout=10) == []
    assert len(store._queues[str(QUEUE)].delayed) == 0


@pytest.mark.anyio
async def test_dedup_window_with_replay_and_pruning() -> None:
    backend = manual(dedup_window=10, dead_letter_max_age=50)
    store = backend.queue
    first = await store.enqueue(msg(), dedup_key="k")
    assert await store.dead_letter(
        (await store.reserve(QUEUE, visibility_timeout=5))[0].receipt, reason="x"
    )
    assert await store.replay_dead_letters(QUEUE) == [first]  # re-claims the key
    await backend.clock.advance(11)  # the old window's expiry passes: the live key stays
    assert await store.enqueue(msg(), dedup_key="k") == first
    assert await store.ack((await store.reserve(QUEUE, visibility_timeout=5))[0].receipt)
    # a dead entry whose key was taken meanwhile loses the key on replay
    second = await store.enqueue(msg(), dedup_key="j")
    assert await store.dead_letter(
        (await store.reserve(QUEUE, visibility_timeout=5))[0].receipt, reason="x"
    )
    await backend.clock.advance(11)
    third = await store.enqueue(msg(), dedup_key="j")
    assert third != second
    assert await store.replay_dead_letters(QUEUE, [second]) == [second]
    assert await store.enqueue(msg(), dedup_key="j") == third
    # retention by age drops every dead letter
    fourth = await store.enqueue(msg())
    delivery = [
        d
        for d in await store.reserve(QUEUE, visibility_timeout=5, max_messages=5)
        if d.entry_id == fourth
    ]
    assert await store.dead_letter(delivery[0].receipt, reason="x")
    await backend.clock.advance(51)
    assert await store.dead_letter_count(QUEUE) == 0
    assert await store.replay_dead_letters(QUEUE) == []
    assert await store.enqueue(msg(), entry_id=fourth) == fourth  # still retained as settled


@pytest.mark.anyio
async def test_enqueue_many_resolves_existing_ids_and_stats_all_cursor() -> None:
    store = manual().queue
    existing = await store.enqueue(msg(), entry_id="x")
    ids = await store.enqueue_many(
        [EnqueueRequest(message=msg(), entry_id="x"), EnqueueRequest(message=msg())]
    )
    assert ids[0] == existing
    page = await store.stats_all(limit=1, cursor="mem")
    assert [s.queue for s in page.items] == [QUEUE]
    assert page.next_cursor is None
    assert (await store.stats_all(cursor="zzz")).items == []
    assert await store.get_dead_letter(AgentId("mem", "none"), "x") is None
    assert await store.replay_dead_letters(AgentId("mem", "none")) == []


@pytest.mark.anyio
async def test_nack_to_max_attempts_keeps_the_error() -> None:
    store = manual(max_attempts=1).queue
    entry_id = await store.enqueue(msg())
    delivery = (await store.reserve(QUEUE, visibility_timeout=5))[0]
    assert await store.nack(delivery.receipt, delay=1, error="boom")
    dead = await store.get_dead_letter(QUEUE, entry_id)
    assert dead is not None
    assert (dead.reason, dead.error, dead.attempts) == ("max_attempts", "boom", 1)


# -- property: ordering against a plain-Python model of priority + FIFO -------------------------

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("enqueue"), st.integers(0, 9)),
        st.tuples(st.just("reserve"), st.integers(1, 4)),
        st.tuples(st.just("nack"), st.integers(0, 3)),
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(_ops)
def test_ordering_matches_a_model(ops: list[tuple[str, int]]) -> None:
    async def run() -> None:
        backend = manual()
        store = backend.queue
        model: list[tuple[int, float, int, str]] = []  # (-priority, due, seq, entry id)
        held: list[tuple[Delivery, int]] = []
        seq = 0
        for op, arg in ops:
            now = await backend.clock.now()
            if op == "enqueue":
                seq += 1
                entry_id = await store.enqueue(msg(priority=arg))
                model.append((-arg, now, seq, entry_id))
            elif op == "reserve":
                got = await store.reserve(QUEUE, visibility_timeout=1000, max_messages=arg)
                model.sort()
                expected, model[:] = model[:arg], model[arg:]
                assert [d.entry_id for d in got] == [e[3] for e in expected]
                held.extend(zip(got, [e[2] for e in expected], strict=True))
            elif held:
                delivery, entry_seq = held.pop(arg % len(held))
                assert await store.nack(delivery.receipt)
                model.append((-delivery.message.priority, now, entry_seq, delivery.entry_id))
            await backend.clock.advance(1)

    anyio.run(run)
