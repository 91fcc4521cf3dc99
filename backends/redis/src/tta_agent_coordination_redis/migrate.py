"""Move the original coordination code's Redis data into any backend of this package.

A one-off migration tool, not a runtime path: the original kept no index of its queues, so
the keys are found by a ``SCAN`` of the *source* (``{pfx}:sched:*``, ``{pfx}:reserved:*``,
``{pfx}:dlq:*``, ``{pfx}:queue:*``, ``{pfx}:cb:state:*``). The source is only read; the target
is written through the public protocols only, so ``memory://`` works as well as Redis.

What moves (``/work/shared/ORIGINAL-LAYOUT.md`` describes the source):

* every sorted-set entry (``{pfx}:sched:{type}:{inst}:prio:{p}``): ready ones at once, delayed
  ones with the rest of their delay (the original's due time against the target's clock, or
  the source server's ``TIME`` when the target has no clock hook), priority ``p``;
* every reserved entry (``{pfx}:reserved:{type}:{inst}``): ready again, its next delivery
  counted as attempt ``delivery_attempts + 1``;
* every dead letter (``{pfx}:dlq:{type}:{inst}``): reason ``migrated``, the original's
  ``last_error`` kept and its ``delivery_attempts`` as the attempt count (at least 1); an
  unparseable raw entry becomes a dead letter whose message carries the raw text in its
  payload (``{"raw": ...}``, message type ``migrated_raw``);
* every breaker (``{pfx}:cb:state:{name}``): ``open`` and ``half_open`` become open (one
  recorded failure at threshold 1, so the recovery timeout restarts at the migration);
  ``closed`` ones are left as they are in the target.

The audit list (``{pfx}:queue:{type}:{inst}``) is only compared with what moves (by message
id) and a mismatch reported. Instance ``default`` (or none) is the type's shared queue.

The store has no "write a dead letter" operation, so a dead letter (and a reserved entry's
attempt count) is made with the queue operations: enqueue with its entry id, reserve the
queue's ready entries, ``nack`` ours until the attempt count is reached, then ``dead_letter``
(or ``release``) it; other entries reserved on the way are held until the queue has no due
entry left, then released (no attempt counted; a kill in that moment lets them come back after
a minute's visibility timeout, with an attempt counted).
Every entry id is derived from its source (a hash of the key and the member), and the
target remembers entry ids (``entry_id_retention``), so a second run writes nothing, and a
run killed in the middle and run again loses and duplicates nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from redis.asyncio import Redis

from tta_agent_coordination import connect
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    BreakerState,
    CircuitBreakerConfig,
    DeadLetterReason,
)
from tta_agent_coordination.protocols import Backend

__all__ = ["MigrationReport", "QueueReport", "migrate_from_url", "migrate_original"]

Kind = Literal["ready", "delayed", "reserved", "dead"]
KINDS: tuple[Kind, ...] = ("ready", "delayed", "reserved", "dead")
#: The message type of a dead letter made from an unparseable raw entry.
RAW_MESSAGE_TYPE = "migrated_raw"
#: The header that keeps the original's ``routing`` (compact JSON), when it had any.
ROUTING_HEADER = "original-routing"
_RAW_SENDER = AgentId("migration")
_SCAN_COUNT = 500
_RESERVE_BATCH = 500
_VISIBILITY = 60.0


@dataclass
class QueueReport:
    """What one queue's migration did (on a dry run: what it found)."""

    queue: str
    moved: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    present: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    raw_kept: int = 0
    audit_length: int = 0
    audit_mismatch: int = 0

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, for the command line."""
        return {
            "queue": self.queue,
            "moved": dict(self.moved),
            "present": dict(self.present),
            "raw_kept": self.raw_kept,
            "audit_length": self.audit_length,
            "audit_mismatch": self.audit_mismatch,
        }


@dataclass
class MigrationReport:
    """Per queue what moved or was already present; per breaker what was done."""

    dry_run: bool = False
    queues: dict[str, QueueReport] = field(default_factory=dict[str, QueueReport])
    #: breaker name -> ``opened``, ``already_open``, ``closed`` or ``unreadable``
    breakers: dict[str, str] = field(default_factory=dict[str, str])
    #: source keys that did not parse as the original's layout
    skipped_keys: list[str] = field(default_factory=list[str])

    @property
    def total_moved(self) -> int:
        """Entries written to the target (on a dry run: entries found)."""
        return sum(sum(q.moved.values()) for q in self.queues.values())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, for the command line."""
        return {
            "dry_run": self.dry_run,
            "queues": [self.queues[name].as_dict() for name in sorted(self.queues)],
            "breakers": dict(sorted(self.breakers.items())),
            "skipped_keys": sorted(self.skipped_keys),
            "total_moved": self.total_moved,
        }


