"""The memory driver's registry store: live agents, liveness by ttl, an event log with cursors.

Every operation is atomic: no ``await`` happens inside a state change. Expiry is detected at
the start of every operation (and by :meth:`MemoryRegistryStore.sweep` and every clock
advance) from a heap of expiry times, so the cost is proportional to the agents that expired,
not to all agents.

Decisions recorded here (see also ``docs/decisions``):

* An agent is live while ``now < expires_at`` (``expires_at = last_heartbeat + ttl``).
* An expired record is kept, so that a heartbeat with its token re-registers it, until it is
  deregistered or a new registration replaces it. Deregistering an expired session returns
  ``True`` and removes the record, without a ``deregistered`` event (its ``expired`` event
  already told watchers it is gone).
* ``registered``, ``updated``, ``deregistered`` and ``expired`` events carry a snapshot of the
  agent in ``event.agent``.
* Cursors are decimal sequence numbers (``"2"`` is the first event ever: ``"0"`` is reserved
  for "the oldest retained", so an empty log's head is ``"1"``, never ``"0"``). ``read_events(after=
  None)`` takes the head before it sweeps, so expiries it detects are returned. A cursor past the
  head is a ``ValidationError``; ``clear()`` keeps the sequence, so old cursors then get an
  ``EventsGapError`` instead of silently skipping events.
"""

from __future__ import annotations

import builtins
import heapq
import json
import re
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import islice
from typing import TYPE_CHECKING, TypeVar, cast

import anyio
from pydantic import JsonValue

from tta_agent_coordination import checks
from tta_agent_coordination.errors import (
    AgentConflictError,
    AgentNotFoundError,
    EventsGapError,
    ValidationError,
)
from tta_agent_coordination.models import (
    AgentId,
    AgentInfo,
    Capability,
    CapabilityQuery,
    Page,
    RegistryEvent,
    RegistryEventKind,
)

if TYPE_CHECKING:
    from tta_agent_coordination.settings import BackendOptions

    from .memory import MemoryClock

__all__ = ["MAX_EVENTS_PAGE", "MemoryRegistryStore"]

#: The largest ``limit`` of one ``read_events`` call.
MAX_EVENTS_PAGE = 1000

T = TypeVar("T")

