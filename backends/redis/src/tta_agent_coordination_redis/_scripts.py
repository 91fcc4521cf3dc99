"""Lua scripts from ``scripts/``, run by SHA in one round trip.

``scripts/NAME.lua`` is the script ``NAME``. A line ``--#include OTHER`` inlines
``scripts/OTHER.lua`` (once), so shared helpers (``_time.lua``, ``_queue.lua``) are written
once and every script stays one self-contained ``EVALSHA``. Helpers a script never calls are
left out of its text (Lua makes a closure of every ``local function`` on each run). A script
is sent by SHA; if the server answers ``NOSCRIPT`` (restarted, failed over, ``SCRIPT FLUSH``),
the same round trip is repeated with ``EVAL`` and the full text, which also caches it again.

On a plain ``redis.asyncio.Redis`` client (pooled, ``execute_command`` not wrapped by
instrumentation) the ``EVALSHA`` takes a lean path: the command is packed here in one pass
(a queue's keys and leading arguments packed once; redis-py's generic packer and command
wrapper cost several times more than the round trip's own work) and sent on a connection
the driver keeps between its calls or borrows from the client's pool (``KeptConnections``),
with redis-py's own send, read and error handling (a connection whose reply was not read, on
any error or cancellation, is disconnected and goes back to the pool). Anything else (a
cluster client, a single-connection client, an instrumented client, the ``EVAL`` fallback)
goes through ``execute_command`` as before.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Final, cast

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection, ConnectionPool

__all__ = [
    "LIBRARY_SCRIPTS",
    "KeptConnections",
    "Library",
    "Packed",
    "Script",
    "ScriptRunner",
    "load_script",
    "pack_command",
    "pack_evalsha",
    "queue_library",
]

_INCLUDE: Final = re.compile(r"^--#include ([A-Za-z0-9_]+)[ \t]*$", re.MULTILINE)


_PACKAGE: Final = "tta_agent_coordination_redis"

#: redis-py's own ``execute_command``: a client with another (a subclass's, instrumentation
#: wrapping the class's or the instance's) keeps going through it, so nothing it adds is
#: bypassed.
_EXECUTE: Final[object] = getattr(Redis, "execute_command")  # noqa: B009  # an identity, untyped
_EVALSHA: Final = b"$7\r\nEVALSHA\r\n"


def _read(name: str) -> str:
    return resources.files(_PACKAGE).joinpath("scripts", f"{name}.lua").read_text("utf-8")


def _expand(name: str) -> str:
    """The text of ``scripts/NAME.lua`` with its ``--#include`` lines expanded."""
    seen: set[str] = set()

    def expand(text: str) -> str:
        def inline(match: re.Match[str]) -> str:
            other = match.group(1)
            if other in seen:
                return f"-- (included above: {other})"
            seen.add(other)
            return expand(_read(other))

        return _INCLUDE.sub(inline, text)

    seen.add(name)
    return expand(_read(name))


def load_script(name: str) -> str:
    """The text of ``scripts/NAME.lua``, includes expanded, helpers it never calls left out."""
    return _drop_unused(_expand(name))


#: A top-level helper: ``local function NAME(`` at the start of a line up to the first line
#: that is ``end`` alone (the helpers' bodies are indented, so that line closes the function).
_HELPER: Final = re.compile(
    r"^local function ([A-Za-z_][A-Za-z0-9_]*)\(.*?^end[ \t]*\n", re.MULTILINE | re.DOTALL
)