@dataclass
class _Item:
    entry_id: str
    kind: Kind
    message: AgentMessage
    delay: float = 0.0
    attempts: int = 1  # the attempt the entry must show when it is settled
    error: str | None = None
    raw: bool = False


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _entry_id(key: str, member: str) -> str:
    digest = hashlib.sha256(f"{key}\0{member}".encode()).hexdigest()
    return f"mig-{digest[:40]}"


def _agent(value: Any, *, shared_default: bool) -> AgentId:
    data = cast("dict[str, Any]", value)
    instance = data.get("instance")
    if instance is None or (shared_default and instance == "default"):
        return AgentId(str(data["type"]))
    return AgentId(str(data["type"]), str(instance))


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def convert_message(data: dict[str, Any], queue: AgentId, priority: int | None) -> AgentMessage:
    """The original's ``AgentMessage`` JSON (a dict) as ours, addressed to ``queue``.

    ``timestamp`` becomes ``created_at`` (now if missing); ``routing`` is kept, when it has a
    topic or tags, as compact JSON in the ``original-routing`` header.
    """
    headers: dict[str, str] = {}
    routing = cast("dict[str, Any] | None", data.get("routing"))
    if routing and (routing.get("topic") or routing.get("tags")):
        headers[ROUTING_HEADER] = json.dumps(routing, sort_keys=True, separators=(",", ":"))
    fields: dict[str, Any] = {
        "sender": _agent(data["sender"], shared_default=False),
        "recipient": queue,
        "message_type": str(data.get("message_type") or "request"),
        "payload": data.get("payload", {}),
        "priority": priority if priority is not None else int(data.get("priority", 5)),
        "headers": headers,
    }
    if data.get("message_id"):
        fields["message_id"] = str(data["message_id"])
    created = _parse_time(data.get("timestamp"))
    if created is not None:
        fields["created_at"] = created
    return AgentMessage.model_validate(fields)


def _queue_of(type_: str, inst: str) -> AgentId:
    return AgentId(type_) if inst == "default" else AgentId(type_, inst)


