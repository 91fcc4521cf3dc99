"""The agent registry service: live agents, discovery, events and managed registrations.

:class:`AgentRegistry` wraps the ``RegistryStore`` of any backend::

    registry = AgentRegistry(backend)
    async with registry.registered(AgentId("summariser", "s1"), capabilities=[cap]) as me:
        await me.set_load(0.4)
        ...  # heartbeats run in the background; deregistered on exit, also on cancellation

    async for event in registry.events(after=cursor):
        ...  # registered / updated / deregistered / expired, resumable by event.cursor

Metrics: ``REGISTRY_EVENTS`` (labels ``kind``, ``agent_type``) is counted for each event that
:meth:`AgentRegistry.events` yields, in the process that reads them. Writes do not count: the
store, not the writer, knows which writes were events (a heartbeat that changes nothing is none;
an expiry is noticed by whichever operation comes first), so counting where events are read is
the only way to count each kind exactly. Run one watcher to count a whole fleet once.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Final

import anyio
from pydantic import JsonValue

from tta_agent_coordination import checks
from tta_agent_coordination.errors import (
    AgentConflictError,
    AgentNotFoundError,
    BackendError,
)
from tta_agent_coordination.metrics import NOOP_METRICS, REGISTRY_EVENTS, MetricsSink
from tta_agent_coordination.models import (
    AgentId,
    AgentInfo,
    Capability,
    CapabilityQuery,
    Page,
    RegistryEvent,
    RegistryEventKind,
)
from tta_agent_coordination.protocols import Backend, RegistryStore

__all__ = ["AgentRegistry", "Registration"]

logger = logging.getLogger(__name__)

#: The level each registry event is logged at by :meth:`AgentRegistry.events`.
_EVENT_LEVELS: Final = {
    RegistryEventKind.REGISTERED: logging.INFO,
    RegistryEventKind.DEREGISTERED: logging.INFO,
    RegistryEventKind.EXPIRED: logging.WARNING,  # it stopped heartbeating without deregistering
    RegistryEventKind.UPDATED: logging.DEBUG,
}


def _agent(agent_id: AgentId, **more: object) -> dict[str, object]:
    """The ``extra`` fields of a record about an agent."""
    return {"agent_id": str(agent_id), "agent_type": agent_id.type, **more}


#: How long (real seconds) one ``read_events`` call of :meth:`AgentRegistry.events` blocks.
EVENTS_WAIT: Final = 30.0
#: How long (real seconds) the deregistration on leaving ``registered()`` may take.
DEREGISTER_TIMEOUT: Final = 10.0


class Registration:
    """A live registration made by :meth:`AgentRegistry.registered`.

    Attributes:
        agent_id: The registered agent.
        token: The session token.
        info: The agent as of the last successful heartbeat (or the registration).
        lost: ``None`` while the session is ours; the error when a heartbeat found it replaced
            (``AgentConflictError``) or gone (``AgentNotFoundError``). Heartbeats stop then.
    """

    def __init__(
        self,
        store: RegistryStore,
        agent_id: AgentId,
        token: str,
        info: AgentInfo,
        interval: float,
    ) -> None:
        self._store = store
        self.agent_id = agent_id
        self.token = token
        self.info = info
        self.interval = interval
        self.lost: AgentConflictError | AgentNotFoundError | None = None

    @property
    def load(self) -> float:
        """The load the heartbeats report."""
        return self.info.load

    @property
    def available(self) -> bool:
        """The availability the heartbeats report."""
        return self.info.available

    async def heartbeat(
        self, *, load: float | None = None, available: bool | None = None
    ) -> AgentInfo:
        """Heartbeat now, optionally changing load or availability.

        Raises:
            AgentConflictError: The session was replaced (also recorded in :attr:`lost`).
            AgentNotFoundError: The session is gone (also recorded in :attr:`lost`).
            BackendError: The store failed; the background heartbeat tries again.
        """
        if self.lost is not None:
            raise self.lost
        try:
            self.info = await self._store.heartbeat(
                self.agent_id, self.token, load=load, available=available
            )
        except (AgentConflictError, AgentNotFoundError) as exc:
            self.lost = exc
            raise
        return self.info

    async def set_load(self, load: float) -> AgentInfo:
        """Report a new load now (and in every heartbeat after)."""
        return await self.heartbeat(load=load)

    async def set_available(self, available: bool) -> AgentInfo:
        """Report availability now (and in every heartbeat after): unavailable is not discovered."""
        return await self.heartbeat(available=available)

    async def _keep_alive(self) -> None:
        """Heartbeat and sweep every ``interval`` until cancelled or the session is lost."""
        while self.lost is None:
            await anyio.sleep(self.interval)
            try:
                await self.heartbeat()
            except (AgentConflictError, AgentNotFoundError) as exc:
                logger.error(  # noqa: TRY400  # the error is the news, not a traceback
                    "registration of %s lost, heartbeats stop: %s",
                    self.agent_id,
                    exc,
                    extra=_agent(self.agent_id),
                )
                return
            except BackendError as exc:
                logger.warning(
                    "heartbeat of %s failed, retrying: %s",
                    self.agent_id,
                    exc,
                    extra=_agent(self.agent_id),
                )
                continue
            try:
                expired = await self._store.sweep()
            except BackendError as exc:
                logger.warning("registry sweep failed, retrying: %s", exc)
                continue
            if expired:
                logger.info("registry sweep: %d agent(s) expired", expired)


class AgentRegistry:
    """The agent registry over any backend: register, discover, watch.

    Args:
        backend: A connected backend, or a bare ``RegistryStore`` (for wrappers and tests).
        metrics: Where ``REGISTRY_EVENTS`` is reported (see the module docstring).
    """

    def __init__(
        self, backend: Backend | RegistryStore, *, metrics: MetricsSink = NOOP_METRICS
    ) -> None:
        self._store: RegistryStore = backend.registry if isinstance(backend, Backend) else backend
        self._metrics = metrics

    @property
    def store(self) -> RegistryStore:
        """The registry store this service works on."""
        return self._store

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
        """Register atomically and return the session token.

        Prefer :meth:`registered`, which also heartbeats and deregisters.

        Raises:
            AgentConflictError: The id is live under another session and ``replace`` is false.
            ValidationError: A bad ttl, load, capability or metadata.
        """
        token = await self._store.register(
            agent_id,
            capabilities=capabilities,
            metadata=metadata,
            ttl=ttl,
            load=load,
            available=available,
            replace=replace,
        )
        logger.info(
            "registered agent %s (ttl=%ss, %d capabilities%s)",
            agent_id,
            ttl,
            len(capabilities),
            ", replacing a live session" if replace else "",
            extra=_agent(agent_id),
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
        """Extend liveness by the ttl (re-registering after expiry); may update load/availability.

        Raises:
            AgentConflictError: The session was replaced.
            AgentNotFoundError: The session was deregistered.
        """
        return await self._store.heartbeat(agent_id, token, load=load, available=available)

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        """End the session; ``False`` if ``token`` is not the current session."""
        done = await self._store.deregister(agent_id, token)
        _log_deregistered(agent_id, done)
        return done

    async def get(self, agent_id: AgentId) -> AgentInfo | None:
        """The live agent, or ``None``."""
        return await self._store.get(agent_id)

    async def list(
        self, *, type: str | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Live agents, optionally of one type or holding a capability name, by id."""
        return await self._store.list(type=type, capability=capability)

    async def discover(
        self, query: CapabilityQuery, *, limit: int | None = None
    ) -> builtins.list[AgentInfo]:
        """Live, available agents matching ``query``, least loaded first (ties by id)."""
        return await self._store.discover(query, limit=limit)

    async def sweep(self) -> int:
        """Detect expired agents now (emitting their ``expired`` events); how many."""
        return await self._store.sweep()

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        """One page of events (see ``RegistryStore.read_events``); not counted in metrics."""
        return await self._store.read_events(after=after, limit=limit, wait=wait)

    async def events(
        self, after: str | None = None, *, limit: int = 100, wait: float = EVENTS_WAIT
    ) -> AsyncGenerator[RegistryEvent, None]:
        """Every event after ``after``, forever (``None``: from now on).

        Resume after a restart with the last event's ``cursor``: nothing is lost or repeated.
        Each call to the store blocks up to ``wait`` real seconds. Close the iterator with
        ``contextlib.aclosing`` when you stop early.

        Raises:
            EventsGapError: The log no longer holds the events after the cursor.
        """
        checks.duration(wait, "wait", positive=True)
        cursor = after
        while True:
            page = await self._store.read_events(after=cursor, limit=limit, wait=wait)
            for event in page.items:
                self._metrics.increment(
                    REGISTRY_EVENTS,
                    labels={"kind": event.kind.value, "agent_type": event.agent_id.type},
                )
                logger.log(
                    _EVENT_LEVELS.get(event.kind, logging.INFO),
                    "registry event: %s %s (cursor %s)",
                    event.agent_id,
                    event.kind.value,
                    event.cursor,
                    extra=_agent(event.agent_id, event=event.kind.value, cursor=event.cursor),
                )
                yield event
            cursor = page.next_cursor

    @asynccontextmanager
    async def registered(
        self,
        agent_id: AgentId,
        *,
        capabilities: Sequence[Capability] = (),
        metadata: Mapping[str, JsonValue] | None = None,
        ttl: float = 30.0,
        heartbeat_interval: float | None = None,
        load: float = 0.0,
        available: bool = True,
        replace: bool = False,
    ) -> AsyncGenerator[Registration, None]:
        """Register, heartbeat in the background, and deregister on exit.

        The background task heartbeats every ``heartbeat_interval`` real seconds (default
        ``ttl / 3``) and sweeps expired agents. A ``BackendError`` is logged and retried at the
        next interval; a replaced or vanished session stops it (see
        :attr:`Registration.lost`). Leaving the block, by any exception or by cancellation,
        deregisters (shielded from cancellation, bounded by ``DEREGISTER_TIMEOUT``); an
        exception from the block propagates unchanged.

        Raises:
            AgentConflictError: The id is live under another session and ``replace`` is false.
            ValidationError: A bad ttl, interval, load, capability or metadata.
        """
        interval = ttl / 3 if heartbeat_interval is None else heartbeat_interval
        checks.duration(interval, "heartbeat_interval", positive=True)
        token = await self.register(
            agent_id,
            capabilities=capabilities,
            metadata=metadata,
            ttl=ttl,
            load=load,
            available=available,
            replace=replace,
        )
        try:
            info = await self._store.heartbeat(agent_id, token)  # changes nothing: no event
            handle = Registration(self._store, agent_id, token, info, interval)
            body_error: BaseException | None = None
            async with anyio.create_task_group() as tg:
                tg.start_soon(handle._keep_alive)
                try:
                    yield handle
                except BaseException as exc:  # noqa: BLE001  # re-raised below, unwrapped
                    body_error = exc
                finally:
                    tg.cancel_scope.cancel()
            if body_error is not None:
                raise body_error
        finally:
            with anyio.move_on_after(DEREGISTER_TIMEOUT, shield=True):
                try:
                    done = await self._store.deregister(agent_id, token)
                except BackendError as exc:
                    logger.warning(
                        "deregistering %s failed (it will expire): %s",
                        agent_id,
                        exc,
                        extra=_agent(agent_id),
                    )
                else:
                    _log_deregistered(agent_id, done)


def _log_deregistered(agent_id: AgentId, done: bool) -> None:
    if done:
        logger.info("deregistered agent %s", agent_id, extra=_agent(agent_id))
    else:
        logger.info(
            "agent %s was not deregistered: the session was not current (replaced or expired)",
            agent_id,
            extra=_agent(agent_id),
        )
