"""The Redis backend: ``redis://``, ``rediss://`` (TLS) and ``redis+cluster://``.

``RedisBackend`` bundles the three stores over one redis-py asyncio client. The stores share
one small internal object, :class:`Connection`, which is the driver's whole internal API:

``Connection`` (built once per backend; stores keep a reference)
    ``client``
        The ``redis.asyncio.Redis`` client (``decode_responses=False``: replies are bytes).
    ``keys``
        A :class:`~tta_agent_coordination_redis.keys.Keys` for the namespace:
        ``keys.ns("breakers")`` is a namespace-wide key (the namespace's hash tag),
        ``keys.queue(name, "ready")`` a key of one queue, ``keys.clock`` the clock offset key.
    ``options``
        The ``BackendOptions`` in force.
    ``await run_script(name, keys, args)``
        Runs ``scripts/<name>.lua`` in one round trip (``EVALSHA``, reloaded on ``NOSCRIPT``),
        inside the error boundary (transient errors retried, then ``BackendUnavailableError``).
        A script reads the backend's clock with ``--#include _time`` and
        ``tta_now(KEYS[i])``, passing ``keys.clock`` among its KEYS.
    ``await call(fn, what=...)``
        Runs ``fn(client)`` (one command or one pipeline) inside the same boundary.
    ``await time_ms()``
        The backend's clock (server ``TIME`` plus the offset), in milliseconds.
    ``max_block``
        The longest a blocking command (``BLPOP``, ``XREAD BLOCK``) may block, below the
        client's socket timeout (``None``: no limit).
    ``cluster``
        True on Redis Cluster (``redis+cluster://``). ``client`` is then a
        ``redis.asyncio.RedisCluster`` (typed as ``Redis``: the commands used are the same), a
        script's KEYS must all share one hash tag, and queue scripts get the clock offset as an
        argument (``clock_arg()``) instead of reading the namespace's clock key.

Each store is built as ``Store(connection, options)`` and has ``async def drop(self)``, which
``drop_namespace`` awaits to delete the store's keys from the store's own indexes; the queue
and the registry also have ``async def wake_all(self)``, which ``clock.advance`` awaits so
that their waiting readers re-check their due times.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar, cast
from urllib.parse import SplitResult, urlsplit, urlunsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio import connection as redis_connection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from tta_agent_coordination.errors import BackendConfigWarning, BackendError, ValidationError
from tta_agent_coordination.settings import BackendOptions

from ._errors import boundary
from ._scripts import Packed, ScriptRunner
from .breakers import RedisBreakerStore
from .keys import Keys
from .queue import RedisQueueStore
from .registry import RedisRegistryStore

__all__ = ["SCHEMES", "Connection", "RedisBackend", "RedisClock", "from_url"]

T = TypeVar("T")

#: The URL schemes this driver serves.
SCHEMES: Final = ("redis", "rediss", "redis+cluster")

#: Driver options accepted in the URL query (passed to redis-py as they are).
_CLIENT_OPTIONS: Final[dict[str, Callable[[str], object]]] = {
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "health_check_interval": int,
    "max_connections": int,
    # rediss:// only: the CA bundle to trust, the client's certificate and key (mutual TLS)
    # and whether the server's certificate is required (required, optional, none).
    "ssl_ca_certs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,
}


#: The oldest server the scripts run on (they use ``ZMSCORE``, new in Redis 6.2).
MIN_SERVER: Final = (6, 2)


def _version(reply: object) -> tuple[int, int] | None:
    """``(major, minor)`` from an ``INFO server`` reply (nested by node on a cluster)."""
    while isinstance(reply, dict) and reply:
        info = cast("dict[object, object]", reply)
        if "redis_version" in info:
            parts = str(info["redis_version"]).split(".")
            if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
                return int(parts[0]), int(parts[1])
            return None
        reply = next(iter(info.values()))
    return None


def _policy(reply: object) -> str:
    """The policy in a ``CONFIG GET`` reply (nested by node on a cluster); ``""`` if none."""
    while isinstance(reply, dict) and reply:
        reply = next(iter(cast("dict[object, object]", reply).values()))
    return reply.decode() if isinstance(reply, bytes) else reply if isinstance(reply, str) else ""


class Connection:
    """What every store of one backend shares: the client, the keys, scripts, the boundary.

    Args:
        client: A ``redis.asyncio.Redis`` client (or a ``RedisCluster``, with ``cluster``).
        options: The backend's options.
        cluster: The client is a Redis Cluster client.
    """

    def __init__(
        self,
        client: Redis,
        options: BackendOptions,
        *,
        cluster: bool = False,
        functions: bool = True,
    ) -> None:
        self.client = client
        self.options = options
        self.cluster = cluster
        #: On Redis Cluster: the namespace's clock offset (ms), read at first use and moved by
        #: this backend's ``clock.advance``.
        self.offset_ms = 0
        self.keys = Keys(options.namespace)
        self.scripts = ScriptRunner()
        if not functions:
            self.scripts.functions = False  # the queue scripts run by SHA only
        self._checked = False
        self._first_use = asyncio.Lock()
        get_kwargs: Callable[[], dict[str, Any]] = client.get_connection_kwargs
        kwargs = get_kwargs()
        self._encoding: str = kwargs.get("encoding", "utf-8")
        self._encoding_errors: str = kwargs.get("encoding_errors", "strict")
        # redis-py >= 6 gives every connection a 5 s socket timeout unless told otherwise.
        default: object = getattr(redis_connection, "DEFAULT_SOCKET_TIMEOUT", None)
        timeout = kwargs.get("socket_timeout", default)
        #: The longest a blocking command may block: half the client's socket timeout (the
        #: other half is the reply's margin on a busy server), so a long wait is cut into
        #: blocks that never look like a dead connection.
        self.max_block: float | None = (
            None if not isinstance(timeout, int | float) else max(0.01, 0.5 * float(timeout))
        )

    async def _check_server(self) -> None:
        """Check the server once, on first use; concurrent first users wait for one check.

        A cluster client learns its slots and reads the clock offset; a server older than
        Redis 6.2 is refused (``BackendError``, on every call); then the driver warns
        when the server may evict keys (any ``maxmemory-policy`` but ``noeviction``).
        """
        async with self._first_use:
            if self._checked:
                return
            await self._first_check()
            self._checked = True

    async def _first_check(self) -> None:
        if self.cluster:
            await self.load_offset()
        try:
            version = _version(await self.client.info("server"))
        except Exception:  # noqa: BLE001  # INFO may be renamed (managed Redis): not an error
            version = None
        if version is not None and version < MIN_SERVER:
            found = ".".join(map(str, version))
            msg = (
                f"redis {found} is too old for this driver: it needs 6.2 or newer"
                " (its scripts use ZMSCORE)"
            )
            raise BackendError(msg)
        try:
            policy = _policy(await self.client.config_get("maxmemory-policy"))
        except Exception:  # noqa: BLE001  # CONFIG may be disabled (managed Redis): not an error
            return
        if policy not in {"noeviction", ""}:
            warnings.warn(
                f"redis maxmemory-policy is {policy!r}: the server may evict queue keys, which"
                " loses messages; set it to 'noeviction'",
                BackendConfigWarning,
                stacklevel=2,
            )

    async def call(self, fn: Callable[[Redis], Awaitable[T]], *, what: str) -> T:
        """Run ``fn(client)`` (one command or pipeline) inside the error boundary."""
        if not self._checked:
            await boundary(self._check_server, what="the connect-time check")
        return await boundary(lambda: fn(self.client), what=what)

    async def run_script(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        *,
        packed: Packed | None = None,
        retry_args: Sequence[Any] | None = None,
    ) -> Any:
        """Run ``scripts/<name>.lua`` in one round trip, inside the error boundary.

        ``packed``: ``keys`` and the leading arguments packed once (see ``_scripts.Packed``).
        ``retry_args``: the arguments of the tries after the first, when they differ (an
        enqueue's first try may skip a check that a retry, after a try that may have landed,
        must make).
        """
        if not self._checked:
            await boundary(self._check_server, what="the connect-time check")
        if retry_args is None:
            return await boundary(
                lambda: self.scripts.run(self.client, name, keys, args, packed=packed),
                what=name.replace("_", " "),
            )
        tries = [args]

        def attempt() -> Awaitable[Any]:
            sent = tries.pop() if tries else retry_args
            return self.scripts.run(self.client, name, keys, sent, packed=packed)

        return await boundary(attempt, what=name.replace("_", " "))

    async def command(self, *args: Any, what: str) -> Any:
        """Run one plain command inside the error boundary (``ScriptRunner.command``)."""
        return await self.call(lambda client: self.scripts.command(client, *args), what=what)

    def pack(self, keys: Sequence[str], args: Sequence[Any]) -> Packed:
        """Pack ``keys`` and leading ``args`` once, with the client's encoding."""
        return Packed(keys, args, self._encoding, self._encoding_errors)

    async def load_offset(self) -> None:
        """Read the namespace's clock offset (Redis Cluster keeps a copy client-side)."""
        raw = await boundary(lambda: self.client.get(self.keys.clock), what="read the clock")
        self.offset_ms = 0 if raw is None else int(raw)

    def clock_arg(self) -> str:
        """The queue scripts' clock argument: ``''`` (read the key) or the offset in ms."""
        return str(self.offset_ms) if self.cluster else ""

    async def time_ms(self) -> int:
        """The backend's clock (server time plus the namespace's offset), in milliseconds."""
        return int(await self.run_script("now", [self.keys.clock], []))