class _Migration:
    def __init__(self, source: Redis, prefix: str, target: Backend, dry_run: bool) -> None:
        self.source = source
        self.prefix = prefix
        self.target = target
        self.report = MigrationReport(dry_run=dry_run)
        self.now = 0.0

    async def _keys(self, kind: str) -> list[str]:
        pattern = f"{_glob_escape(self.prefix)}:{kind}:*"
        scan = cast(
            "AsyncIterator[bytes | str]", self.source.scan_iter(match=pattern, count=_SCAN_COUNT)
        )
        found = [_text(k) async for k in scan]
        return sorted(set(found))

    def _split(self, key: str, kind: str, suffix_parts: int = 0) -> list[str] | None:
        rest = key[len(self.prefix) + len(kind) + 2 :]
        parts = rest.split(":")
        if len(parts) != 2 + suffix_parts:
            self.report.skipped_keys.append(key)
            return None
        return parts

    async def run(self) -> MigrationReport:
        clock = self.target.clock
        if clock is not None:
            self.now = await clock.now()
        else:
            seconds, micros = await self.source.time()
            self.now = int(seconds) + int(micros) / 1e6
        self.items: dict[AgentId, list[_Item]] = {}
        self.seen: dict[AgentId, Counter[str]] = {}
        await self._collect_sched()
        await self._collect_reserved()
        await self._collect_dlq()
        for queue, queue_items in sorted(self.items.items()):
            await self._migrate_queue(queue, queue_items)
        await self._compare_audit()
        for key in await self._keys("cb:state"):
            await self._migrate_breaker(key[len(self.prefix) + len(":cb:state:") :], key)
        return self.report

    def _add(self, queue: AgentId, item: _Item) -> None:
        self.items.setdefault(queue, []).append(item)
        if item.kind != "dead":
            self.seen.setdefault(queue, Counter())[item.message.message_id] += 1

    async def _collect_sched(self) -> None:
        for key in await self._keys("sched"):
            parts = self._split(key, "sched", 2)
            if parts is None:
                continue
            if parts[2] != "prio" or not parts[3].isdigit():
                self.report.skipped_keys.append(key)
                continue
            queue = _queue_of(parts[0], parts[1])
            members = await self.source.zrange(key, 0, -1, withscores=True)
            for raw_member, score in cast("list[tuple[bytes | str, float]]", members):
                member = _text(raw_member)
                data = json.loads(member)
                message = convert_message(data["message"], queue, int(parts[3]))
                delay = max(0.0, float(score) / 1e6 - self.now)
                kind: Kind = "delayed" if delay > 0 else "ready"
                self._add(queue, _Item(_entry_id(key, member), kind, message, delay=delay))

    async def _collect_reserved(self) -> None:
        for key in await self._keys("reserved"):
            parts = self._split(key, "reserved")
            if parts is None:
                continue
            queue = _queue_of(parts[0], parts[1])
            mapping = await self.source.hgetall(key)
            for token, raw_value in sorted(mapping.items(), key=lambda kv: _text(kv[0])):
                data = json.loads(_text(raw_value))
                message = convert_message(data["message"], queue, data.get("priority"))
                attempts = int(data.get("delivery_attempts") or 0) + 1
                eid = _entry_id(key, _text(token))
                self._add(queue, _Item(eid, "reserved", message, attempts=attempts))

    async def _collect_dlq(self) -> None:
        for key in await self._keys("dlq"):
            parts = self._split(key, "dlq")
            if parts is None:
                continue
            queue = _queue_of(parts[0], parts[1])
            occurrences: Counter[str] = Counter()
            for raw_entry in await self.source.lrange(key, 0, -1):
                text = _text(raw_entry)
                occurrences[text] += 1
                eid = _entry_id(key, f"{occurrences[text]}\0{text}")
                self._add(queue, self._dead_item(eid, text, queue))

    async def _compare_audit(self) -> None:
        audited: set[AgentId] = set()
        for key in await self._keys("queue"):
            parts = self._split(key, "queue")
            if parts is None:
                continue
            queue = _queue_of(parts[0], parts[1])
            audited.add(queue)
            audit: Counter[str] = Counter()
            for raw_entry in await self.source.lrange(key, 0, -1):
                audit[_message_id(_text(raw_entry))] += 1
            report = self._queue_report(queue)
            report.audit_length = audit.total()
            moved = self.seen.get(queue, Counter[str]())
            report.audit_mismatch = (audit - moved).total() + (moved - audit).total()
        for queue, moved in self.seen.items():
            if queue not in audited:
                self._queue_report(queue).audit_mismatch = moved.total()

    def _dead_item(self, eid: str, text: str, queue: AgentId) -> _Item:
        try:
            data = json.loads(text)
            message = convert_message(data["message"], queue, data.get("priority"))
        except (ValueError, KeyError, TypeError):
            message = AgentMessage(
                sender=_RAW_SENDER,
                recipient=queue,
                message_type=RAW_MESSAGE_TYPE,
                payload={"raw": text},
            )
            error = "unparseable entry in the original's dead letters"
            return _Item(eid, "dead", message, error=error, raw=True)
        attempts = max(1, int(data.get("delivery_attempts") or 0))
        return _Item(eid, "dead", message, attempts=attempts, error=data.get("last_error"))

    def _queue_report(self, queue: AgentId) -> QueueReport:
        name = str(queue)
        return self.report.queues.setdefault(name, QueueReport(queue=name))

    async def _migrate_queue(self, queue: AgentId, items: list[_Item]) -> None:
        report = self._queue_report(queue)
        q = self.target.queue
        default_max = self.target.options.max_attempts
        pending: dict[str, _Item] = {}
        for item in items:
            if item.kind == "dead" and await q.get_dead_letter(queue, item.entry_id) is not None:
                report.present["dead"] += 1
                report.raw_kept += item.raw
                continue
            if self.report.dry_run:
                report.moved[item.kind] += 1
                report.raw_kept += item.raw
                continue
            before = (await q.stats(queue)).live
            await q.enqueue(
                item.message,
                delay=item.delay,
                entry_id=item.entry_id,
                max_attempts=max(default_max, item.attempts),
            )
            wrote = (await q.stats(queue)).live > before
            (report.moved if wrote else report.present)[item.kind] += 1
            report.raw_kept += item.raw
            if item.kind == "dead" or item.attempts > 1:
                pending[item.entry_id] = item
        await self._settle(queue, pending)

    async def _settle(self, queue: AgentId, pending: dict[str, _Item]) -> None:
        """Nack our entries up to their attempt count, then dead-letter or release them."""
        q = self.target.queue
        while pending:
            held: list[str] = []
            found = False
            while deliveries := await q.reserve(
                queue, visibility_timeout=_VISIBILITY, max_messages=_RESERVE_BATCH
            ):
                for delivery in deliveries:
                    item = pending.get(delivery.entry_id)
                    if item is None:
                        held.append(delivery.receipt)  # another's: handed back after the round
                        continue
                    found = True
                    if delivery.attempt < item.attempts:
                        await q.nack(delivery.receipt, delay=0.0)
                    elif item.kind == "dead":
                        await q.dead_letter(
                            delivery.receipt, reason=DeadLetterReason.MIGRATED, error=item.error
                        )
                        del pending[item.entry_id]
                    else:
                        await q.release(delivery.receipt)
                        del pending[item.entry_id]
            for receipt in held:
                await q.release(receipt)
            if not found:
                return  # ours are gone (consumed by the new system meanwhile)

    async def _migrate_breaker(self, name: str, key: str) -> None:
        raw = await self.source.get(key)
        try:
            state = str(json.loads(_text(cast("bytes | str", raw)))["state"])
        except (ValueError, KeyError, TypeError):
            self.report.breakers[name] = "unreadable"
            return
        if state == BreakerState.CLOSED:
            self.report.breakers[name] = "closed"
            return
        config = CircuitBreakerConfig(failure_threshold=1)
        snapshot = await self.target.breakers.snapshot(name, config)
        if snapshot.state != BreakerState.CLOSED:
            self.report.breakers[name] = "already_open"
            return
        if not self.report.dry_run:
            await self.target.breakers.record_failure(name, config)
        self.report.breakers[name] = "opened"


def _message_id(text: str) -> str:
    try:
        return str(json.loads(text)["message"]["message_id"])
    except (ValueError, KeyError, TypeError):
        return text


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


async def migrate_original(
    source: Redis, prefix: str, target: Backend, *, dry_run: bool = False
) -> MigrationReport:
    """Move the original's queues, dead letters and breakers under ``prefix`` into ``target``.

    ``source`` is a ``redis.asyncio.Redis`` client of the original's server (only read);
    ``prefix`` its key prefix (``"ao"`` by default in the original). Safe to run twice, to
    kill and run again, and to run again after the old producers stopped (see the module's
    docstring). With ``dry_run`` nothing is written and the report counts what was found
    (``present`` is known only for dead letters).
    """
    return await _Migration(source, prefix, target, dry_run).run()


async def migrate_from_url(
    source_url: str, prefix: str, target_url: str, *, dry_run: bool = False
) -> MigrationReport:
    """:func:`migrate_original` from a source Redis URL into the backend at ``target_url``."""
    source = Redis.from_url(source_url)
    try:
        async with connect(target_url) as target:
            return await migrate_original(source, prefix, target, dry_run=dry_run)
    finally:
        await source.aclose()
