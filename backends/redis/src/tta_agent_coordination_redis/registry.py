"""The Redis registry store: live agents, liveness by ttl, an event log in a Redis Stream.

Every operation is one Lua script (``scripts/registry_*.lua``, sharing ``registry_lib``) and
so one round trip; ``read_events(wait=...)`` adds one blocking ``XREAD`` when it finds nothing.
Times come from the server (``TIME`` inside the script, plus the namespace's clock offset), in
microseconds. The keys, all under the namespace's hash tag (one Redis Cluster slot):

==========================  ======  ===========================================================
``registry:agent:<id>``     HASH    one session: token, capabilities and metadata (JSON),
                                    load, availability, ttl, times, and whether it expired
``registry:live``           ZSET    live agent id -> expiry time: liveness and expiry detection
``registry:ids``            ZSET    every kept session's id (score 0, by id): ``list(type=)``
``registry:cap:<name>``     SET     live ids holding a capability called ``name``: discovery
``registry:events``         STREAM  events with ids ``<seq>-0``, ``MAXLEN events_max_length``
``registry:head``           STRING  the newest event's sequence number
==========================  ======  ===========================================================

How the contract is kept:

* **Expiry exactly once.** Every script first moves the agents whose expiry time has passed
  out of ``registry:live`` and the capability sets, marks them expired and appends their
  ``expired`` events, in the same atomic step: whichever client runs a script first emits the
  event; no later script can see the agent live again.
* **Discovery** reads the set of live holders of the capability name, drops unavailable and
  overloaded ones in the script, and checks versions and tags here: the cost follows the
  holders of the name, not the registry's size.
* **Cursors** are decimal sequence numbers, consecutive; the stream entry of event ``n`` has
  the id ``n-0``. ``"0"`` means the oldest retained. The log of a namespace starts at the
  server's time in microseconds, so a log re-created after ``drop_namespace`` continues above
  every cursor handed out before (old cursors get ``EventsGapError``, decision 0003).
* **Waiting readers** run the read script; if it returns nothing they block in
  ``XREAD BLOCK`` on the stream after their position (woken by any client's ``XADD``), for at
  most the time until the next expiry, then read again: expiries are reported on time and
  nothing is polled.
* A repeated ``register`` with the same token while the session is live (a retry after a lost
  reply) writes nothing and succeeds.
"""

from __future__ import annotations

import builtins
import json
import math
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, cast

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
    from redis.asyncio import Redis

    from tta_agent_coordination.settings import BackendOptions

    from .backend import Connection

__all__ = ["MAX_EVENTS_PAGE", "RedisRegistryStore"]

#: The largest ``limit`` of one ``read_events`` call.
MAX_EVENTS_PAGE: Final = 1000

_CURSOR: Final = re.compile(r"[0-9]{1,20}")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
#: The fields of an agent every script answer and event carries, in the scripts' order.
_SNAPSHOT_FIELDS: Final = 7
_KINDS: Final = {kind.value: kind for kind in RegistryEventKind}


def _text(value: bytes | str) -> str:
    """A reply as text (redis-py answers bytes, or str from a client that decodes)."""
    return value.decode() if isinstance(value, bytes) else value


def _dt(microseconds: bytes | str | int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(microseconds))


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


def _metadata_json(metadata: object) -> Any:
    """``metadata`` as a JSON-compatible copy, checked (the caller may mutate theirs)."""
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
        return json.loads(json.dumps(dict(items), allow_nan=False))
    except (TypeError, ValueError) as exc:
        msg = f"metadata must be JSON-compatible: {exc}"
        raise ValidationError(msg) from exc


def _info(agent_id: AgentId | bytes | str, fields: Sequence[bytes | str]) -> AgentInfo:
    """An ``AgentInfo`` from the scripts' snapshot fields.

    Args:
        agent_id: The agent, or its ``str()`` as the script returned it.
        fields: static JSON, load, available, ttl, registered, heartbeat, expires.
    """
    static, load, available, ttl, registered, heartbeat, expires = fields
    data = json.loads(static)
    return AgentInfo.model_validate(
        {
            "agent_id": agent_id if isinstance(agent_id, AgentId) else _text(agent_id),
            "capabilities": data["capabilities"],
            "metadata": data["metadata"],
            "load": float(load),
            "available": _text(available) == "1",
            "ttl": float(ttl),
            "registered_at": _dt(registered),
            "last_heartbeat": _dt(heartbeat),
            "expires_at": _dt(expires),
        }
    )


