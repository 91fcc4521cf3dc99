"""The memory driver's queue store.

Every queue (one per recipient ``AgentId``) keeps its live entries in a dict by entry id and
four heaps with lazy deletion: *ready* ordered by ``(-priority, due time, enqueue sequence)``,
*delayed* by due time, *reserved* by reservation deadline and *expiry* by ttl deadline. A heap
item carries the entry's ``version`` at push time; every state change bumps the version, so a
stale item is recognised and skipped when it reaches the top (and heaps are rebuilt when more
than half of them is garbage). Ack is a dict lookup: O(1).

Messages are stored as JSON bytes (see :mod:`tta_agent_coordination._codec`) and decoded
afresh for every delivery. No operation awaits inside a state change, so each is atomic on
its event loop. A waiting ``reserve`` blocks on a per-queue :class:`anyio.Event`, woken by
enqueue, nack, release, reserve, replay and ``clock.advance()``, and by a timer for the
earliest due time or reservation deadline (system clock only: a manual clock moves only
through ``advance``).

Decisions beyond the contract (see ``docs/decisions``):

* A receipt is valid until its reservation deadline: acting on it afterwards reclaims the
  reservation (counting the attempt) and returns ``False``, whether or not a ``reserve`` ran
  in between, so the outcome does not depend on other consumers' timing.
* ``nack`` of a delivery at ``max_attempts`` dead-letters it (reason ``max_attempts``).
* ``replay`` gives the entry a new enqueue time (and a new ttl deadline), attempt 1, and keeps
  its ``last_error``.
* ``DeadLetter.attempts`` counts deliveries that ended in failure (for a reserved entry that is
  settled, its current attempt).
"""

from __future__ import annotations

import heapq
import re
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import anyio

from .. import checks
from .._codec import decode_message, encode_message, trusted_delivery
from .._ids import new_id, new_token
from ..errors import InvalidReceiptError, QueueFullError, ValidationError
from ..models import (
    AgentId,
    AgentMessage,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    EnqueueRequest,
    Page,
    QueueStats,
)

if TYPE_CHECKING:
    from ..settings import BackendOptions
    from .memory import MemoryClock

__all__ = ["MemoryQueueStore"]

_READY: Final = 0
_DELAYED: Final = 1
_RESERVED: Final = 2
_GONE: Final = 3  # acked, dead-lettered or dropped: every heap item of it is stale

_MAX_BATCH: Final = 1000
_MAX_ID: Final = 128
_MAX_DEDUP: Final = 512
_COMPACT_SLACK: Final = 256

_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_QUEUE_NAME = re.compile(rf"{_PART}(?::{_PART})?")
_RECEIPT_PREFIX: Final = "mq1."
_RECEIPT = re.compile(
    rf"mq1\.({_PART}(?::{_PART})?)/([0-9a-f]{{16}})/(.{{1,{_MAX_ID}}})", re.DOTALL
)


#: A random (version 4) UUID as 32 hex digits, as ``uuid.uuid4().hex`` but faster.
_new_entry_id: Final = new_id


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class _Entry:
    """One live (or dead-lettered) entry."""

    __slots__ = (
        "attempt",
        "body",
        "deadline",
        "dedup_key",
        "enqueued_at",
        "entry_id",
        "expires_at",
        "last_error",
        "max_attempts",
        "priority",
        "seq",
        "state",
        "token",
        "ttl",
        "version",
    )

    def __init__(
        self,
        entry_id: str,
        body: bytes,
        *,
        priority: int,
        ttl: float | None,
        max_attempts: int,
        dedup_key: str | None,
    ) -> None:
        self.entry_id = entry_id
        self.body = body
        self.priority = priority
        self.ttl = ttl
        self.max_attempts = max_attempts
        self.dedup_key = dedup_key
        self.attempt = 1
        self.seq = 0
        self.enqueued_at = 0.0
        self.expires_at: float | None = None
        self.state = _READY
        self.version = 0
        self.token = ""
        self.deadline = 0.0
        self.last_error: str | None = None


class _Dead:
    """A dead letter: the entry and why it died."""

    __slots__ = ("attempts", "dead_at", "dseq", "entry", "error", "reason")

    def __init__(
        self,
        entry: _Entry,
        *,
        reason: str,
        error: str | None,
        attempts: int,
        dead_at: float,
        dseq: int,
    ) -> None:
        self.entry = entry
        self.reason = reason
        self.error = error
        self.attempts = attempts
        self.dead_at = dead_at
        self.dseq = dseq


class _Dedup:
    """Who holds a dedup key, and since when it is free to expire (``None``: still live)."""

    __slots__ = ("entry_id", "settled_at")

    def __init__(self, entry_id: str) -> None:
        self.entry_id = entry_id
        self.settled_at: float | None = None


# Heap items. Ready: (-priority, due, seq, version, entry); delayed: (due, seq, version, entry);
# reserved: (deadline, seq, version, entry); expiry: (expires_at, seq, entry).
_ReadyItem = tuple[int, float, int, int, _Entry]
_TimedItem = tuple[float, int, int, _Entry]
_ExpiryItem = tuple[float, int, _Entry]