#: A Lua line comment or a one-line string literal (names in either are not uses).
_COMMENT: Final = re.compile(r"--.*$|'[^'\n]*'|\"[^\"\n]*\"", re.MULTILINE)
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _drop_unused(text: str) -> str:
    """``text`` without the top-level helpers nothing else in it calls.

    A shared prelude defines every helper of its family, and Lua makes a closure of each one on
    every run of the script: a helper the script never calls costs time on every call. Removal
    repeats until no unused helper is left (one may only be used by another unused one). Names
    are counted once over the text and once per helper, so this stays linear in the text.
    """
    uses = Counter(_NAME.findall(_COMMENT.sub("", text)))
    helpers = [
        (m.group(1), m.start(), m.end(), Counter(_NAME.findall(_COMMENT.sub("", m.group(0)))))
        for m in _HELPER.finditer(text)
    ]
    dropped: set[int] = set()
    changed = True
    while changed:
        changed = False
        for index, (name, _, _, own) in enumerate(helpers):
            if index not in dropped and uses[name] == own[name]:  # used only by itself
                dropped.add(index)
                uses.subtract(own)
                changed = True
    kept: list[str] = []
    last = 0
    for index, (_, start, end, _) in enumerate(helpers):
        if index in dropped:
            kept.append(text[last:start])
            last = end
    kept.append(text[last:])
    return "".join(kept)


class Script:
    """One loaded script: its text and SHA1."""

    __slots__ = ("head", "name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = load_script(name)
        self.sha = hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest()
        #: ``EVALSHA <sha>`` in the protocol, packed once.
        self.head = _EVALSHA + _bulk(self.sha.encode())


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def _encode(value: object, encoding: str, errors: str) -> bytes:
    """One argument as redis-py's encoder sends it (``repr`` for numbers)."""
    if isinstance(value, str):
        return value.encode(encoding, errors)
    if isinstance(value, bytes):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value).encode()
    msg = f"invalid script argument {value!r}: str, bytes, int or float only"
    raise redis_errors.DataError(msg)


class Packed:
    """The leading part of a script call, packed once: ``numkeys``, the keys, fixed arguments.

    A store that calls scripts with the same keys and leading arguments over and over (every
    call on one queue) keeps one and passes it to :meth:`ScriptRunner.run`.
    """

    __slots__ = ("count", "data", "nargs")

    def __init__(
        self,
        keys: Sequence[str],
        args: Sequence[Any],
        encoding: str = "utf-8",
        errors: str = "strict",
    ) -> None:
        items = [b"%d" % len(keys), *(_encode(v, encoding, errors) for v in (*keys, *args))]
        self.data = b"".join(_bulk(item) for item in items)
        self.count = len(items)
        #: How many of the call's arguments (after the keys) are packed here.
        self.nargs = len(args)


def pack_evalsha(
    script: Script,
    keys: Sequence[str],
    args: Sequence[Any],
    encoding: str = "utf-8",
    errors: str = "strict",
    *,
    packed: Packed | None = None,
    head: bytes | None = None,
) -> bytes:
    """``EVALSHA sha numkeys keys... args...`` in the Redis protocol, as redis-py would send it.

    Strings are encoded with the client's encoding; ints and floats as their ``repr`` (as
    redis-py's encoder does); bytes as they are. With ``packed`` (made from the same keys and
    the first ``packed.nargs`` arguments) only the remaining arguments are packed here. With
    ``head`` (``FCALL name``, packed) that command is sent instead of the ``EVALSHA``.

    Raises:
        redis.exceptions.DataError: An argument of another type (as redis-py raises).
    """
    if packed is None:
        packed = Packed(keys, (), encoding, errors)
    rest = args[packed.nargs :]
    parts = [b"*%d\r\n" % (2 + packed.count + len(rest)), head or script.head, packed.data]
    _add_bulks(parts, rest, encoding, errors)
    return b"".join(parts)