_CURSOR = re.compile(r"[0-9]{1,20}")


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _check_limit(value: object, *, upper: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = f"limit must be an int of at least 1, not {value!r}"
        raise ValidationError(msg)
    if upper is not None and value > upper:
        msg = f"limit must be at most {upper}, not {value!r}"
        raise ValidationError(msg)
    return value


def _copy_metadata(metadata: object) -> dict[str, JsonValue]:
    """A private, JSON-compatible copy of ``metadata`` (the caller may mutate theirs)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        msg = f"metadata must be a mapping, not {type(metadata).__name__}"
        raise ValidationError(msg)
    items = cast("Mapping[object, object]", metadata)
    if not all(isinstance(key, str) for key in items):
        msg = "metadata keys must be strings"
        raise ValidationError(msg)
    try:
        text = json.dumps(dict(items), allow_nan=False)
    except (TypeError, ValueError) as exc:
        msg = f"metadata must be JSON-compatible: {exc}"
        raise ValidationError(msg) from exc
    loaded: dict[str, JsonValue] = json.loads(text)
    return loaded


@dataclass
class _Record:
    """One agent's session. ``info`` is never handed out: callers get deep copies."""

    info: AgentInfo
    token: str
    expires_at: float
    generation: int
    expired: bool = False


class MemoryRegistryStore:
    """In-memory registry store (the :class:`~tta_agent_coordination.protocols.RegistryStore`).

    Args:
        clock: The backend's clock; every time is read from it.
        options: The backend's options (``events_max_length`` bounds the event log).
    """

    def __init__(self, clock: MemoryClock, options: BackendOptions) -> None:
        self._clock = clock
        self._options = options
        self._records: dict[AgentId, _Record] = {}
        self._by_capability: dict[str, set[AgentId]] = {}
        self._heap: list[tuple[float, int, AgentId]] = []
        self._generation = 0
        self._events: deque[tuple[int, RegistryEvent]] = deque()
        # "0" means "the oldest retained": no cursor we hand out may be "0", so the log's
        # head starts at 1 and the first event's cursor is "2".
        self._seq = 1
        self._wakeup: anyio.Event | None = None
        clock.subscribe(self._on_clock_advance)

    # -- housekeeping ---------------------------------------------------------------------

    def clear(self) -> None:
        """Forget every agent and event (``drop_namespace``); the event sequence goes on."""
        self._records.clear()
        self._by_capability.clear()
        self._heap.clear()
        self._events.clear()
        self._notify()

    def _on_clock_advance(self) -> None:
        self._sweep()
        self._notify()

    def _notify(self) -> None:
        event, self._wakeup = self._wakeup, None
        if event is not None:
            event.set()

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    def _index(self, info: AgentInfo) -> None:
        for name in {c.name for c in info.capabilities}:
            self._by_capability.setdefault(name, set()).add(info.agent_id)

    def _unindex(self, info: AgentInfo) -> None:
        for name in {c.name for c in info.capabilities}:
            holders = self._by_capability[name]
            holders.discard(info.agent_id)
            if not holders:
                del self._by_capability[name]

    def _schedule(self, record: _Record) -> None:
        heapq.heappush(self._heap, (record.expires_at, record.generation, record.info.agent_id))
        if len(self._heap) > 4 * len(self._records) + 64:
            self._heap = [
                (r.expires_at, r.generation, r.info.agent_id)
                for r in self._records.values()
                if not r.expired
            ]
            heapq.heapify(self._heap)

    def _sweep(self) -> int:
        now = self._clock.time()
        count = 0
        while self._heap and self._heap[0][0] <= now:
            _, generation, agent_id = heapq.heappop(self._heap)
            record = self._records.get(agent_id)
            if record is None or record.generation != generation or record.expired:
                continue  # superseded by a heartbeat, a new session or a deregistration
            record.expired = True
            self._unindex(record.info)
            self._emit(RegistryEventKind.EXPIRED, record.info, _dt(record.expires_at))
            count += 1
        return count

    def _emit(self, kind: RegistryEventKind, info: AgentInfo, at: datetime | None = None) -> None:
        self._seq += 1
        event = RegistryEvent(
            cursor=str(self._seq),
            kind=kind,
            agent_id=info.agent_id,
            at=at if at is not None else _dt(self._clock.time()),
            agent=info.model_copy(deep=True),
        )
        self._events.append((self._seq, event))
        while len(self._events) > self._options.events_max_length:
            self._events.popleft()
        self._notify()

    def _live(self, agent_id: AgentId) -> _Record | None:
        record = self._records.get(agent_id)
        if record is None or record.expired:
            return None
        return record

    def _start(
        self,
        agent_id: AgentId,
        token: str,
        *,
        capabilities: tuple[Capability, ...],
        metadata: dict[str, JsonValue],
        ttl: float,
        load: float,
        available: bool,
    ) -> _Record:
        """Write a fresh live session for ``agent_id`` (one atomic step) and announce it."""
        now = self._clock.time()
        info = AgentInfo(
            agent_id=agent_id,
            capabilities=capabilities,
            metadata=metadata,
            load=load,
            available=available,
            ttl=ttl,
            registered_at=_dt(now),
            last_heartbeat=_dt(now),
            expires_at=_dt(now + ttl),
        )
        old = self._records.get(agent_id)
        if old is not None and not old.expired:
            self._unindex(old.info)
        record = _Record(info, token, now + ttl, self._next_generation())
        self._records[agent_id] = record
        self._index(info)
        self._schedule(record)
        self._emit(RegistryEventKind.REGISTERED, info)
        return record

    # -- the protocol ---------------------------------------------------------------------

    async def register(
        self,
        agent_id: AgentId,
        *,
        capabilities: Sequence[Capability] = (),
        metadata: Mapping[str, JsonValue] | None = None,
        ttl: float = 30.0,
        load: float = 0.0,
        available: bool = True,
        replace: bool = False,
    ) -> str:
        """Register ``agent_id`` atomically and return the new session token.

        Raises:
            ValidationError: A bad ttl, load, capability or metadata (nothing written).
            AgentConflictError: The id is live under another session and ``replace`` is false.
        """
        checks.instance(agent_id, AgentId, "agent_id")
        ttl = checks.duration(ttl, "ttl", positive=True)
        load = checks.duration(load, "load", positive=False)
        caps = tuple(checks.instance(c, Capability, "capability") for c in capabilities)
        meta = _copy_metadata(metadata)
        self._sweep()
        if self._live(agent_id) is not None and not replace:
            msg = f"agent {agent_id} is live under another session (pass replace=True to take over)"
            raise AgentConflictError(msg)
        token = uuid.uuid4().hex
        self._start(
            agent_id,
            token,
            capabilities=caps,
            metadata=meta,
            ttl=ttl,
            load=load,
            available=bool(available),
        )
        return token

    async def heartbeat(
        self,
        agent_id: AgentId,
        token: str,
        *,
        load: float | None = None,
        available: bool | None = None,
    ) -> AgentInfo:
        """Extend liveness by the ttl; re-register after expiry.

        Raises:
            ValidationError: A bad load.
            AgentConflictError: The session was replaced (the token is not the current one).
            AgentNotFoundError: No session for the agent (never registered, or deregistered).
        """
        checks.instance(agent_id, AgentId, "agent_id")
        if load is not None:
            load = checks.duration(load, "load", positive=False)
        self._sweep()
        record = self._records.get(agent_id)
        if record is None:
            msg = f"agent {agent_id} is not registered"
            raise AgentNotFoundError(msg)
        if record.token != token:
            msg = f"agent {agent_id} is registered under another session"
            raise AgentConflictError(msg)
        info = record.info
        new_load = info.load if load is None else load
        new_available = info.available if available is None else bool(available)
        if record.expired:
            record = self._start(
                agent_id,
                token,
                capabilities=info.capabilities,
                metadata=info.metadata,
                ttl=info.ttl,
                load=new_load,
                available=new_available,
            )
            return record.info.model_copy(deep=True)
        now = self._clock.time()
        changed = new_load != info.load or new_available != info.available
        record.info = info.model_copy(
            update={
                "load": new_load,
                "available": new_available,
                "last_heartbeat": _dt(now),
                "expires_at": _dt(now + info.ttl),
            }
        )
        record.expires_at = now + info.ttl
        record.generation = self._next_generation()
        self._schedule(record)
        if changed:
            self._emit(RegistryEventKind.UPDATED, record.info)
        return record.info.model_copy(deep=True)

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        """End the session; ``False`` if ``token`` is not the agent's current session."""
        checks.instance(agent_id, AgentId, "agent_id")
        self._sweep()
        record = self._records.get(agent_id)
        if record is None or record.token != token:
            return False
        del self._records[agent_id]
        if not record.expired:
            self._unindex(record.info)
            self._emit(RegistryEventKind.DEREGISTERED, record.info)
        return True

    async def get(self, agent_id: AgentId) -> AgentInfo | None:
        """The live agent, or ``None``."""
        checks.instance(agent_id, AgentId, "agent_id")
        self._sweep()
        record = self._live(agent_id)
        return None if record is None else record.info.model_copy(deep=True)

    async def list(  # the protocol's name
        self, *, type: str | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Live agents, optionally of one type or holding a capability name, sorted by id."""
        self._sweep()
        ids: Iterable[AgentId]
        if capability is not None:
            ids = self._by_capability.get(capability, ())
        else:
            ids = [agent_id for agent_id, r in self._records.items() if not r.expired]
        return [
            self._records[agent_id].info.model_copy(deep=True)
            for agent_id in sorted(ids)
            if type is None or agent_id.type == type
        ]

    async def discover(
        self, query: CapabilityQuery, *, limit: int | None = None
    ) -> builtins.list[AgentInfo]:
        """Live, available agents matching ``query``, least loaded first (ties by id).

        Costs in proportion to the live agents holding a capability named ``query.name``.

        Raises:
            ValidationError: ``limit`` below 1, or ``query`` not a ``CapabilityQuery``.
        """
        checks.instance(query, CapabilityQuery, "query")
        if limit is not None:
            _check_limit(limit)
        self._sweep()
        matches = [
            info
            for info in (self._records[a].info for a in self._by_capability.get(query.name, ()))
            if info.holds(query)
        ]
        matches.sort(key=lambda info: (info.load, info.agent_id))
        if limit is not None:
            matches = matches[:limit]
        return [info.model_copy(deep=True) for info in matches]

    def _position(self, after: str | None) -> int:
        """The sequence number to read after (validates the cursor, raises on a gap)."""
        if after is None:
            return self._seq
        if _CURSOR.fullmatch(checks.instance(after, str, "cursor")) is None:
            msg = f"registry events cursor {after!r} is malformed (a cursor this store returned)"
            raise ValidationError(msg)
        position = int(after)
        if position > self._seq:
            msg = f"registry events cursor {after!r} is ahead of the log (head {self._seq})"
            raise ValidationError(msg)
        first_kept = self._events[0][0] if self._events else self._seq + 1
        if after == "0":
            return first_kept - 1
        if position + 1 < first_kept:
            raise EventsGapError(after)
        return position

    def _page(self, position: int, limit: int) -> builtins.list[RegistryEvent]:
        first_kept = self._events[0][0] if self._events else self._seq + 1
        if position + 1 < first_kept:
            raise EventsGapError(str(position))
        start = position + 1 - first_kept
        return [event for _, event in islice(self._events, start, start + limit)]

    def _expiry_delay(self) -> float | None:
        """Real seconds until the next expiry, on a clock that flows; else ``None``."""
        if self._clock.manual or not self._heap:
            return None
        return max(0.0, self._heap[0][0] - self._clock.time())

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        """Events after ``after`` (``None``: only new ones; ``"0"``: the oldest retained).

        With ``wait`` (real seconds), blocks until an event arrives or the time is up, woken by
        the writes of this store, by clock advances and by the next expiry, never by polling.

        Raises:
            ValidationError: A malformed cursor, a ``limit`` outside 1..1000 or a bad ``wait``.
            EventsGapError: Events after ``after`` were trimmed from the log.
        """
        _check_limit(limit, upper=MAX_EVENTS_PAGE)
        if wait is not None:
            wait = checks.duration(wait, "wait", positive=False)
        position = self._position(after)
        self._sweep()
        items = self._page(position, limit)
        if not items and wait:
            deadline = anyio.current_time() + wait
            while not items:
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                delay = self._expiry_delay()
                if delay is not None:
                    remaining = min(remaining, delay)
                if self._wakeup is None:
                    self._wakeup = anyio.Event()
                with anyio.move_on_after(remaining):
                    await self._wakeup.wait()
                self._sweep()
                items = self._page(position, limit)
        next_cursor = items[-1].cursor if items else str(position)
        return Page[RegistryEvent](items=items, next_cursor=next_cursor)

    async def sweep(self) -> int:
        """Detect expired agents and emit their ``expired`` events (exactly once); count."""
        return self._sweep()