class _Queue:
    """One recipient's queue."""

    __slots__ = (
        "agent_id",
        "dead",
        "dead_ids",
        "dead_seq",
        "dead_seqs",
        "dedup",
        "dedup_expiry",
        "delayed",
        "entries",
        "expiry",
        "idle_ttl",
        "idle_until",
        "n_delayed",
        "n_reserved",
        "name",
        "ready",
        "reserved",
        "settled",
        "settled_expiry",
    )

    def __init__(self, agent_id: AgentId, name: str) -> None:
        self.agent_id = agent_id
        self.name = name
        self.entries: dict[str, _Entry] = {}
        self.ready: list[_ReadyItem] = []
        self.delayed: list[_TimedItem] = []
        self.reserved: list[_TimedItem] = []
        self.expiry: list[_ExpiryItem] = []
        self.n_delayed = 0
        self.n_reserved = 0
        self.dead: OrderedDict[str, _Dead] = OrderedDict()
        self.dead_seq = 0
        self.dead_seqs: list[int] = []  # paging index, with lazy deletion
        self.dead_ids: list[str] = []
        # entry id -> (settled at, the acking receipt's token or "")
        self.settled: dict[str, tuple[float, str]] = {}
        self.settled_expiry: deque[tuple[float, str]] = deque()
        self.dedup: dict[str, _Dedup] = {}
        self.dedup_expiry: deque[tuple[float, str]] = deque()
        # set_queue_ttl: dropped once idle_until passes without an enqueue or reserve
        self.idle_ttl: float | None = None
        self.idle_until: float | None = None

    @property
    def n_ready(self) -> int:
        return len(self.entries) - self.n_delayed - self.n_reserved


class _Waiters:
    """The consumers waiting on one queue: one event, set (and replaced) to wake them all."""

    __slots__ = ("count", "event")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.count = 0


def _fail(message: str) -> ValidationError:
    return ValidationError(message)


def _check_queue(queue: object) -> AgentId:
    return checks.agent_id(queue)


def _check_ids(ids: Sequence[str] | None) -> list[str] | None:
    return checks.entry_ids(ids, _MAX_ID)


def _parse_receipt(receipt: object) -> tuple[str, str, str]:
    """Split a receipt into (queue name, token, entry id); raise if it is malformed."""
    if not isinstance(receipt, str):
        raise InvalidReceiptError(f"a receipt is a string, not {type(receipt).__name__}")
    match = _RECEIPT.fullmatch(receipt)
    if match is None:
        raise InvalidReceiptError(f"{receipt!r} is not a receipt of the memory driver")
    name, token, entry_id = match.groups()
    return name, token, entry_id


class _Prepared:
    """One request of a batch, checked and serialised, before anything is written."""

    __slots__ = ("body", "dedup_key", "delay", "entry_id", "max_attempts", "message")

    def __init__(
        self,
        message: AgentMessage,
        body: bytes,
        *,
        delay: float,
        dedup_key: str | None,
        entry_id: str | None,
        max_attempts: int,
    ) -> None:
        self.message = message
        self.body = body
        self.delay = delay
        self.dedup_key = dedup_key
        self.entry_id = entry_id
        self.max_attempts = max_attempts