def _infos(flat: Sequence[bytes | str]) -> builtins.list[AgentInfo]:
    """The agents of a flat script answer: an id, then its snapshot fields, for each."""
    stride = _SNAPSHOT_FIELDS + 1
    return [_info(flat[n], flat[n + 1 : n + stride]) for n in range(0, len(flat), stride)]


def _event(entry: Sequence[Any]) -> RegistryEvent:
    """A ``RegistryEvent`` from one stream entry ``[id, [field, value, ...]]``."""
    raw_id, flat = cast("tuple[bytes | str, Sequence[bytes | str]]", entry)
    values = {_text(field): value for field, value in zip(flat[::2], flat[1::2], strict=True)}
    agent_id = AgentId.parse(_text(values["id"]))
    agent = _info(
        agent_id,
        [
            values["static"],
            values["load"],
            values["available"],
            values["ttl"],
            values["registered"],
            values["heartbeat"],
            values["expires"],
        ],
    )
    return RegistryEvent(
        cursor=_text(raw_id).partition("-")[0],
        kind=_KINDS[_text(values["kind"])],
        agent_id=agent_id,
        at=_dt(values["at"]),
        agent=agent,
    )


class RedisRegistryStore:
    """The registry store on Redis (the ``RegistryStore`` protocol).

    Args:
        connection: The backend's shared internals (client, keys, scripts, error boundary).
        options: The backend's options (``events_max_length`` bounds the event stream).
    """

    def __init__(self, connection: Connection, options: BackendOptions) -> None:
        self._connection = connection
        self._options = options
        keys = connection.keys
        self._events_key = keys.ns("registry:events")
        self._keys = [
            keys.clock,
            keys.ns("registry:head"),
            self._events_key,
            keys.ns("registry:live"),
            keys.ns("registry:ids"),
        ]
        self._base_args: list[str | int] = [
            keys.ns("registry:agent:"),
            keys.ns("registry:cap:"),
            options.events_max_length,
        ]

    async def _run(self, name: str, *args: str | int) -> Any:
        return await self._connection.run_script(
            f"registry_{name}", self._keys, [*self._base_args, *args]
        )

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
        load = checks.duration(load, "load")
        caps = [checks.instance(c, Capability, "capability") for c in capabilities]
        static = json.dumps(
            {
                "capabilities": [c.model_dump(mode="json") for c in caps],
                "metadata": _metadata_json(metadata),
            },
            separators=(",", ":"),
        )
        names = ",".join(sorted({c.name for c in caps}))
        token = uuid.uuid4().hex
        reply = await self._run(
            "register",
            str(agent_id),
            token,
            static,
            names,
            repr(load),
            "1" if available else "0",
            repr(ttl),
            _us(ttl),
            "1" if replace else "0",
        )
        if _text(reply[0]) == "conflict":
            msg = f"agent {agent_id} is live under another session (pass replace=True to take over)"
            raise AgentConflictError(msg)
        return token

    async def heartbeat(
        self,
        agent_id: AgentId,
        token: str,
        *,
        load: float | None = None,
        available: bool | None = None,
    ) -> AgentInfo:
        """Extend liveness by the ttl, optionally updating load and availability.

        After expiry it re-registers (a ``registered`` event); a heartbeat that changes nothing
        is no event.

        Raises:
            ValidationError: A bad load.
            AgentConflictError: The session was replaced (the token is not the current one).
            AgentNotFoundError: No session for the agent (never registered, or deregistered).
        """
        checks.instance(agent_id, AgentId, "agent_id")
        if load is not None:
            load = checks.duration(load, "load")
        reply = await self._run(
            "heartbeat",
            str(agent_id),
            str(token),
            "" if load is None else repr(load),
            "" if available is None else ("1" if available else "0"),
        )
        status = _text(reply[0])
        if status == "notfound":
            msg = f"agent {agent_id} is not registered"
            raise AgentNotFoundError(msg)
        if status == "conflict":
            msg = f"agent {agent_id} is registered under another session"
            raise AgentConflictError(msg)
        return _info(agent_id, reply[1:])

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        """End the session; ``False`` if ``token`` is not the agent's current session."""
        checks.instance(agent_id, AgentId, "agent_id")
        return bool(await self._run("deregister", str(agent_id), str(token)))

    async def get(self, agent_id: AgentId) -> AgentInfo | None:
        """The live agent, or ``None``."""
        checks.instance(agent_id, AgentId, "agent_id")
        found = _infos(await self._run("get", str(agent_id)))
        return found[0] if found else None

    async def list(  # the protocol's name
        self, *, type: str | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Live agents, optionally of one type or holding a capability name, sorted by id."""
        if capability is not None:
            flat = await self._run("list", "capability", str(capability))
        elif type is not None:
            flat = await self._run("list", "type", str(type))
        else:
            flat = await self._run("list", "all", "")
        infos = [i for i in _infos(flat) if type is None or i.agent_id.type == type]
        infos.sort(key=lambda info: info.agent_id)
        return infos

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
            checks.integer(limit, "limit", 1)
        max_load = "" if query.max_load is None else repr(query.max_load)
        flat = await self._run("discover", query.name, max_load)
        matches = [info for info in _infos(flat) if info.holds(query)]
        matches.sort(key=lambda info: (info.load, info.agent_id))
        return matches if limit is None else matches[:limit]

    async def _read(
        self, after: str, limit: int
    ) -> tuple[int, float | None, builtins.list[RegistryEvent]]:
        """One read script: (position read after, seconds to the next expiry, events)."""
        reply = await self._run("read_events", after, limit)
        status = _text(reply[0])
        if status == "ahead":
            msg = f"registry events cursor {after!r} is ahead of the log (head {_text(reply[1])})"
            raise ValidationError(msg)
        if status == "gap":
            raise EventsGapError(after)
        position = int(reply[1])
        next_expiry = int(reply[2]) / 1_000_000 if reply[2] else None
        return position, next_expiry, [_event(entry) for entry in reply[3]]

    async def _block(self, position: int, seconds: float) -> None:
        """Block until an event after ``position`` is appended or ``seconds`` pass."""
        key = self._events_key
        max_block = self._connection.max_block
        if max_block is not None:
            # A block near the socket timeout would end in a timeout error: block for at most
            # the connection's max_block and read again (the caller loops).
            seconds = min(seconds, max_block)
        milliseconds = max(1, math.ceil(seconds * 1000))

        async def xread(client: Redis) -> object:
            return await client.xread({key: f"{position}-0"}, count=1, block=milliseconds)

        await self._connection.call(xread, what="registry events wait")

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        """Events after ``after`` (``None``: only new ones; ``"0"``: the oldest retained).

        With ``wait`` (real seconds), blocks until an event arrives or the time is up, woken by
        any client's write through ``XREAD BLOCK`` and by the next expiry, never by polling.

        Raises:
            ValidationError: A malformed cursor, a ``limit`` outside 1..1000 or a bad ``wait``.
            EventsGapError: Events after ``after`` were trimmed from the log.
        """
        checks.integer(limit, "limit", 1, MAX_EVENTS_PAGE)
        if wait is not None:
            wait = checks.duration(wait, "wait")
        if after is not None and _CURSOR.fullmatch(checks.instance(after, str, "cursor")) is None:
            msg = f"registry events cursor {after!r} is malformed (a cursor this store returned)"
            raise ValidationError(msg)
        position, next_expiry, items = await self._read(after or "", limit)
        if not items and wait:
            deadline = time.monotonic() + wait
            while not items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if next_expiry is not None:
                    remaining = min(remaining, next_expiry)
                await self._block(position, remaining)
                position, next_expiry, items = await self._read(str(position), limit)
        next_cursor = items[-1].cursor if items else str(position)
        return Page[RegistryEvent](items=items, next_cursor=next_cursor)

    async def sweep(self) -> int:
        """Detect expired agents and emit their ``expired`` events (exactly once); count."""
        return int(await self._run("sweep"))

    async def wake_all(self) -> None:
        """After a clock advance: detect the expiries it caused (their events wake readers).

        ``RedisClock.advance`` awaits this, as the memory driver sweeps on every advance, so a
        reader blocked in ``read_events(wait=...)`` on any client sees the ``expired`` events
        the moved clock implies without waiting for its own timer (set on the old clock).
        """
        await self.sweep()

    async def drop(self) -> None:
        """Delete every registry key of the namespace, found from the registry's indexes."""
        await self._run("drop")
