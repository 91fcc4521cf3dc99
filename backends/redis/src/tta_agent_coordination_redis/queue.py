"""The Redis queue store: every operation one Lua script, one round trip.

The data layout (``docs/redis-layout.md`` says why each structure was chosen), per queue, all
under the queue's hash tag: ``meta`` and ``body`` hashes keyed by entry id (each message body
stored once), a ``ready`` sorted set ordered by priority, due time and enqueue sequence,
``delayed``, ``reserved`` and ``expiry`` sorted sets by due time, reservation deadline and ttl
deadline, ``dead`` (by dead-letter sequence) with ``deadinfo``, ``settled`` and ``acks`` (ids
kept for ``entry_id_retention`` and the token that acked them), ``dedup``/``dedupx`` and a
``wake`` list. The namespace holds the queue index (``queues``), the idle-ttl index (``idle``)
and the clock offset.

Every rule of the memory reference driver is kept; the scripts in ``scripts/`` follow
``tta_agent_coordination.backends._memory_queue`` step by step:

* a receipt is valid until its reservation deadline; acting on it later reclaims the entry
  and returns ``False``;
* ``nack`` at ``max_attempts`` dead-letters (``max_attempts``); an expired ttl is noticed when
  the entry is due or handed back (``expired``);
* ``replay`` keeps the entry id, resets the attempt, re-enqueues now and is not capped;
* settled entry ids are remembered for ``entry_id_retention`` so retried enqueues are safe.

On Redis Cluster the queue scripts touch only the queue's own keys (one slot): the clock
offset travels as an argument, and the queue index and idle index are updated by separate
commands, sent only when a script reports that it created or dropped a queue (or the client
has not yet seen the queue in the index).

A waiting ``reserve`` blocks with ``BLPOP`` on the queue's ``wake`` list, for at most the time
until the earliest due entry or reservation deadline (the script's answer): enqueue, nack,
release, replay and ``clock.advance`` push a token there, and a reserve that leaves entries
ready passes the wake-up on. An idle waiting consumer costs one blocked command.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, cast

import anyio

from tta_agent_coordination import checks
from tta_agent_coordination._codec import decode_message, encode_message, loads, trusted_delivery
from tta_agent_coordination._ids import new_id, new_token
from tta_agent_coordination.errors import (
    CoordinationError,
    InvalidReceiptError,
    QueueFullError,
    ValidationError,
)
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    DeadLetter,
    Delivery,
    EnqueueRequest,
    Page,
    QueueStats,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from tta_agent_coordination.settings import BackendOptions

    from ._scripts import Packed
    from .backend import Connection

__all__ = ["RECEIPT_PREFIX", "RedisQueueStore"]

_MAX_BATCH: Final = 1000
_MAX_ID: Final = 128
_MAX_DEDUP: Final = 512
#: Queues whose keys and leading script arguments are kept packed (see ``_head``).
_MAX_HEADS: Final = 256

_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
_QUEUE_NAME = re.compile(rf"{_PART}(?::{_PART})?")
#: Receipts name the queue (and so its hash tag), a fresh token and the entry id.
RECEIPT_PREFIX: Final = "rq1."
_RECEIPT = re.compile(
    rf"rq1\.({_PART}(?::{_PART})?)/([0-9a-f]{{16}})/(.{{1,{_MAX_ID}}})", re.DOTALL
)
#: Seconds added to a wake-up at a due time, so the entry is due when the script looks.
_DUE_SLACK: Final = 0.002
#: The shortest block: BLPOP's timeout 0 would mean "forever".
_MIN_BLOCK: Final = 0.01
#: The longest a waiter's registration lasts (ms; a wait is cut into blocks anyway).
_MAX_WAIT_MS: Final = 2**31 - 1
#: Seconds a cancelled waiting reserve spends leaving the waiters (shielded).
_LEAVE_TIMEOUT: Final = 2.0


def _fail(message: str) -> ValidationError:
    return ValidationError(message)


def _check_duration(value: object, what: str, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{what} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        raise _fail(f"{what} must be finite and {bound}, not {value!r}")
    return seconds


def _ms(seconds: float, *, positive: bool = False) -> int:
    """Seconds to whole milliseconds (at least 1 for a positive duration)."""
    value = round(seconds * 1000)
    return max(1, value) if positive else value


def _check_int(value: object, what: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"{what} must be an int, not {type(value).__name__}")
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and <= {high}"
        raise _fail(f"{what} must be >= {low}{top}, not {value}")
    return value


def _check_text(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        raise _fail(f"{what} must be a string of 1 to {limit} characters, not {value!r}")
    return value


def _check_optional_text(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _fail(f"{what} must be a string or None, not {type(value).__name__}")
    return value


def _check_queue(queue: object) -> AgentId:
    if not isinstance(queue, AgentId):
        raise _fail(f"queue must be an AgentId, not {type(queue).__name__}")
    return queue


def _check_ids(entry_ids: Sequence[str] | None) -> list[str] | None:
    if entry_ids is None:
        return None
    if isinstance(entry_ids, str) or not isinstance(entry_ids, Sequence):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        raise _fail("entry_ids must be a sequence of entry id strings (or None for all)")
    return [_check_text(e, "entry id", _MAX_ID) for e in entry_ids]


def _parse_receipt(receipt: object) -> tuple[str, str, str]:
    """Split a receipt into (queue name, token, entry id); raise if it is malformed."""
    if not isinstance(receipt, str):
        raise InvalidReceiptError(f"a receipt is a string, not {type(receipt).__name__}")
    match = _RECEIPT.fullmatch(receipt)
    if match is None:
        raise InvalidReceiptError(f"{receipt!r} is not a receipt of the redis driver")
    name, token, entry_id = match.groups()
    return name, token, entry_id


def _ts(milliseconds: float) -> datetime:
    """A time the scripts give (ms since the epoch) as an aware UTC datetime."""
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


#: Times already made by :func:`_shared_ts` (datetimes are immutable: one object may serve
#: many deliveries). A batch's entries share their reservation deadline and, enqueued
#: together, their enqueue time: two ``fromtimestamp`` calls per reply, not two per entry.
_TIMES: dict[float, datetime] = {}
_TIMES_KEPT: Final = 256


def _shared_ts(milliseconds: float) -> datetime:
    """:func:`_ts`, made once per time for a batch of deliveries."""
    found = _TIMES.get(milliseconds)
    if found is None:
        if len(_TIMES) >= _TIMES_KEPT:
            _TIMES.clear()
        found = _TIMES[milliseconds] = _ts(milliseconds)
    return found


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _json(value: bytes | str) -> dict[str, Any]:
    return cast("dict[str, Any]", loads(value))


def _hand_parts(item: bytes) -> tuple[str, bytes, bytes]:
    """A handed entry's id, meta and body (``hand_item`` in ``_queue.lua``).

    The item is ``<bytes of id>:<bytes of meta>:`` followed by the three, back to back.
    """
    first = item.index(b":")
    second = item.index(b":", first + 1)
    at = second + 1
    meta_at = at + int(item[:first])
    body_at = meta_at + int(item[first + 1 : second])
    return item[at:meta_at].decode(), item[meta_at:body_at], item[body_at:]


class RedisQueueStore:
    """The Redis :class:`~tta_agent_coordination.protocols.QueueStore`.

    Build it through ``connect("redis://...")``. Each method sends one script (or, for
    ``stats_all`` and ``queues``, a bounded handful of round trips over the index).

    Args:
        connection: The backend's shared internals.
        options: The queue defaults.
    """

    def __init__(self, connection: Connection, options: BackendOptions) -> None:
        self._connection = connection
        self._options = options
        keys = connection.keys
        self._ns_keys = [keys.clock, keys.queues, keys.idle]
        self._known: set[str] = set()  # cluster: queues this client saw in the index
        # Per queue name: its keys, its leading arguments and both packed once (a bounded
        # cache, oldest dropped first: reply queues come and go).
        self._heads: dict[str, tuple[list[str], list[Any], Packed]] = {}
        # The queue settings, one argument (``conf()`` in ``_queue.lua`` reads it when needed).
        self._settings = ",".join(
            str(v)
            for v in (
                options.max_queue_length,
                _ms(options.dedup_window),
                -1 if options.dead_letter_max_age is None else _ms(options.dead_letter_max_age),
                -1 if options.dead_letter_max_length is None else options.dead_letter_max_length,
                _ms(options.entry_id_retention),
            )
        )
        # A plain request's options text (no delay, ttl, dedup key or own max_attempts: the
        # usual send), per priority: made once, not formatted per request.
        self._plain = {p: f"{p},0,{options.max_attempts},-1," for p in range(10)}

    # -- plumbing -----------------------------------------------------------------------------

    def _keys(self, name: str) -> list[str]:
        """The queue script's keys.

        On a single server the three namespace keys and the queue's info key (the script names
        the others from its prefix); on Redis Cluster every key of the queue, declared (the
        info key standing in for the namespace's).
        """
        queue_keys = self._connection.keys.queue_keys(name)
        if self._connection.cluster:  # one slot: the queue's info key stands in, untouched
            return [queue_keys[0]] * 3 + queue_keys
        return [*self._ns_keys, queue_keys[0]]

    def _args(self, name: str, *args: Any) -> list[Any]:
        return [name, self._settings, self._connection.clock_arg(), *args]

    def _head(self, name: str) -> tuple[list[str], list[Any], Packed]:
        head = self._heads.get(name)
        if head is None:
            keys, fixed = self._keys(name), self._args(name)
            head = (keys, fixed, self._connection.pack(keys, fixed))
            if len(self._heads) >= _MAX_HEADS:
                del self._heads[next(iter(self._heads))]
            self._heads[name] = head
        return head

    async def _run(
        self, script: str, name: str, *args: Any, retry: Sequence[Any] | None = None
    ) -> Any:
        """Run a queue script; ``retry``: the arguments of the tries after the first, if any."""
        if self._connection.cluster:  # the clock offset argument moves with clock.advance
            return await self._connection.run_script(
                script,
                self._keys(name),
                self._args(name, *args),
                retry_args=None if retry is None else self._args(name, *retry),
            )
        keys, fixed, packed = self._head(name)
        return await self._connection.run_script(
            script,
            keys,
            [*fixed, *args],
            packed=packed,
            retry_args=None if retry is None else [*fixed, *retry],
        )

    async def _indexed(self, name: str, *, created: bool) -> None:
        """Cluster: put a queue in the index unless the client knows it is there."""
        if not self._connection.cluster or (name in self._known and not created):
            return
        queues = self._connection.keys.queues
        await self._connection.call(
            lambda c: c.zadd(queues, {name: 0}, nx=True), what="index the queue"
        )
        self._known.add(name)

    async def _unindexed(self, name: str, *, keep: bool = False) -> None:
        """Cluster: take a dropped queue out of the indexes (``keep``: the idle index only)."""
        keys = self._connection.keys
        await self._connection.run_script(
            "unindex", [keys.queues, keys.idle], [name, "1" if keep else "0"]
        )
        if not keep:
            self._known.discard(name)

    # -- enqueue ------------------------------------------------------------------------------

    def _prepare(
        self,
        message: AgentMessage,
        delay: float | None,
        dedup_key: str | None,
        entry_id: str | None,
        max_attempts: int | None,
    ) -> tuple[str, bytes, str]:
        """One request's three script arguments: entry id, body and options (``enqueue.lua``)."""
        body = encode_message(message, self._options.max_message_bytes)
        if delay is None and dedup_key is None and entry_id is None and max_attempts is None:
            plain = self._plain.get(message.priority) if message.ttl is None else None
            if plain is not None:  # a plain request (the usual send): its options are made
                return (new_id(), body, plain)
        seconds = 0.0 if delay is None else _check_duration(delay, "delay", positive=False)
        key = "" if dedup_key is None else _check_text(dedup_key, "dedup_key", _MAX_DEDUP)
        # Fixed before the first try: a retried enqueue (lost reply) writes nothing again.
        ident = new_id() if entry_id is None else _check_text(entry_id, "entry_id", _MAX_ID)
        attempts = (
            self._options.max_attempts
            if max_attempts is None
            else _check_int(max_attempts, "max_attempts", 1, None)
        )
        ttl = -1 if message.ttl is None else _ms(message.ttl, positive=True)
        # The key last: it may hold commas (enqueue.lua reads everything after the fourth).
        return (ident, body, f"{int(message.priority)},{_ms(seconds)},{attempts},{ttl},{key}")

    async def _enqueue(
        self, queue: AgentId, items: list[tuple[str, bytes, str]], *, fresh: bool
    ) -> list[str]:
        """Run enqueue.lua; ``fresh``: every entry id was made here for this call.

        A fresh call's first try skips the script's lookup of taken ids (no entry can hold a
        random UUID made just now); its retries make it (the first try may have landed).
        """
        name = str(queue)
        flat: list[Any] = []
        last = None
        for ident, body, options in items:  # options alike the request before's go as ''
            flat += (ident, body, "" if options == last else options)
            last = options
        n = len(items)
        if fresh:
            run = self._run("enqueue", name, -n, *flat, retry=[n, *flat])
        else:
            run = self._run("enqueue", name, n, *flat)
        reply = cast("list[Any]", await run)
        if int(reply[0]) == 0:
            raise QueueFullError(name, self._options.max_queue_length)
        if self._connection.cluster:
            await self._indexed(name, created=int(reply[1]) == 1)
        if len(reply) == 2:  # a batch of made ids, every one new: they are ours
            return [ident for ident, _, _ in items]
        return [_text(v) for v in reply[2:]]

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
            BackendUnavailableError: Redis could not be reached (retrying is safe).
        """
        item = self._prepare(message, delay, dedup_key, entry_id, max_attempts)
        (result,) = await self._enqueue(message.recipient, [item], fresh=entry_id is None)
        return result

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Enqueue a batch for one queue, all or nothing, in one script.

        Raises:
            ValidationError: A request is not an ``EnqueueRequest``, or the batch spans queues.
            MessageTooLargeError: A message is over ``max_message_bytes``.
            QueueFullError: The new entries would pass ``max_queue_length``.
        """
        recipient = checks.one_queue_batch(requests)
        if recipient is None:
            return []
        fresh = True
        items: list[tuple[str, bytes, str]] = []
        for r in requests:
            items.append(self._prepare(r.message, r.delay, r.dedup_key, r.entry_id, r.max_attempts))
            fresh = fresh and r.entry_id is None
        return await self._enqueue(recipient, items, fresh=fresh)

    # -- reserve ------------------------------------------------------------------------------

    def _delivery(
        self,
        agent_id: AgentId,
        name: str,
        entry_id: str,
        body: bytes | str,
        meta: dict[str, Any],
        *,
        ts: Callable[[float], datetime] = _ts,
    ) -> Delivery:
        """A delivery from an entry the reserve or enqueue script reserved (our own data).

        ``name`` is ``str(agent_id)``, made once per reply; ``ts`` makes its times.
        """
        return trusted_delivery(
            queue=agent_id,
            entry_id=entry_id,
            message=decode_message(body),
            attempt=int(meta["a"]),
            max_attempts=int(meta["m"]),
            receipt=f"{RECEIPT_PREFIX}{name}/{meta['t']}/{entry_id}",
            enqueued_at=ts(meta["e"]),
            visible_at=ts(meta["dl"]),
            last_error=meta.get("l"),
        )

    async def _reserve_now(
        self,
        agent_id: AgentId,
        visibility_ms: int,
        count: int,
        *,
        waiter: str = "",
        mode: str = "",
        wait_ms: int = 0,
    ) -> tuple[list[Delivery], float | None]:
        """One reserve script; the deliveries and the seconds until something is due.

        ``waiter``/``mode``/``wait_ms``: the hand-off registration (``reserve.lua``).
        """
        name = str(agent_id)
        tokens = [new_token() for _ in range(count)]
        reply = cast(
            "list[Any]",
            await self._run("reserve", name, visibility_ms, count, waiter, mode, wait_ms, *tokens),
        )
        now, next_due = int(reply[0]), int(reply[2])
        ts = _shared_ts if len(reply) > 6 else _ts  # a batch shares its times
        deliveries = [
            self._delivery(
                agent_id, name, _text(reply[i]), reply[i + 1], _json(reply[i + 2]), ts=ts
            )
            for i in range(3, len(reply), 3)
        ]
        due_in = None if next_due < 0 else max(0.0, (next_due - now) / 1000)
        return deliveries, due_in

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
        entries past their ttl, in the same script. With ``wait`` (real seconds) it blocks on
        the queue's wake list until an entry is due, never polling. On a single server a
        waiting call also registers as a waiter: an enqueue of one entry then reserves it for
        this call and hands it over on the call's own list, so the blocked ``BLPOP`` returns
        the delivery itself (``docs/decisions/0005-redis-handoff.md``).

        Raises:
            ValidationError: A bad argument.
        """
        agent_id = _check_queue(queue)
        visibility = _check_duration(visibility_timeout, "visibility_timeout", positive=True)
        count = _check_int(max_messages, "max_messages", 1, _MAX_BATCH)
        waiting = 0.0 if wait is None else _check_duration(wait, "wait", positive=False)
        visibility_ms = _ms(visibility, positive=True)
        if waiting == 0:
            got, _ = await self._reserve_now(agent_id, visibility_ms, count)
            return got
        waiter = "" if self._connection.cluster else new_token()  # cluster: the wake list only
        registered = False
        try:
            got, due_in = await self._reserve_now(
                agent_id,
                visibility_ms,
                count,
                waiter=waiter,
                mode="first",
                wait_ms=min(_ms(waiting), _MAX_WAIT_MS),
            )
            if got:
                return got
            registered = True
            return await self._wait(
                agent_id, visibility_ms, count, waiting=waiting, due_in=due_in, waiter=waiter
            )
        except BaseException as exc:
            if not waiter or (not registered and isinstance(exc, CoordinationError)):
                raise  # nothing to leave, or the first script failed (the registration lapses)
            # Cancelled (or failed) while registered, or maybe registered (cancelled while the
            # first script ran): leave now, so that no entry is handed to a waiter that is gone,
            # and give back what was handed to it meanwhile.
            with (
                anyio.CancelScope(shield=True),
                anyio.move_on_after(_LEAVE_TIMEOUT),
                contextlib.suppress(Exception),  # the first error is the one to report
            ):
                handed, _ = await self._reserve_now(
                    agent_id, visibility_ms, 0, waiter=waiter, mode="leave"
                )
                for delivery in handed:
                    await self.release(delivery.receipt)
            raise

    async def _wait(
        self,
        agent_id: AgentId,
        visibility_ms: int,
        count: int,
        *,
        waiting: float,
        due_in: float | None,
        waiter: str,
    ) -> list[Delivery]:
        """Block until woken, handed an entry, due or ``waiting`` seconds are over."""
        give_up = time.monotonic() + waiting
        keys = self._connection.keys
        wake_key = keys.queue(str(agent_id), "wake")
        hand_key = keys.queue(str(agent_id), f"hand:{waiter}") if waiter else None
        max_block = self._connection.max_block or math.inf
        while True:
            due_at = math.inf if due_in is None else time.monotonic() + due_in + _DUE_SLACK
            while True:  # block until woken or due; chunks that end quietly just block again
                now = time.monotonic()
                if now >= give_up:
                    if not waiter:
                        return []
                    got, _ = await self._reserve_now(
                        agent_id, visibility_ms, count, waiter=waiter, mode="leave"
                    )
                    return got
                timeout = min(give_up - now, max(due_at - now, 0.0), max_block)
                popped = await self._block(agent_id, wake_key, hand_key, max(timeout, _MIN_BLOCK))
                if isinstance(popped, Delivery):
                    return [popped]
                if popped or time.monotonic() >= due_at:
                    break
            got, due_in = await self._reserve_now(
                agent_id, visibility_ms, count, waiter=waiter, mode="again"
            )
            if got:
                return got

    async def _block(
        self, agent_id: AgentId, wake_key: str, hand_key: str | None, seconds: float
    ) -> Delivery | bool:
        """Block on the waiter's hand list and the queue's wake list, ``seconds`` at most.

        Returns the delivery handed over, ``True`` if woken, ``False`` when the time is up.
        """
        keys = [wake_key] if hand_key is None else [hand_key, wake_key]
        reply = await self._connection.command("BLPOP", *keys, seconds, what="reserve (waiting)")
        if reply is None:
            return False
        key, value = cast("tuple[bytes, bytes]", reply)  # a list on the lean path
        if hand_key is None or _text(key) != hand_key:
            return True
        entry_id, meta, body = _hand_parts(value)
        return self._delivery(agent_id, str(agent_id), entry_id, body, _json(meta))

    async def wake_all(self) -> None:
        """Wake every consumer waiting on this namespace's queues (after a clock change)."""
        keys = self._connection.keys
        names = await self._connection.call(
            lambda c: c.zrange(keys.queues, 0, -1), what="wake consumers"
        )
        if not names:
            return

        async def wake(name: str) -> None:
            keys_ = [keys.queue(name, "info"), keys.queue(name, "wake")]
            await self._connection.run_script("wake", keys_, [])

        await asyncio.gather(*(wake(_text(raw)) for raw in cast("list[bytes]", names)))

    # -- settling -----------------------------------------------------------------------------

    async def ack(self, receipt: str) -> bool:
        """Remove the entry for good (O(log n)).

        Returns:
            ``True`` if the receipt was current (or repeats an ack that succeeded),
            ``False`` for a stale receipt.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
        """
        name, token, entry_id = _parse_receipt(receipt)  # ack_many of one, without the batch
        reply = cast("list[Any]", await self._run("ack", name, 1, token, entry_id))
        return int(reply[0]) == 1

    async def ack_many(self, receipts: Sequence[str]) -> list[bool]:
        """Ack several receipts of one queue in one script; one bool per receipt.

        Raises:
            InvalidReceiptError: A receipt is malformed (nothing acked).
            ValidationError: The receipts belong to different queues (nothing acked).
        """
        if isinstance(receipts, str) or not isinstance(receipts, Sequence):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            raise _fail("ack_many takes a sequence of receipts")
        parsed = [_parse_receipt(r) for r in receipts]
        names = {p[0] for p in parsed}
        if len(names) > 1:
            raise _fail(f"ack_many takes receipts of one queue, not of {sorted(names)}")
        if not parsed:
            return []
        args = [value for _, token, entry_id in parsed for value in (token, entry_id)]
        reply = cast("list[Any]", await self._run("ack", parsed[0][0], len(parsed), *args))
        return [int(v) == 1 for v in reply]

    async def _settle(self, receipt: str, action: str, *args: Any) -> bool:
        name, token, entry_id = _parse_receipt(receipt)
        reply = await self._run("settle", name, action, token, entry_id, *args)
        return int(reply) == 1

    async def nack(self, receipt: str, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Make the entry due again after ``delay``; the next delivery counts an attempt.

        A delivery at its ``max_attempts`` is dead-lettered instead (reason ``max_attempts``).

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: A bad ``delay`` or ``error``.
        """
        seconds = _check_duration(delay, "delay", positive=False)
        text = _check_optional_text(error, "error")
        _parse_receipt(receipt)
        given = "0" if text is None else "1"
        return await self._settle(receipt, "nack", _ms(seconds), text or "", given)

    async def release(self, receipt: str) -> bool:
        """Make the entry due at once; the next delivery has the same attempt number.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
        """
        return await self._settle(receipt, "release")

    async def extend(self, receipt: str, *, visibility_timeout: float) -> bool:
        """Keep the entry reserved until ``visibility_timeout`` seconds from now.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: A non-positive ``visibility_timeout``.
        """
        visibility = _check_duration(visibility_timeout, "visibility_timeout", positive=True)
        _parse_receipt(receipt)
        return await self._settle(receipt, "extend", _ms(visibility, positive=True))

    async def dead_letter(self, receipt: str, *, reason: str, error: str | None = None) -> bool:
        """Move the entry to the queue's dead letters with ``reason`` and ``error``.

        Raises:
            InvalidReceiptError: ``receipt`` is malformed.
            ValidationError: An empty ``reason`` or a bad ``error``.
        """
        why = _check_text(reason, "reason", _MAX_DEDUP)
        text = _check_optional_text(error, "error")
        _parse_receipt(receipt)
        given = "0" if text is None else "1"
        return await self._settle(receipt, "dead_letter", why, text or "", given)

    # -- dead letters -------------------------------------------------------------------------

    @staticmethod
    def _dead_letter(
        queue: AgentId, entry_id: bytes, body: bytes, meta: bytes, info: bytes
    ) -> DeadLetter:
        entry = _json(meta)
        record = _json(info)
        return DeadLetter.model_construct(
            queue=queue,
            entry_id=_text(entry_id),
            message=decode_message(body),
            raw=None,
            reason=record["r"],
            error=record.get("l"),
            attempts=int(record["n"]),
            enqueued_at=_ts(entry["e"]),
            dead_at=_ts(record["at"]),
        )

    async def dead_letters(
        self, queue: AgentId, *, limit: int = 100, cursor: str | None = None
    ) -> Page[DeadLetter]:
        """List dead letters, oldest first, ``limit`` (1..1000) at a time.

        Raises:
            ValidationError: A bad ``limit`` or ``cursor``.
        """
        agent_id = _check_queue(queue)
        size = _check_int(limit, "limit", 1, _MAX_BATCH)
        after = "0"
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor.isdigit() or len(cursor) > 20:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
                raise _fail(f"{cursor!r} is not a dead-letter cursor")
            after = str(int(cursor))
        reply = cast(
            "list[Any]", await self._run("inspect", str(agent_id), "dead_list", after, size)
        )
        if int(reply[0]) == 0:
            return Page[DeadLetter](items=[])
        more = int(reply[1]) == 1
        items: list[DeadLetter] = []
        last = "0"
        for index in range(2, len(reply), 5):
            last = _text(reply[index])
            items.append(self._dead_letter(agent_id, *reply[index + 1 : index + 5]))
        return Page[DeadLetter](items=items, next_cursor=last if more else None)

    async def dead_letter_count(self, queue: AgentId) -> int:
        """The number of dead letters in the queue (after retention)."""
        agent_id = _check_queue(queue)
        reply = cast("list[Any]", await self._run("inspect", str(agent_id), "dead_count"))
        return int(reply[1]) if int(reply[0]) else 0

    async def get_dead_letter(self, queue: AgentId, entry_id: str) -> DeadLetter | None:
        """One dead letter by its entry id, or ``None``."""
        agent_id = _check_queue(queue)
        wanted = _check_text(entry_id, "entry_id", _MAX_ID)
        reply = cast("list[Any]", await self._run("inspect", str(agent_id), "dead_get", wanted))
        if len(reply) < 5:
            return None
        return self._dead_letter(agent_id, *reply[1:5])

    async def replay_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Move dead letters back as due entries (same entry id, attempt 1, enqueued now).

        ``entry_ids=None`` replays all; unknown ids are skipped. Not refused by the cap.

        Returns:
            The entry ids replayed, in order.
        """
        agent_id = _check_queue(queue)
        wanted = _check_ids(entry_ids)
        flag = "1" if wanted is None else "0"
        reply = await self._run("manage", str(agent_id), "replay", flag, *(wanted or []))
        return [_text(v) for v in cast("list[Any]", reply)]

    async def purge_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all, or the given ids); returns how many were deleted."""
        agent_id = _check_queue(queue)
        wanted = _check_ids(entry_ids)
        flag = "1" if wanted is None else "0"
        return int(await self._run("manage", str(agent_id), "purge", flag, *(wanted or [])))

    # -- introspection ------------------------------------------------------------------------

    @staticmethod
    def _stats(agent_id: AgentId, reply: list[Any]) -> QueueStats:
        if int(reply[0]) == 0:
            return QueueStats(queue=agent_id)
        ready, delayed, reserved, dead = (int(v) for v in reply[1:5])
        return QueueStats.model_construct(
            queue=agent_id, ready=ready, delayed=delayed, reserved=reserved, dead=dead
        )

    async def stats(self, queue: AgentId) -> QueueStats:
        """Ready, delayed, reserved and dead counts of one queue (zeros if it does not exist)."""
        agent_id = _check_queue(queue)
        return self._stats(agent_id, await self._run("inspect", str(agent_id), "stats"))

    async def _index(self, *args: Any) -> list[str]:
        """Names from the queue index, leaving out (and dropping) queues whose idle ttl lapsed.

        On a single server this is one script (``index.lua``), plus one drop script per lapsed
        queue when there are any. On a cluster each queue with an idle ttl knows its own time:
        the idle index lists them, one script asks each, then the index is read.
        """
        connection = self._connection
        keys = connection.keys
        if not connection.cluster:
            reply = cast(
                "list[list[bytes]]",
                await connection.run_script("index", [keys.clock, keys.queues, keys.idle], args),
            )
            names, lapsed = ([_text(n) for n in part] for part in reply)
            for name in lapsed:
                await self._run("manage", name, "drop_idle")
            return names
        with_ttl = await connection.call(lambda c: c.zrange(keys.idle, 0, -1), what="idle")
        for raw in cast("list[bytes]", with_ttl):
            name = _text(raw)
            gone = int(await self._run("manage", name, "drop_idle"))
            if gone:
                await self._unindexed(name, keep=gone == 2)
        if args[0] == "all":
            raw_names = await connection.call(lambda c: c.zrange(keys.queues, 0, -1), what="queues")
        else:
            low = "-" if not args[1] else f"({args[1]}"
            raw_names = await connection.call(
                lambda c: c.zrangebylex(keys.queues, low, "+", start=0, num=int(args[2]) + 1),
                what="stats all",
            )
        return [_text(n) for n in cast("list[bytes]", raw_names)]

    async def stats_all(self, *, limit: int = 100, cursor: str | None = None) -> Page[QueueStats]:
        """Stats of up to ``limit`` (1..1000) queues, ordered by ``str(queue)``.

        One script reads a page of the index (leaving out lapsed queues) and one pipeline
        sends the page's stats scripts: two round trips on a single server.

        Raises:
            ValidationError: A bad ``limit`` or ``cursor``.
        """
        size = _check_int(limit, "limit", 1, _MAX_BATCH)
        if cursor is not None and (
            not isinstance(cursor, str) or _QUEUE_NAME.fullmatch(cursor) is None  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        ):
            raise _fail(f"{cursor!r} is not a stats cursor")
        names = await self._index("page", cursor or "", size)
        more = len(names) > size
        names = names[:size]
        if not names:
            return Page[QueueStats](items=[])
        connection = self._connection
        script = connection.scripts.get("inspect")

        async def batch(client: Redis) -> list[Any]:
            async with client.pipeline(transaction=False) as pipe:
                for name in names:
                    keys_ = self._keys(name)
                    pipe.evalsha(script.sha, len(keys_), *keys_, *self._args(name, "stats"))
                return await pipe.execute(raise_on_error=False)

        if connection.cluster:  # a cluster pipeline cannot carry scripts: run them side by side
            replies = await asyncio.gather(*(self._run("inspect", n, "stats") for n in names))
        else:
            replies = await connection.call(batch, what="stats all")
        items: list[QueueStats] = []
        for name, reply in zip(names, replies, strict=True):
            answer = reply
            if isinstance(reply, Exception):  # NOSCRIPT on some node: run it alone (reloads)
                answer = await self._run("inspect", name, "stats")
            if int(cast("list[Any]", answer)[0]):
                items.append(self._stats(AgentId.parse(name), cast("list[Any]", answer)))
        return Page[QueueStats](items=items, next_cursor=names[-1] if more else None)

    async def queues(self) -> list[AgentId]:
        """Every queue that exists (from its first enqueue until dropped), from the index."""
        return sorted(AgentId.parse(name) for name in await self._index("all"))

    async def drop_queue(self, queue: AgentId) -> int:
        """Remove a queue, its entries, dead letters and index entry.

        Returns:
            The number of entries removed (live and dead).
        """
        agent_id = _check_queue(queue)
        name = str(agent_id)
        removed = int(await self._run("manage", name, "drop"))
        if self._connection.cluster:
            await self._unindexed(name)
        return removed

    async def set_queue_ttl(self, queue: AgentId, ttl: float | None) -> None:
        """Drop the queue once ``ttl`` seconds pass without an enqueue to it or a reserve on it.

        Creates the queue if needed; ``None`` keeps it until ``drop_queue``.

        Raises:
            ValidationError: A bad queue or ttl.
        """
        agent_id = _check_queue(queue)
        seconds = None if ttl is None else _check_duration(ttl, "ttl", positive=True)
        ttl_ms = -1 if seconds is None else _ms(seconds, positive=True)
        name = str(agent_id)
        created = int(await self._run("manage", name, "set_ttl", ttl_ms)) == 1
        if self._connection.cluster:
            await self._indexed(name, created=created)
            idle = self._connection.keys.idle
            if seconds is None:
                await self._unindexed(name, keep=True)
            else:
                await self._connection.call(
                    lambda c: c.zadd(idle, {name: 0}), what="index the queue ttl"
                )

    async def reclaim(self, queue: AgentId) -> int:
        """Reclaim expired reservations now (due again, or dead-lettered at max_attempts).

        Returns:
            How many reservations were reclaimed.
        """
        agent_id = _check_queue(queue)
        return int(await self._run("manage", str(agent_id), "reclaim"))

    async def drop_all(self) -> None:
        """Delete every queue of the namespace, from the queue index (``drop_namespace``)."""
        keys = self._connection.keys
        self._known.clear()
        names = await self._connection.call(
            lambda c: c.zrange(keys.queues, 0, -1), what="drop namespace"
        )
        if not names:
            return

        async def delete(client: Redis) -> object:
            async with client.pipeline(transaction=False) as pipe:
                for raw in cast("list[bytes]", names):
                    pipe.delete(*keys.queue_keys(_text(raw)))
                return await pipe.execute()

        await self._connection.call(delete, what="drop namespace")