class MemoryQueueStore:
    """The in-memory :class:`~tta_agent_coordination.protocols.QueueStore`.

    Build it through ``connect("memory://")``; all use of one store must come from one event
    loop. ``clock`` resolves every deadline; ``options`` gives the queue defaults.
    """

    def __init__(self, clock: MemoryClock, options: BackendOptions) -> None:
        self._clock = clock
        self._options = options
        self._queues: dict[str, _Queue] = {}
        self._names: list[str] = []  # the queue index, sorted
        self._waiting: dict[str, _Waiters] = {}
        self._seq = 0
        self._idle: list[tuple[float, str]] = []  # (idle_until, name) of queues with a ttl, lazy
        clock.subscribe(self._wake_all)

    # -- housekeeping -------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget everything (``drop_namespace``); waiting consumers re-check."""
        self._queues.clear()
        self._names.clear()
        self._idle.clear()
        self._wake_all()

    def _wake(self, name: str) -> None:
        waiters = self._waiting.pop(name, None)
        if waiters is not None:
            waiters.event.set()

    def _wake_all(self) -> None:
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for waiters in waiting:
            waiters.event.set()

    def _queue_for(self, agent_id: AgentId) -> _Queue:
        self._drop_idle()
        name = str(agent_id)
        queue = self._queues.get(name)
        if queue is None:
            queue = _Queue(agent_id, name)
            self._queues[name] = queue
            insort(self._names, name)
        self._touch(queue)
        return queue

    def _touch(self, queue: _Queue) -> None:
        """Restart the idle ttl of a queue that has one (an enqueue or reserve used it)."""
        if queue.idle_ttl is not None:
            queue.idle_until = self._clock.time() + queue.idle_ttl

    def _drop_idle(self) -> None:
        """Drop the queues whose idle ttl passed.

        The heap holds one item per queue with a ttl; a touch only moves ``idle_until``, and an
        item that comes due early is pushed again at the queue's current ``idle_until``.
        """
        idle = self._idle
        if not idle:
            return
        now = self._clock.time()
        while idle and idle[0][0] <= now:
            _, name = heapq.heappop(idle)
            queue = self._queues.get(name)
            if queue is None or queue.idle_until is None:
                continue
            if queue.idle_until <= now:
                self._drop(queue)
            else:
                heapq.heappush(idle, (queue.idle_until, name))

    def _compact(self, queue: _Queue) -> None:
        """Rebuild heaps that hold more garbage than live items (amortised O(1))."""
        if len(queue.reserved) > 2 * queue.n_reserved + _COMPACT_SLACK:
            queue.reserved = [i for i in queue.reserved if i[3].version == i[2]]
            heapq.heapify(queue.reserved)
        if len(queue.delayed) > 2 * queue.n_delayed + _COMPACT_SLACK:
            queue.delayed = [i for i in queue.delayed if i[3].version == i[2]]
            heapq.heapify(queue.delayed)
        if len(queue.ready) > 2 * queue.n_ready + _COMPACT_SLACK:
            queue.ready = [i for i in queue.ready if i[4].version == i[3]]
            heapq.heapify(queue.ready)
        if len(queue.expiry) > 2 * len(queue.entries) + _COMPACT_SLACK:
            queue.expiry = [i for i in queue.expiry if i[2].state < _RESERVED]
            heapq.heapify(queue.expiry)

    def _prune(self, queue: _Queue, now: float) -> None:
        """Forget settled entry ids past their retention and dedup keys past their window."""
        settled, expiry = queue.settled, queue.settled_expiry
        while expiry and expiry[0][0] <= now:
            # An id is settled again only after its record was pruned: the record is this one.
            settled.pop(expiry.popleft()[1], None)
        dedup, dedup_expiry = queue.dedup, queue.dedup_expiry
        while dedup_expiry and dedup_expiry[0][0] <= now:
            _, key = dedup_expiry.popleft()
            held = dedup.get(key)
            if (
                held is not None
                and held.settled_at is not None
                and held.settled_at + self._options.dedup_window <= now
            ):
                del dedup[key]

    def _settle(self, queue: _Queue, entry: _Entry, now: float, token: str) -> None:
        """Record that ``entry`` left the queue for good (acked, purged, trimmed)."""
        until = now + self._options.entry_id_retention
        queue.settled[entry.entry_id] = (now, token)
        queue.settled_expiry.append((until, entry.entry_id))

    def _release_dedup(self, queue: _Queue, entry: _Entry, now: float) -> None:
        key = entry.dedup_key
        if key is None:
            return
        held = queue.dedup.get(key)
        if (
            held is None or held.entry_id != entry.entry_id
        ):  # pragma: no cover  # defensive: replay drops a key held by another
            return
        if self._options.dedup_window <= 0:
            del queue.dedup[key]
        else:
            held.settled_at = now
            queue.dedup_expiry.append((now + self._options.dedup_window, key))

    def _remove_live(self, queue: _Queue, entry: _Entry) -> None:
        """Take ``entry`` out of the live set (its heap items become stale)."""
        if entry.state == _RESERVED:
            queue.n_reserved -= 1
        elif entry.state == _DELAYED:
            queue.n_delayed -= 1
        entry.state = _GONE
        entry.version += 1
        del queue.entries[entry.entry_id]

    def _to_dead(
        self,
        queue: _Queue,
        entry: _Entry,
        reason: str,
        *,
        error: str | None,
        attempts: int,
        now: float,
    ) -> None:
        self._remove_live(queue, entry)
        if error is not None:
            entry.last_error = error
        queue.dead_seq += 1
        dead = _Dead(
            entry,
            reason=reason,
            error=entry.last_error,
            attempts=attempts,
            dead_at=now,
            dseq=queue.dead_seq,
        )
        queue.dead[entry.entry_id] = dead
        queue.dead_seqs.append(dead.dseq)
        queue.dead_ids.append(entry.entry_id)
        self._release_dedup(queue, entry, now)
        self._trim_dead(queue, now)

    def _expire(self, queue: _Queue, entry: _Entry, now: float) -> None:
        """Dead-letter an unreserved entry past its ttl (``expired``)."""
        self._to_dead(
            queue, entry, DeadLetterReason.EXPIRED, error=None, attempts=entry.attempt - 1, now=now
        )

    def _exhaust(self, queue: _Queue, entry: _Entry, now: float) -> None:
        """Dead-letter a reserved entry whose last attempt failed (``max_attempts``)."""
        self._to_dead(
            queue, entry, DeadLetterReason.MAX_ATTEMPTS, error=None, attempts=entry.attempt, now=now
        )

    def _drop_dead(self, queue: _Queue, entry_id: str, now: float) -> _Dead:
        dead = queue.dead.pop(entry_id)
        self._settle(queue, dead.entry, now, "")
        return dead

    def _trim_dead(self, queue: _Queue, now: float) -> None:
        """Apply the dead-letter retention, dropping the oldest first."""
        dead = queue.dead
        max_length = self._options.dead_letter_max_length
        if max_length is not None:
            while len(dead) > max_length:
                _, record = dead.popitem(last=False)
                self._settle(queue, record.entry, now, "")
        max_age = self._options.dead_letter_max_age
        if max_age is not None:
            while dead:
                entry_id = next(iter(dead))
                if dead[entry_id].dead_at + max_age > now:
                    break
                self._drop_dead(queue, entry_id, now)
        if len(queue.dead_seqs) > 2 * len(dead) + _COMPACT_SLACK:
            pairs = [(d.dseq, d.entry.entry_id) for d in dead.values()]
            queue.dead_seqs = [p[0] for p in pairs]
            queue.dead_ids = [p[1] for p in pairs]

    def _push_due(self, queue: _Queue, entry: _Entry, due: float, now: float) -> None:
        """Make a (no longer reserved) entry ready at ``due`` or delayed until it."""
        entry.version += 1
        if due > now:
            entry.state = _DELAYED
            queue.n_delayed += 1
            heapq.heappush(queue.delayed, (due, entry.seq, entry.version, entry))
        else:
            entry.state = _READY
            heapq.heappush(queue.ready, (-entry.priority, due, entry.seq, entry.version, entry))

    def _return(self, queue: _Queue, entry: _Entry, due: float, now: float) -> None:
        """Hand a reserved entry back, due at ``due``; an entry past its ttl dies instead."""
        queue.n_reserved -= 1
        if entry.expires_at is not None:
            if entry.expires_at <= now:
                entry.state = _READY  # not reserved any more: no live delivery to count
                self._expire(queue, entry, now)
                return
            heapq.heappush(queue.expiry, (entry.expires_at, entry.seq, entry))
        self._push_due(queue, entry, due, now)

    def _maintain(self, queue: _Queue, now: float) -> int:
        """Reclaim expired reservations, promote due delayed entries, expire ttl'd ones.

        Returns:
            How many expired reservations were reclaimed.
        """
        reserved = queue.reserved
        reclaimed = 0
        while reserved and reserved[0][0] <= now:
            deadline, _, version, entry = heapq.heappop(reserved)
            if entry.version != version:
                continue
            reclaimed += 1
            if entry.attempt >= entry.max_attempts:
                self._exhaust(queue, entry, now)
            else:
                entry.attempt += 1
                self._return(queue, entry, deadline, now)
        delayed = queue.delayed
        while delayed and delayed[0][0] <= now:
            due, seq, version, entry = heapq.heappop(delayed)
            if entry.version != version:
                continue
            queue.n_delayed -= 1
            entry.version += 1
            entry.state = _READY
            heapq.heappush(queue.ready, (-entry.priority, due, seq, entry.version, entry))
        expiry = queue.expiry
        while expiry and expiry[0][0] <= now:
            _, _, entry = heapq.heappop(expiry)
            expires_at = entry.expires_at
            if entry.state < _RESERVED and expires_at is not None and expires_at <= now:
                self._expire(queue, entry, now)
        self._compact(queue)
        return reclaimed

    def _next_wake(self, queue: _Queue) -> float | None:
        """The earliest backend time at which something of ``queue`` becomes due."""
        times: list[float] = []
        for heap in (queue.delayed, queue.reserved):
            while heap and heap[0][3].version != heap[0][2]:
                heapq.heappop(heap)
            if heap:
                times.append(heap[0][0])
        return min(times) if times else None

    # -- enqueue ------------------------------------------------------------------------------

    def _prepare(
        self,
        message: AgentMessage,
        delay: float | None,
        dedup_key: str | None,
        entry_id: str | None,
        max_attempts: int | None,
    ) -> _Prepared:
        body = encode_message(message, self._options.max_message_bytes)
        return _Prepared(
            message,
            body,
            delay=0.0 if delay is None else checks.duration(delay, "delay", positive=False),
            dedup_key=None
            if dedup_key is None
            else checks.text(dedup_key, "dedup_key", _MAX_DEDUP),
            entry_id=None if entry_id is None else checks.text(entry_id, "entry_id", _MAX_ID),
            max_attempts=self._options.max_attempts
            if max_attempts is None
            else checks.integer(max_attempts, "max_attempts", 1, None),
        )

    def _existing(self, queue: _Queue, item: _Prepared) -> str | None:
        """The id a repeated entry id or dedup key resolves to, or ``None`` for a new entry."""
        entry_id = item.entry_id
        if entry_id is not None and (
            entry_id in queue.entries or entry_id in queue.dead or entry_id in queue.settled
        ):
            return entry_id
        if item.dedup_key is not None:
            held = queue.dedup.get(item.dedup_key)
            if held is not None:
                return held.entry_id
        return None

    def _write(self, queue: _Queue, item: _Prepared, now: float) -> str:
        entry_id = item.entry_id if item.entry_id is not None else _new_entry_id()
        message = item.message
        entry = _Entry(
            entry_id,
            item.body,
            priority=message.priority,
            ttl=message.ttl,
            max_attempts=item.max_attempts,
            dedup_key=item.dedup_key,
        )
        self._admit(queue, entry, now, item.delay)
        if item.dedup_key is not None:
            queue.dedup[item.dedup_key] = _Dedup(entry_id)
        return entry_id

    def _admit(self, queue: _Queue, entry: _Entry, now: float, delay: float) -> None:
        """Add a fresh (or replayed) entry: enqueued now, due after ``delay``."""
        self._seq += 1
        entry.seq = self._seq
        entry.enqueued_at = now
        queue.entries[entry.entry_id] = entry
        if entry.ttl is not None:
            entry.expires_at = now + entry.ttl
            heapq.heappush(queue.expiry, (entry.expires_at, entry.seq, entry))
        self._push_due(queue, entry, now + delay, now)

    async def enqueue(
        self,
        message: AgentMessage,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        """Add ``message`` to the queue of ``message.recipient``; return the entry id.

        Raises:
            ValidationError: A bad argument (nothing written).
            MessageTooLargeError: The serialised message is over ``max_message_bytes``.
            QueueFullError: The queue holds ``max_queue_length`` live entries.
        """
        item = self._prepare(message, delay, dedup_key, entry_id, max_attempts)
        queue = self._queue_for(message.recipient)
        now = self._clock.time()
        self._prune(queue, now)
        existing = self._existing(queue, item)
        if existing is not None:
            return existing
        if len(queue.entries) >= self._options.max_queue_length:
            raise QueueFullError(queue.name, self._options.max_queue_length)
        new_id = self._write(queue, item, now)
        if self._waiting:
            self._wake(queue.name)
        return new_id

    def _plan(
        self, queue: _Queue, prepared: list[_Prepared]
    ) -> tuple[list[str | int], list[_Prepared]]:
        """Resolve a batch: per request an existing id, or the index of its new entry."""
        batch_ids: dict[str, int] = {}
        batch_keys: dict[str, int] = {}
        plan: list[str | int] = []
        new_items: list[_Prepared] = []
        for item in prepared:
            existing = self._existing(queue, item)
            if existing is not None:
                plan.append(existing)
            elif item.entry_id is not None and item.entry_id in batch_ids:
                plan.append(batch_ids[item.entry_id])
            elif item.dedup_key is not None and item.dedup_key in batch_keys:
                plan.append(batch_keys[item.dedup_key])
            else:
                index = len(new_items)
                new_items.append(item)
                plan.append(index)
                if item.entry_id is not None:
                    batch_ids[item.entry_id] = index
                if item.dedup_key is not None:
                    batch_keys[item.dedup_key] = index
        return plan, new_items

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Enqueue a batch for one queue, all or nothing.

        Repeated entry ids and dedup keys (also within the batch) resolve as for
        :meth:`enqueue`; the cap is checked for the whole batch before anything is written.

        Raises:
            ValidationError: A request is not an ``EnqueueRequest``, or the batch spans queues.
            MessageTooLargeError: A message is over ``max_message_bytes``.
            QueueFullError: The new entries would pass ``max_queue_length``.
        """
        recipient = checks.one_queue_batch(requests)
        if recipient is None:
            return []
        prepared = [
            self._prepare(r.message, r.delay, r.dedup_key, r.entry_id, r.max_attempts)
            for r in requests
        ]
        queue = self._queue_for(recipient)
        now = self._clock.time()
        self._prune(queue, now)
        plan, new_items = self._plan(queue, prepared)
        if len(queue.entries) + len(new_items) > self._options.max_queue_length:
            raise QueueFullError(queue.name, self._options.max_queue_length)
        new_ids = [self._write(queue, item, now) for item in new_items]
        if new_items and self._waiting:
            self._wake(queue.name)
        return [new_ids[p] if isinstance(p, int) else p for p in plan]

    # -- reserve ------------------------------------------------------------------------------

    def _reserve_now(self, queue: _Queue, visibility: float, count: int) -> list[Delivery]:
        now = self._clock.time()
        self._maintain(queue, now)
        ready = queue.ready
        taken: list[_Entry] = []
        deadline = now + visibility
        while ready and len(taken) < count:
            _, _, _, version, entry = heapq.heappop(ready)
            if entry.version != version:
                continue
            entry.state = _RESERVED
            entry.version = version + 1
            entry.token = new_token()
            entry.deadline = deadline
            heapq.heappush(queue.reserved, (deadline, entry.seq, version + 1, entry))
            taken.append(entry)
        if not taken:
            return []
        queue.n_reserved += len(taken)
        visible_at = _ts(deadline)
        prefix = f"{_RECEIPT_PREFIX}{queue.name}/"
        return [
            trusted_delivery(  # the store's own, already validated data
                queue=queue.agent_id,
                entry_id=entry.entry_id,
                message=decode_message(entry.body),
                attempt=entry.attempt,
                max_attempts=entry.max_attempts,
                receipt=f"{prefix}{entry.token}/{entry.entry_id}",
                enqueued_at=_ts(entry.enqueued_at),
                visible_at=visible_at,
                last_error=entry.last_error,
            )
            for entry in taken
        ]

    async def reserve(
        self,
        queue: AgentId,
        *,
        visibility_timeout: float,
        max_messages: int = 1,
        wait: float | None = None,
    ) -> list[Delivery]:
        """Reserve up to ``max_messages`` due entries, highest priority first.

        Reclaims expired reservations first, promotes due delayed entries and dead-letters
        entries past their ttl. With ``wait`` (real seconds) it blocks until an entry is due.

        Raises:
            ValidationError: A bad argument.
        """
        agent_id = _check_queue(queue)
        visibility = checks.duration(visibility_timeout, "visibility_timeout", positive=True)
        count = checks.integer(max_messages, "max_messages", 1, _MAX_BATCH)
        waiting = 0.0 if wait is None else checks.duration(wait, "wait", positive=False)
        name = str(agent_id)
        self._drop_idle()
        found = self._queues.get(name)
        if found is not None:
            self._touch(found)
            got = self._reserve_now(found, visibility, count)
            if got or waiting == 0:
                return got
        elif waiting == 0:
            return []
        give_up = anyio.current_time() + waiting
        while True:
            remaining = give_up - anyio.current_time()
            if remaining <= 0:
                return []
            timeout = remaining
            found = self._queues.get(name)
            if found is not None and not self._clock.manual:
                next_wake = self._next_wake(found)
                if next_wake is not None:
                    timeout = min(timeout, max(next_wake - self._clock.time(), 0.0) + 0.001)
            await self._wait(name, timeout)
            self._drop_idle()
            found = self._queues.get(name)
            if found is not None:
                self._touch(found)
                got = self._reserve_now(found, visibility, count)
                if got:
                    return got

    async def _wait(self, name: str, seconds: float) -> None:
        waiters = self._waiting.get(name)
        if waiters is None:
            waiters = _Waiters()
            self._waiting[name] = waiters
        waiters.count += 1
        try:
            with anyio.move_on_after(seconds):
                await waiters.event.wait()
        finally:
            waiters.count -= 1
            if waiters.count == 0 and self._waiting.get(name) is waiters:
                del self._waiting[name]

    # -- settling -----------------------------------------------------------------------------

    def _current(self, receipt: object) -> tuple[_Queue | None, _Entry | None, str, str, float]:
        """Resolve a receipt to its queue and entry if it is still the current reservation.

        Returns ``(queue, entry, token, entry_id, now)``; ``entry`` is ``None`` for a stale
        receipt. An expired reservation is reclaimed on the spot, so its receipt is stale.
        """
        name, token, entry_id = _parse_receipt(receipt)
        now = self._clock.time()
        queue = self._queues.get(name)
        if queue is None:
            return None, None, token, entry_id, now
        entry = queue.entries.get(entry_id)
        if entry is None or entry.state != _RESERVED or entry.token != token:
            return queue, None, token, entry_id, now
        if entry.deadline <= now:
            self._maintain(queue, now)
            return queue, None, token, entry_id, now
        return queue, entry, token, entry_id, now

    def _ack(self, receipt: str) -> bool:
        queue, entry, token, entry_id, now = self._current(receipt)
        if queue is None:
            return False
        if entry is None:
            record = queue.settled.get(entry_id)
            return record is not None and record[1] == token
        self._remove_live(queue, entry)
        self._settle(queue, entry, now, token)
        self._release_dedup(queue, entry, now)
        if len(queue.reserved) > 2 * queue.n_reserved + _COMPACT_SLACK:
            self._compact(queue)
        return True

    async def ack(self, receipt: str) -> bool:
        """Remove the entry for good.

        Returns:
            ``True`` if the receipt was current (or repeats an ack that succeeded),
            ``False`` for a stale receipt.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
        """
        return self._ack(receipt)

    async def ack_many(self, receipts: Sequence[str]) -> list[bool]:
        """Ack several receipts of one queue; one bool per receipt, as :meth:`ack`.

        Raises:
            InvalidReceiptError: A receipt is malformed (nothing acked).
            ValidationError: The receipts belong to different queues (nothing acked).
        """
        if isinstance(receipts, str) or not isinstance(receipts, Sequence):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            raise _fail("ack_many takes a sequence of receipts")
        names = {_parse_receipt(r)[0] for r in receipts}
        if len(names) > 1:
            raise _fail(f"ack_many takes receipts of one queue, not of {sorted(names)}")
        return [self._ack(r) for r in receipts]

    async def nack(self, receipt: str, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Make the entry due again after ``delay``; the next delivery counts an attempt.

        A delivery at its ``max_attempts`` is dead-lettered instead (reason ``max_attempts``).

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: A bad ``delay`` or ``error``.
        """
        seconds = checks.duration(delay, "delay", positive=False)
        text = checks.optional_text(error, "error")
        queue, entry, _, _, now = self._current(receipt)
        if queue is None or entry is None:
            return False
        if text is not None:
            entry.last_error = text
        if entry.attempt >= entry.max_attempts:
            self._exhaust(queue, entry, now)
        else:
            entry.attempt += 1
            self._return(queue, entry, now + seconds, now)
            self._wake(queue.name)
        self._compact(queue)
        return True

    async def release(self, receipt: str) -> bool:
        """Make the entry due at once; the next delivery has the same attempt number.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
        """
        queue, entry, _, _, now = self._current(receipt)
        if queue is None or entry is None:
            return False
        self._return(queue, entry, now, now)
        self._wake(queue.name)
        self._compact(queue)
        return True

    async def extend(self, receipt: str, *, visibility_timeout: float) -> bool:
        """Keep the entry reserved until ``visibility_timeout`` seconds from now.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: A non-positive ``visibility_timeout``.
        """
        visibility = checks.duration(visibility_timeout, "visibility_timeout", positive=True)
        queue, entry, _, _, now = self._current(receipt)
        if queue is None or entry is None:
            return False
        entry.deadline = now + visibility
        entry.version += 1
        heapq.heappush(queue.reserved, (entry.deadline, entry.seq, entry.version, entry))
        self._compact(queue)
        return True

    async def dead_letter(self, receipt: str, *, reason: str, error: str | None = None) -> bool:
        """Move the entry to the queue's dead letters with ``reason`` and ``error``.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: An empty ``reason`` or a bad ``error``.
        """
        why = checks.text(reason, "reason", _MAX_DEDUP)
        text = checks.optional_text(error, "error")
        queue, entry, _, _, now = self._current(receipt)
        if queue is None or entry is None:
            return False
        self._to_dead(queue, entry, why, error=text, attempts=entry.attempt, now=now)
        self._compact(queue)
        return True

    # -- dead letters -------------------------------------------------------------------------

    def _read_queue(self, queue: AgentId) -> _Queue | None:
        """The queue (maintained: expiries and retention applied now), or ``None``."""
        self._drop_idle()
        found = self._queues.get(str(_check_queue(queue)))
        if found is not None:
            now = self._clock.time()
            self._maintain(found, now)
            self._trim_dead(found, now)
        return found

    @staticmethod
    def _dead_letter(queue: _Queue, dead: _Dead) -> DeadLetter:
        entry = dead.entry
        return DeadLetter.model_construct(
            queue=queue.agent_id,
            entry_id=entry.entry_id,
            message=decode_message(entry.body),
            raw=None,
            reason=dead.reason,
            error=dead.error,
            attempts=dead.attempts,
            enqueued_at=_ts(entry.enqueued_at),
            dead_at=_ts(dead.dead_at),
        )

    async def dead_letters(
        self, queue: AgentId, *, limit: int = 100, cursor: str | None = None
    ) -> Page[DeadLetter]:
        """List dead letters, oldest first, ``limit`` (1..1000) at a time.

        Pass the page's ``next_cursor`` back for the next page (``None``: the last page).

        Raises:
            ValidationError: A bad ``limit`` or ``cursor``.
        """
        size = checks.integer(limit, "limit", 1, _MAX_BATCH)
        after = 0
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 20:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
                raise _fail(f"{cursor!r} is not a dead-letter cursor")
            after = int(cursor)
        found = self._read_queue(queue)
        if found is None:
            return Page[DeadLetter](items=[])
        items: list[DeadLetter] = []
        last = 0
        more = False
        seqs, ids = found.dead_seqs, found.dead_ids
        for index in range(bisect_right(seqs, after), len(seqs)):
            dead = found.dead.get(ids[index])
            if dead is None or dead.dseq != seqs[index]:
                continue
            if len(items) == size:
                more = True
                break
            items.append(self._dead_letter(found, dead))
            last = dead.dseq
        return Page[DeadLetter](items=items, next_cursor=str(last) if more else None)

    async def dead_letter_count(self, queue: AgentId) -> int:
        """The number of dead letters in the queue (after retention)."""
        found = self._read_queue(queue)
        return 0 if found is None else len(found.dead)

    async def get_dead_letter(self, queue: AgentId, entry_id: str) -> DeadLetter | None:
        """One dead letter by its entry id, or ``None``."""
        wanted = checks.text(entry_id, "entry_id", _MAX_ID)
        found = self._read_queue(queue)
        if found is None:
            return None
        dead = found.dead.get(wanted)
        return None if dead is None else self._dead_letter(found, dead)

    async def replay_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Move dead letters back as due entries (same entry id, attempt 1, enqueued now).

        ``entry_ids=None`` replays all; unknown ids are skipped. Not refused by the cap.

        Returns:
            The entry ids replayed, in order.
        """
        wanted = _check_ids(entry_ids)
        found = self._read_queue(queue)
        if found is None:
            return []
        chosen = list(found.dead) if wanted is None else wanted
        now = self._clock.time()
        replayed: list[str] = []
        for entry_id in chosen:
            dead = found.dead.pop(entry_id, None)
            if dead is None:
                continue
            entry = dead.entry
            entry.attempt = 1
            if entry.dedup_key is not None:
                held = found.dedup.get(entry.dedup_key)
                if held is None or held.entry_id == entry_id:
                    found.dedup[entry.dedup_key] = _Dedup(entry_id)
                else:
                    entry.dedup_key = None
            self._admit(found, entry, now, 0.0)
            replayed.append(entry_id)
        if replayed:
            self._trim_dead(found, now)
            self._wake(found.name)
        return replayed

    async def purge_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all, or the given ids); returns how many were deleted."""
        wanted = _check_ids(entry_ids)
        found = self._read_queue(queue)
        if found is None:
            return 0
        chosen = list(found.dead) if wanted is None else wanted
        now = self._clock.time()
        purged = 0
        for entry_id in chosen:
            if entry_id in found.dead:
                self._drop_dead(found, entry_id, now)
                purged += 1
        self._trim_dead(found, now)
        return purged

    # -- introspection ------------------------------------------------------------------------

    @staticmethod
    def _stats(queue: _Queue) -> QueueStats:
        return QueueStats.model_construct(
            queue=queue.agent_id,
            ready=queue.n_ready,
            delayed=queue.n_delayed,
            reserved=queue.n_reserved,
            dead=len(queue.dead),
        )

    async def stats(self, queue: AgentId) -> QueueStats:
        """Ready, delayed, reserved and dead counts of one queue (zeros if it does not exist)."""
        found = self._read_queue(queue)
        if found is None:
            return QueueStats(queue=queue)
        return self._stats(found)

    async def stats_all(self, *, limit: int = 100, cursor: str | None = None) -> Page[QueueStats]:
        """Stats of up to ``limit`` (1..1000) queues, ordered by ``str(queue)``.

        Raises:
            ValidationError: A bad ``limit`` or ``cursor``.
        """
        size = checks.integer(limit, "limit", 1, _MAX_BATCH)
        self._drop_idle()
        start = 0
        if cursor is not None:
            if not isinstance(cursor, str) or _QUEUE_NAME.fullmatch(cursor) is None:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
                raise _fail(f"{cursor!r} is not a stats cursor")
            start = bisect_right(self._names, cursor)
        names = self._names[start : start + size]
        now = self._clock.time()
        items: list[QueueStats] = []
        for name in names:
            found = self._queues[name]
            self._maintain(found, now)
            self._trim_dead(found, now)
            items.append(self._stats(found))
        more = start + size < len(self._names)
        return Page[QueueStats](items=items, next_cursor=names[-1] if more else None)

    async def queues(self) -> list[AgentId]:
        """Every queue that exists (from its first enqueue until ``drop_queue``), sorted."""
        self._drop_idle()
        return sorted(self._queues[name].agent_id for name in self._names)

    async def drop_queue(self, queue: AgentId) -> int:
        """Remove a queue, its entries, dead letters and index entry.

        Returns:
            The number of entries removed (live and dead).
        """
        found = self._queues.get(str(_check_queue(queue)))
        return 0 if found is None else self._drop(found)

    def _drop(self, queue: _Queue) -> int:
        del self._queues[queue.name]
        del self._names[bisect_left(self._names, queue.name)]
        for entry in queue.entries.values():
            entry.state = _GONE
            entry.version += 1
        self._wake(queue.name)
        return len(queue.entries) + len(queue.dead)

    async def set_queue_ttl(self, queue: AgentId, ttl: float | None) -> None:
        """Drop the queue once ``ttl`` seconds pass without an enqueue to it or a reserve on it.

        Creates the queue if needed; ``None`` keeps it until ``drop_queue``.

        Raises:
            ValidationError: A bad queue or ttl.
        """
        agent_id = _check_queue(queue)
        seconds = None if ttl is None else checks.duration(ttl, "ttl", positive=True)
        found = self._queue_for(agent_id)
        found.idle_ttl = seconds
        if seconds is None:
            found.idle_until = None
        else:
            found.idle_until = self._clock.time() + seconds
            heapq.heappush(self._idle, (found.idle_until, found.name))

    async def reclaim(self, queue: AgentId) -> int:
        """Reclaim expired reservations now (due again, or dead-lettered at max_attempts).

        Returns:
            How many reservations were reclaimed.
        """
        self._drop_idle()
        found = self._queues.get(str(_check_queue(queue)))
        return 0 if found is None else self._maintain(found, self._clock.time())