class _Waker(Protocol):
    async def wake_all(self) -> None: ...


class RedisClock:
    """The ``clock_control`` capability: an offset added to the server's clock.

    The offset lives in one namespace key that only test fixtures set; every script adds it
    to ``TIME``. :meth:`advance` also wakes the consumers waiting on the namespace's queues,
    so they re-check their due entries.
    """

    def __init__(self, connection: Connection, wakers: Sequence[_Waker]) -> None:
        self._connection = connection
        self._wakers = wakers

    async def now(self) -> float:
        """The backend's clock, in seconds since the epoch."""
        if self._connection.cluster:
            await self._connection.load_offset()
        return await self._connection.time_ms() / 1000

    async def advance(self, seconds: float) -> None:
        """Move the namespace's clock forward by ``seconds`` and wake waiting consumers."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            msg = f"the clock only moves forward: advance({seconds!r})"
            raise ValidationError(msg)
        keys = self._connection.keys
        offset = await self._connection.run_script("advance", [keys.clock], [round(seconds * 1000)])
        self._connection.offset_ms = int(offset)
        for store in self._wakers:
            await store.wake_all()


def _masked(parts: SplitResult) -> str:
    if parts.password is None:
        return urlunsplit(parts)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


class RedisBackend:
    """The Redis backend. Prefer ``connect("redis://host:6379/0?namespace=app")``.

    Args:
        client: A ``redis.asyncio.Redis`` client (``decode_responses`` must be off).
        options: The namespace and queue defaults.
        url: The URL it was made from (shown with the password masked).
        owns_client: Close the client in :meth:`aclose` (true when built from a URL).
        tls: The connection is encrypted (``rediss://``).
        cluster: ``client`` is a ``redis.asyncio.RedisCluster`` (``redis+cluster://``).
        functions: Run the queue scripts as the functions of the driver's library when the
            server has Redis Functions (7.0+) and the user may load it (``FUNCTION LOAD``
            on first use); false runs them by SHA only (``?functions=0`` in a URL).
    """

    def __init__(
        self,
        client: Redis,
        options: BackendOptions | None = None,
        *,
        url: str | None = None,
        owns_client: bool = False,
        tls: bool = False,
        cluster: bool = False,
        functions: bool = True,
    ) -> None:
        self._options = options if options is not None else BackendOptions()
        self._connection = Connection(client, self._options, cluster=cluster, functions=functions)
        self._owns_client = owns_client
        self._url = _masked(urlsplit(url)) if url is not None else "redis://(client)"
        capabilities = {"clock_control"}
        if tls:
            capabilities.add("tls")
        if cluster:
            capabilities.add("cluster")
        self._capabilities = frozenset(capabilities)
        self._queue = RedisQueueStore(self._connection, self._options)
        self._registry = RedisRegistryStore(self._connection, self._options)
        self._breakers = RedisBreakerStore(self._connection, self._options)
        self._clock = RedisClock(self._connection, [self._queue, self._registry])
        self._closed = False

    @classmethod
    def from_url(cls, url: str, options: BackendOptions) -> RedisBackend:
        """The factory the plugin names: ``redis[s]://[[user]:password@]host[:port][/db]``.

        ``redis+cluster://[[user]:password@]host:port`` connects to a Redis Cluster through
        any of its nodes. Query parameters other than the core's options may be
        ``socket_timeout``, ``socket_connect_timeout``, ``health_check_interval``,
        ``max_connections`` and, with ``rediss://``, ``ssl_ca_certs``, ``ssl_certfile``,
        ``ssl_keyfile`` and ``ssl_cert_reqs``; ``functions=0`` runs the queue scripts by SHA
        only (see the constructor). ACL credentials travel in the URL
        (``redis://user:password@host``) and are masked in ``url``.

        Raises:
            ValidationError: An unknown scheme or option, or a database on a cluster URL.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            msg = f"the redis driver serves {', '.join(SCHEMES)}, not {scheme}://"
            raise ValidationError(msg)
        client_options: dict[str, Any] = {}
        extra = dict(options.extra)
        functions = extra.pop("functions", "1")
        if functions not in {"0", "1"}:
            msg = f"redis:// option functions={functions!r} is not 0 or 1"
            raise ValidationError(msg)
        for key, value in extra.items():
            convert = _CLIENT_OPTIONS.get(key)
            if convert is None:
                msg = f"unknown redis:// option {key!r} (known: {', '.join(_CLIENT_OPTIONS)})"
                raise ValidationError(msg)
            if key.startswith("ssl_") and scheme == "redis":
                msg = f"{key} needs TLS: use rediss://"
                raise ValidationError(msg)
            try:
                client_options[key] = convert(value)
            except ValueError as exc:
                kind = getattr(convert, "__name__", "value")
                msg = f"redis:// option {key}={value!r} is not a {kind}"
                raise ValidationError(msg) from exc
        no_retry = Retry(NoBackoff(), 0)  # the driver's boundary retries, once, by class
        cluster = scheme == "redis+cluster"
        if cluster:
            if parts.path not in ("", "/", "/0"):
                msg = f"a Redis Cluster has one database: {url!r} names {parts.path!r}"
                raise ValidationError(msg)
            base = urlunsplit(parts._replace(scheme="redis", path="", query="", fragment=""))
            client_options.pop("max_connections", None)
            cluster_client = RedisCluster.from_url(
                base, decode_responses=False, retry=no_retry, **client_options
            )
            client = cast("Redis", cluster_client)  # the same commands; see Connection
        else:
            base = urlunsplit(parts._replace(query="", fragment=""))
            client = Redis.from_url(base, decode_responses=False, retry=no_retry, **client_options)
        return cls(
            client,
            options.model_copy(update={"extra": {}}),
            url=url,
            owns_client=True,
            tls=scheme == "rediss",
            cluster=cluster,
            functions=functions == "1",
        )

    @property
    def url(self) -> str:
        """The URL it was made from, with any password masked."""
        return self._url

    @property
    def options(self) -> BackendOptions:
        """The namespace and queue defaults in force."""
        return self._options

    @property
    def capabilities(self) -> frozenset[str]:
        """``clock_control`` always; ``tls`` for ``rediss://``; ``cluster`` for a cluster."""
        return self._capabilities

    @property
    def connection(self) -> Connection:
        """The internals every store shares (client, keys, scripts, error boundary)."""
        return self._connection

    @property
    def client(self) -> Redis:
        """The redis-py client."""
        return self._connection.client

    @property
    def queue(self) -> RedisQueueStore:
        """The queue store."""
        return self._queue

    @property
    def registry(self) -> RedisRegistryStore:
        """The registry store."""
        return self._registry

    @property
    def breakers(self) -> RedisBreakerStore:
        """The breaker store."""
        return self._breakers

    @property
    def clock(self) -> RedisClock:
        """The clock hook (``clock_control``)."""
        return self._clock

    async def drop_namespace(self) -> None:
        """Remove everything this backend wrote in its namespace, from its own indexes."""
        await self._queue.drop_all()
        await self._registry.drop()
        await self._breakers.drop()
        keys = self._connection.keys
        await self._connection.call(
            lambda c: c.delete(keys.clock, keys.queues, keys.idle), what="drop namespace"
        )

    async def aclose(self) -> None:
        """Close the client if this backend made it; idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._connection.scripts.close()  # the kept connections go back to the pool
        if self._owns_client:
            await self._connection.client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def from_url(url: str, options: BackendOptions) -> RedisBackend:
    """The factory for ``redis://``, ``rediss://`` and ``redis+cluster://``."""
    return RedisBackend.from_url(url, options)
