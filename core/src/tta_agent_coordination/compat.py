"""The original coordination code's API, as thin layers over the core (asyncio only).

The original's names are importable from the package root and behave as there (CONTRACT.md,
"Compatibility with the original API"): :class:`RedisAgentRegistry` below,
``RedisMessageCoordinator`` (a ``MessageCoordinator`` whose original methods live on the core
class), ``CircuitBreaker`` (the core class) and the models. Each takes a redis-py client as the
original did, or a backend or URL; a client is wrapped through the driver plugins, so the core
never imports redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, cast

from .coordinator import MessageCoordinator
from .errors import AgentConflictError, AgentNotFoundError, BackendError, ValidationError
from .models import AgentId, Capability
from .plugins import resolve_backend
from .protocols import Backend
from .registry import AgentRegistry

__all__ = ["RedisAgentRegistry", "RedisMessageCoordinator"]

logger = logging.getLogger(__name__)


def _agent_id_of(agent: object) -> AgentId:
    if isinstance(agent, AgentId):
        return agent
    agent_id: object = getattr(agent, "agent_id", None)
    if isinstance(agent_id, AgentId):
        return agent_id
    msg = f"register() takes an AgentId or an object with an agent_id, not {agent!r}"
    raise ValidationError(msg)


def _capability(item: object) -> Capability:
    if isinstance(item, Capability):
        return item
    if isinstance(item, str):
        return Capability(item)
    if isinstance(item, Mapping):
        fields: Mapping[str, Any] = item  # pyright: ignore[reportUnknownVariableType]
    else:
        fields = {k: getattr(item, k) for k in ("name", "version", "tags") if hasattr(item, k)}
    if "name" not in fields:
        msg = f"a capability needs a name: {item!r}"
        raise ValidationError(msg)
    return Capability(
        str(fields["name"]), str(fields.get("version") or "0"), tags=fields.get("tags") or ()
    )


def _capabilities(agent: object) -> list[Capability]:
    raw: object = getattr(agent, "capabilities", None) or ()
    if isinstance(raw, Mapping):  # the original's capability set: {"capabilities": [...], ...}
        capability_set = cast("Mapping[str, object]", raw)
        raw = capability_set.get("capabilities", ())
    if not isinstance(raw, Iterable) or isinstance(raw, str | bytes):
        msg = f"capabilities must be a list, not {raw!r}"
        raise ValidationError(msg)
    return [_capability(item) for item in cast("Iterable[object]", raw)]


def _metadata(agent: object) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for key in ("name", "status", "state"):
        value: object = getattr(agent, key, None)
        if isinstance(value, str | int | float | bool):
            metadata[key] = value
        elif value is not None:
            metadata[key] = str(getattr(value, "value", value))
    return metadata


class RedisAgentRegistry:
    """The original agent registry, on any backend.

    ``register``, ``deregister``, ``list_registered`` and background heartbeats:
    ``RedisAgentRegistry(redis_client, key_prefix="ao", heartbeat_ttl_s=30,
    heartbeat_interval_s=10)``; ``store`` may also be a backend or a URL. ``register(agent)``
    starts the write at once and returns an ``asyncio.Task`` that the registry keeps and settles
    on :meth:`stop_heartbeats`: callers that never await it still register, callers that await
    it know it is written. It does not heartbeat: :meth:`start_heartbeats` does. The new API is
    at :attr:`registry` (an :class:`~tta_agent_coordination.AgentRegistry`).
    """

    def __init__(
        self,
        store: Backend | str | object,
        key_prefix: str = "ao",
        heartbeat_ttl_s: float = 30.0,
        heartbeat_interval_s: float = 10.0,
    ) -> None:
        if not heartbeat_ttl_s > 0 or not heartbeat_interval_s > 0:
            msg = "heartbeat_ttl_s and heartbeat_interval_s must be positive"
            raise ValidationError(msg)
        self._backend, self._owns_backend = resolve_backend(store, namespace=key_prefix)
        self.registry = AgentRegistry(self._backend)
        self.heartbeat_ttl_s = float(heartbeat_ttl_s)
        self.heartbeat_interval_s = float(heartbeat_interval_s)
        self._sessions: dict[AgentId, str] = {}
        self._known: dict[AgentId, dict[str, Any]] = {}
        self._pending: set[asyncio.Task[Any]] = set()
        self._heartbeats: asyncio.Task[None] | None = None

    @property
    def backend(self) -> Backend:
        """The backend it works on."""
        return self._backend

    def register(self, agent: object) -> asyncio.Task[str]:
        """Register ``agent`` (an AgentId or the original's agent object); returns the write."""
        agent_id = _agent_id_of(agent)
        capabilities = _capabilities(agent)
        metadata = _metadata(agent)
        task = asyncio.get_running_loop().create_task(
            self._register(agent_id, capabilities, metadata), name=f"tta-register-{agent_id}"
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    async def _register(
        self, agent_id: AgentId, capabilities: list[Capability], metadata: dict[str, Any]
    ) -> str:
        token = await self.registry.register(
            agent_id,
            capabilities=capabilities,
            metadata=metadata,
            ttl=self.heartbeat_ttl_s,
            replace=True,  # the original overwrote the key: a restarted agent takes its id back
        )
        self._sessions[agent_id] = token
        self._known[agent_id] = metadata
        return token

    async def deregister(self, agent: object) -> bool:
        """Deregister an agent registered through this registry; ``False`` if it was not."""
        agent_id = _agent_id_of(agent)
        token = self._sessions.pop(agent_id, None)
        self._known.pop(agent_id, None)
        if token is None:
            return False
        return await self.registry.deregister(agent_id, token)

    async def list_registered(self) -> list[dict[str, Any]]:
        """Registered agents as dicts: ``agent_id``, ``alive``, ``last_heartbeat`` and more.

        Live agents come from the backend (every process's); agents registered here whose ttl
        passed are listed with ``alive: False``.
        """
        live = await self.registry.list()
        out: list[dict[str, Any]] = []
        seen: set[AgentId] = set()
        for info in live:
            seen.add(info.agent_id)
            out.append(
                {
                    "agent_id": info.agent_id.model_dump(),
                    "name": info.metadata.get("name", str(info.agent_id)),
                    "status": info.metadata.get("status"),
                    "alive": True,
                    "last_heartbeat": info.last_heartbeat.timestamp(),
                    "expires_at": info.expires_at.timestamp(),
                    "capabilities": [c.model_dump() for c in info.capabilities],
                    "load": info.load,
                }
            )
        for agent_id, metadata in self._known.items():
            if agent_id not in seen:
                out.append(
                    {
                        "agent_id": agent_id.model_dump(),
                        "name": metadata.get("name", str(agent_id)),
                        "status": metadata.get("status"),
                        "alive": False,
                        "last_heartbeat": None,
                    }
                )
        return out

    def start_heartbeats(self) -> asyncio.Future[None]:
        """Start heartbeating every agent registered here (idempotent).

        Returns a finished future, so both ``start_heartbeats()`` and ``await
        start_heartbeats()`` work, as either did with the original.
        """
        loop = asyncio.get_running_loop()
        if self._heartbeats is None or self._heartbeats.done():
            self._heartbeats = loop.create_task(self._beat(), name="tta-heartbeats")
        done: asyncio.Future[None] = loop.create_future()
        done.set_result(None)
        return done

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval_s)
            await self.heartbeat_once()

    async def heartbeat_once(self) -> None:
        """Heartbeat every agent registered here once (what the background task does)."""
        for agent_id, token in list(self._sessions.items()):
            try:
                await self.registry.heartbeat(agent_id, token)
            except (AgentConflictError, AgentNotFoundError) as exc:
                logger.warning("agent %s lost its registration: %s", agent_id, exc)
                self._sessions.pop(agent_id, None)
            except BackendError as exc:
                logger.warning("heartbeat of %s failed, retrying next interval: %s", agent_id, exc)

    def stop_heartbeats(self) -> asyncio.Task[None]:
        """Stop heartbeating and settle every pending ``register`` write.

        Returns the task doing it: await it to know everything is settled.
        """
        return asyncio.get_running_loop().create_task(self._stop(), name="tta-stop-heartbeats")

    async def _stop(self) -> None:
        task, self._heartbeats = self._heartbeats, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pending = list(self._pending)
        if pending:
            results = await asyncio.gather(*pending, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    logger.warning("a registration failed: %r", result)

    async def aclose(self) -> None:
        """Stop heartbeats, settle writes, and close a backend this registry made."""
        await self.stop_heartbeats()
        if self._owns_backend:
            await self._backend.aclose()


class RedisMessageCoordinator(MessageCoordinator):
    """The original constructor: ``RedisMessageCoordinator(redis_client, key_prefix="ao")``.

    A :class:`~tta_agent_coordination.MessageCoordinator` (the original's methods are on it)
    whose backend wraps ``store``: a redis-py client (through the Redis driver's plugin), a
    backend, or a URL. ``key_prefix`` becomes the namespace. Keyword arguments go to
    ``MessageCoordinator``. :meth:`aclose` closes a backend it made.
    """

    def __init__(
        self, store: Backend | str | object, key_prefix: str = "ao", **kwargs: Any
    ) -> None:
        backend, self._owns_backend = resolve_backend(store, namespace=key_prefix)
        super().__init__(backend, **kwargs)

    async def aclose(self) -> None:
        """Close the backend if this coordinator made it (from a client or URL)."""
        if self._owns_backend:
            await self.backend.aclose()