def pack_command(args: Sequence[Any], encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """One command in the Redis protocol, its arguments encoded as :func:`pack_evalsha` does."""
    parts = [b"*%d\r\n" % len(args)]
    _add_bulks(parts, args, encoding, errors)
    return b"".join(parts)


def _add_bulks(parts: list[bytes], values: Sequence[Any], encoding: str, errors: str) -> None:
    """Append each value to ``parts`` as a bulk string, as ``_bulk(_encode(value))`` makes it.

    Inline (a batch of 100 entries packs 300 values); a body is copied once, by the join.
    """
    append = parts.append
    for value in values:
        if isinstance(value, bytes):
            data = value
        elif isinstance(value, str):
            data = value.encode(encoding, errors)
        else:
            data = _encode(value, encoding, errors)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")


def _lean_pool(client: Redis) -> ConnectionPool | None:
    """The client's pool when the lean path applies to it, else ``None``."""
    execute: object = getattr(client, "execute_command", None)
    if getattr(execute, "__func__", None) is not _EXECUTE or getattr(
        client, "single_connection_client", True
    ):
        return None
    pool: object = getattr(client, "connection_pool", None)
    return pool if isinstance(pool, ConnectionPool) else None


#: The queue scripts: on a server with Redis Functions (7.0+) they run as the functions of one
#: library (``FCALL``), whose helpers are made once when it is loaded instead of on every run.
LIBRARY_SCRIPTS: Final = ("enqueue", "reserve", "ack", "settle", "manage", "inspect")
#: Every queue function but enqueue may run when the server is out of memory (it takes entries
#: out, or moves them): consumers can drain a full server. An enqueue is refused up front.
_ALLOW_OOM: Final = frozenset(LIBRARY_SCRIPTS) - {"enqueue"}
_FCALL: Final = b"$5\r\nFCALL\r\n"


class Library:
    """The queue scripts as one Redis Function library.

    Its text is the scripts' shared helpers (``_queue.lua``, once) and one registered function
    per script whose body is the script's own text; the scripts' ``KEYS`` and ``ARGV`` are the
    functions' arguments. Its name carries the text's SHA1, so two versions of the driver on one
    server load two libraries side by side instead of replacing each other's.
    """

    __slots__ = ("heads", "name", "text")

    def __init__(self, scripts: Sequence[str] = LIBRARY_SCRIPTS) -> None:
        bodies: list[str] = []
        for name in scripts:
            text = _read(name)
            head, _, body = text.partition("--#include _queue\n")
            if not body:
                msg = f"scripts/{name}.lua does not include _queue"
                raise ValueError(msg)
            flags = "{'allow-oom'}" if name in _ALLOW_OOM else "{}"
            bodies.append(
                f"{head}redis.register_function{{function_name = '@_{name}', flags = {flags},"
                f" callback = function(KEYS, ARGV)\n{body}end}}\n"
            )
        helpers = _expand("_queue")
        text = _drop_unused(helpers + "\n" + "".join(bodies))
        sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self.name = f"tta_queue_{sha[:16]}"
        self.text = f"#!lua name={self.name}\n" + text.replace("'@_", f"'{self.name}_")
        #: ``FCALL <library>_<script>`` in the protocol, packed once per script.
        self.heads = {name: _FCALL + _bulk(f"{self.name}_{name}".encode()) for name in scripts}


@functools.cache
def queue_library() -> Library:
    """The queue library (built once per process)."""
    return Library()


def _fcall_denied(exc: redis_errors.ResponseError) -> bool:
    """Whether an ``FCALL`` was refused because the user's ACL does not allow ``FCALL``."""
    return isinstance(exc, redis_errors.NoPermissionError) and "'fcall'" in str(exc).lower()


def _missing_function(exc: redis_errors.ResponseError) -> bool:
    """Whether an ``FCALL`` failed because the server does not hold the library (any more)."""
    return "function not found" in str(exc).lower()


class KeptConnections:
    """Connections the driver keeps between its own script calls, taken from the client's pool.

    redis-py's pool costs more client CPU per borrow and return (a lock, its usage metrics and
    events, a read to check the socket) than the rest of a script call's client work. A
    connection that answered a call in full is kept here for the next call instead (at most
    ``limit``: an eighth of the pool's ``max_connections``, up to 8, so the pool never runs
    short for the client's other users); one more goes back to the pool. :meth:`close` gives
    them all back (the backend's ``aclose``). A forked child never uses its parent's sockets:
    it forgets the kept connections and borrows its own.
    """

    __slots__ = ("connections", "limit", "pid", "pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.connections: list[AbstractConnection] = []
        most: object = getattr(pool, "max_connections", 0)
        self.limit = min(8, most // 8) if isinstance(most, int) else 0
        self.pid = os.getpid()

    async def take(self) -> AbstractConnection:
        """A kept connection, or one borrowed from the pool."""
        if self.connections:
            if self.pid == os.getpid():
                return self.connections.pop()
            self.connections.clear()  # a forked child: the parent's sockets are not ours
            self.pid = os.getpid()
        get: Callable[[], Awaitable[AbstractConnection]] = self.pool.get_connection
        return await get()

    async def give(self, connection: AbstractConnection) -> None:
        """Keep a connection whose reply was read in full, or return it to the pool."""
        if len(self.connections) < self.limit and self.pid == os.getpid():
            self.connections.append(connection)
        else:
            await self.pool.release(connection)

    async def close(self) -> None:
        """Give every kept connection back to the pool."""
        kept, self.connections = self.connections, []
        if self.pid == os.getpid():
            for connection in kept:
                await self.pool.release(connection)


async def _write(connection: AbstractConnection, packed: bytes) -> None:
    """Write ``packed`` to a connected connection's socket, else the way redis-py does.

    redis-py's ``send_packed_command`` bounds the write with ``asyncio.wait_for``, which on
    Python 3.11 runs it as a task of its own (two more turns of the event loop per command).
    A command the socket takes whole at once needs no wait: it is handed to the transport
    directly, and only what the socket did not take yet is waited for (with the same bound).
    A connection that is not connected, closing or due a health check goes through redis-py.
    """
    writer = getattr(connection, "_writer", None)
    transport = getattr(writer, "transport", None)
    if (
        writer is None
        or transport is None
        or getattr(connection, "_reader", None) is None
        or connection.health_check_interval
        or transport.is_closing()
    ):
        await connection.send_packed_command(packed)
        return
    writer.write(packed)  # a socket error here closes the transport; the read reports it
    if transport.get_write_buffer_size():
        try:
            await asyncio.wait_for(writer.drain(), connection.socket_timeout)
        except TimeoutError:
            await connection.disconnect(nowait=True)
            raise redis_errors.TimeoutError("Timeout writing to socket") from None
        except BaseException:
            await connection.disconnect(nowait=True)
            raise


async def _send_packed(kept: KeptConnections, packed: bytes) -> Any:
    """Send one packed command on a kept or pooled connection and read its reply."""
    connection = await kept.take()
    try:
        await _write(connection, packed)
        reply = cast("Any", await connection.read_response())
    except redis_errors.ResponseError:
        # An error reply (NOSCRIPT, a script error) was read in full: the connection is fine.
        await kept.give(connection)
        raise
    except BaseException:
        # redis-py disconnects on errors while sending or reading; make sure of it before the
        # connection goes back (a reply left unread would answer the next command). The kept
        # ones go back too: after a lost connection they may all be dead (a restarted server),
        # and the pool checks each one before it lends it again, so the retry finds a live one.
        await connection.disconnect(nowait=True)
        await kept.pool.release(connection)
        await kept.close()
        raise
    await kept.give(connection)
    return reply


class ScriptRunner:
    """Runs scripts by name on one client (scripts are read from the package once)."""

    def __init__(self) -> None:
        self._scripts: dict[str, Script] = {}
        self._kept: KeptConnections | None = None
        #: Whether the queue scripts run as the queue library's functions: ``None`` until the
        #: first queue script tries to load it, then whether the server took it (a server
        #: before Redis 7, or a user the ACL denies ``FUNCTION LOAD``, runs them by SHA).
        self.functions: bool | None = None

    def _kept_for(self, pool: ConnectionPool) -> KeptConnections:
        kept = self._kept
        if kept is None or kept.pool is not pool:
            kept = self._kept = KeptConnections(pool)
        return kept

    async def close(self) -> None:
        """Give the connections kept between calls back to the client's pool; idempotent."""
        if self._kept is not None:
            await self._kept.close()

    def get(self, name: str) -> Script:
        """The script ``name`` (read and expanded on first use)."""
        script = self._scripts.get(name)
        if script is None:
            script = Script(name)
            self._scripts[name] = script
        return script

    async def command(self, client: Redis, *args: Any) -> Any:
        """Run one plain command: on the lean path (its reply unparsed), else by redis-py.

        The waiting reserve's ``BLPOP`` goes this way: the reply that ends a block is on the
        way from an enqueue to a handler, where redis-py's command path (its retry wrapper,
        its timing hooks, the pool's lock) costs more than the read itself.
        """
        pool = _lean_pool(client)
        if pool is None:
            execute = cast("Callable[..., Awaitable[Any]]", client.execute_command)
            return await execute(*args)
        kwargs = pool.connection_kwargs
        packed = pack_command(
            args, kwargs.get("encoding", "utf-8"), kwargs.get("encoding_errors", "strict")
        )
        return await _send_packed(self._kept_for(pool), packed)

    async def load_library(self, client: Redis) -> bool:
        """Load the queue library; whether the queue scripts run as its functions from now on.

        A library that is there already (another client loaded it) counts as loaded. Any other
        error reply (no ``FUNCTION`` before Redis 7, an ACL without it, a server that refuses
        it) turns the functions off for this runner: the scripts run by SHA, as before (so
        does an ``FCALL`` the ACL refuses, in :meth:`run`).
        Connection errors propagate (the caller's boundary retries them).
        """
        library = queue_library()
        try:
            await client.function_load(library.text)
        except redis_errors.ResponseError as exc:
            self.functions = "already exists" in str(exc)
        else:
            self.functions = True
        return self.functions

    async def run(
        self,
        client: Redis,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        packed: Packed | None = None,
    ) -> Any:
        """Run the script: as a queue library function, else ``EVALSHA`` (``EVAL`` on ``NOSCRIPT``).

        The library is only used on the lean path (a plain pooled client): it is loaded on
        first use, and again when the server answers that it does not hold it (a restart
        without persistence, ``FUNCTION FLUSH``), then the call is repeated once.
        ``packed``, when given, holds ``keys`` and the first ``packed.nargs`` of ``args``
        already packed (for the lean path; the other paths send ``keys`` and ``args``).
        Redis errors are not translated here: the caller runs this inside the error boundary.
        """
        script = self.get(name)
        try:
            pool = _lean_pool(client)
            if pool is None:
                return await client.evalsha(script.sha, len(keys), *keys, *args)
            kwargs = pool.connection_kwargs
            encoding = kwargs.get("encoding", "utf-8")
            errors = kwargs.get("encoding_errors", "strict")
            kept = self._kept_for(pool)
            if name in LIBRARY_SCRIPTS and (
                self.functions or (self.functions is None and await self.load_library(client))
            ):
                head = queue_library().heads[name]
                fcall = pack_evalsha(script, keys, args, encoding, errors, packed=packed, head=head)
                try:
                    return await _send_packed(kept, fcall)
                except redis_errors.ResponseError as exc:
                    if _fcall_denied(exc):
                        self.functions = False  # an ACL that allows FUNCTION LOAD, not FCALL
                    elif not _missing_function(exc):
                        raise
                    elif await self.load_library(client):  # the server lost it: load, again
                        return await _send_packed(kept, fcall)
            evalsha = pack_evalsha(script, keys, args, encoding, errors, packed=packed)
            return await _send_packed(kept, evalsha)
        except redis_errors.NoScriptError:
            return await client.eval(script.text, len(keys), *keys, *args)
