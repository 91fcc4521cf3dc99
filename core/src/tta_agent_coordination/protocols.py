"""The three storage protocols every driver implements, and the backend that bundles them.

The core builds everything on these; it never imports a driver. Each operation is atomic
(one script or one command on a networked store). Times given by callers are durations in
seconds, resolved on the backend's clock. ``docs/decisions/0001-store-protocols.md`` records
why the protocols look like this; ``docs/contract.md`` is the behaviour they promise.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from pydantic import JsonValue

from .models import (
    AgentId,
    AgentInfo,
    AgentMessage,
    BreakerDecision,
    BreakerSnapshot,
    BreakerUpdate,
    Capability,
    CapabilityQuery,
    CircuitBreakerConfig,
    DeadLetter,
    Delivery,
    EnqueueRequest,
    Page,
    QueueStats,
    RegistryEvent,
)
from .settings import BackendOptions

__all__ = [
    "CAPABILITIES",
    "Backend",
    "BreakerStore",
    "ClockControl",
    "QueueStore",
    "RegistryStore",
]

#: The optional capabilities a driver may lack, and must then leave out of ``capabilities``.
CAPABILITIES: frozenset[str] = frozenset({"cluster", "tls", "clock_control"})


@runtime_checkable
class QueueStore(Protocol):
    """The agent queue: one queue per recipient ``AgentId``; every operation atomic.

    A queue holds entries that are *ready* (due now), *delayed* (due later) or *reserved*
    (handed to a consumer until their visibility ends), plus its dead letters.
    """

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

        Raises ``QueueFullError`` (nothing written) at ``max_queue_length`` live entries and
        ``MessageTooLargeError`` over ``max_message_bytes``. A repeated ``entry_id`` writes
        nothing and returns it; a repeated ``dedup_key`` (see the contract) writes nothing and
        returns the first entry's id. ``max_attempts`` defaults to the backend's.
        """
        ...

    async def enqueue_many(self, requests: Sequence[EnqueueRequest]) -> list[str]:
        """Enqueue a batch for one queue, all or nothing, in one round trip."""
        ...

    async def reserve(
        self,
        queue: AgentId,
        *,
        visibility_timeout: float,
        max_messages: int = 1,
        wait: float | None = None,
    ) -> list[Delivery]:
        """Reserve up to ``max_messages`` due entries, highest priority first.

        Reclaims expired reservations first (dead-lettering those at ``max_attempts``) and
        dead-letters entries past their ttl. With ``wait`` (seconds, real time), blocks until an
        entry is due or ``wait`` elapses, woken by enqueues and due times, never by polling.
        """
        ...

    async def ack(self, receipt: str) -> bool:
        """Remove the entry for good; ``False`` for a stale receipt (True again on a repeat)."""
        ...

    async def ack_many(self, receipts: Sequence[str]) -> list[bool]:
        """Ack several receipts of one queue in one round trip."""
        ...

    async def nack(self, receipt: str, *, delay: float = 0.0, error: str | None = None) -> bool:
        """Make the entry due again after ``delay``; the next delivery counts an attempt."""
        ...

    async def release(self, receipt: str) -> bool:
        """Make the entry due at once without counting an attempt."""
        ...

    async def extend(self, receipt: str, *, visibility_timeout: float) -> bool:
        """Keep the entry reserved for ``visibility_timeout`` more seconds from now."""
        ...

    async def dead_letter(self, receipt: str, *, reason: str, error: str | None = None) -> bool:
        """Move the entry to the queue's dead letters with ``reason`` and ``error``."""
        ...

    async def dead_letters(
        self, queue: AgentId, *, limit: int = 100, cursor: str | None = None
    ) -> Page[DeadLetter]:
        """List dead letters, oldest first, ``limit`` at a time."""
        ...

    async def dead_letter_count(self, queue: AgentId) -> int:
        """The number of dead letters in the queue."""
        ...

    async def get_dead_letter(self, queue: AgentId, entry_id: str) -> DeadLetter | None:
        """One dead letter by its entry id, or ``None``."""
        ...

    async def replay_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> list[str]:
        """Move dead letters back to the queue as due entries with attempts reset.

        ``entry_ids=None`` replays all of them. Returns the ids replayed (unknown ids are
        skipped). Replay is not refused by ``max_queue_length``: the entries were accepted once.
        """
        ...

    async def purge_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> int:
        """Delete dead letters (all, or the given ids); returns how many."""
        ...

    async def stats(self, queue: AgentId) -> QueueStats:
        """Ready, delayed, reserved and dead counts of one queue."""
        ...

    async def stats_all(self, *, limit: int = 100, cursor: str | None = None) -> Page[QueueStats]:
        """The same for many queues, from the queue index, in one bounded call."""
        ...

    async def queues(self) -> list[AgentId]:
        """Every queue that exists, from the index (sorted)."""
        ...

    async def drop_queue(self, queue: AgentId) -> int:
        """Remove a queue, its entries, dead letters and index entry; returns entries removed."""
        ...

    async def reclaim(self, queue: AgentId) -> int:
        """Reclaim expired reservations now (due again, or dead-lettered at max_attempts).

        ``reserve`` does this anyway; this is for operators and the original API's
        ``recover_pending``. Returns how many reservations were reclaimed.
        """
        ...

    async def set_queue_ttl(self, queue: AgentId, ttl: float | None) -> None:
        """Drop the queue once ``ttl`` seconds pass without an enqueue to it or a reserve on it.

        Creates the queue if needed; ``None`` keeps it until ``drop_queue``. Used for reply
        queues, so an abandoned one disappears.
        """
        ...


@runtime_checkable
class RegistryStore(Protocol):
    """Live agents with their capabilities; liveness by ttl; an event log with cursors."""

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
        """Register atomically; returns the session token.

        Raises ``AgentConflictError`` if the id is live under another session, unless
        ``replace=True``.
        """
        ...

    async def heartbeat(
        self,
        agent_id: AgentId,
        token: str,
        *,
        load: float | None = None,
        available: bool | None = None,
    ) -> AgentInfo:
        """Extend liveness by the ttl, optionally updating load and availability.

        After expiry it re-registers (a ``registered`` event). Raises ``AgentConflictError`` if
        the session was replaced and ``AgentNotFoundError`` if it was deregistered.
        """
        ...

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        """End the session; ``False`` if the token is not the agent's current session."""
        ...

    async def get(self, agent_id: AgentId) -> AgentInfo | None:
        """The live agent, or ``None``."""
        ...

    async def list(
        self, *, type: str | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Live agents, optionally of one type or holding a capability name, by id."""
        ...

    async def discover(
        self, query: CapabilityQuery, *, limit: int | None = None
    ) -> builtins.list[AgentInfo]:
        """Live, available matches, least loaded first (ties by id)."""
        ...

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        """Events after ``after`` (``None``: only new ones; ``"0"``: the oldest retained).

        ``next_cursor`` is always set: resume from it. Raises ``EventsGapError`` if events
        after ``after`` were trimmed. With ``wait``, blocks until an event or the timeout.
        """
        ...

    async def sweep(self) -> int:
        """Detect expired agents and emit their ``expired`` events (exactly once); count."""
        ...


@runtime_checkable
class BreakerStore(Protocol):
    """Circuit-breaker state shared by every process; each transition atomic."""

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        """May a call proceed? Moves open -> half-open after the recovery timeout."""
        ...

    async def record_success(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a successful call (with its probe permit when half-open)."""
        ...

    async def record_failure(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a failed call (with its probe permit when half-open)."""
        ...

    async def snapshot(self, name: str, config: CircuitBreakerConfig) -> BreakerSnapshot:
        """The current state (closed with no failures for a name never used)."""
        ...

    async def reset(self, name: str) -> BreakerUpdate:
        """Close the breaker from any state and forget its failures."""
        ...

    async def breakers(self) -> list[str]:
        """Every breaker name used in this namespace, from the index (sorted)."""
        ...


@runtime_checkable
class ClockControl(Protocol):
    """The ``clock_control`` capability: move the backend's clock, for tests only."""

    async def advance(self, seconds: float) -> None:
        """Move the backend's clock forward; waiting consumers re-check their due times."""
        ...

    async def now(self) -> float:
        """The backend's clock, in seconds since the epoch."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A connected store: the three protocols under one namespace; closes cleanly.

    ``async with connect(url) as backend:`` closes it on exit.
    """

    @property
    def url(self) -> str:
        """The URL it was made from, with any password masked."""
        ...

    @property
    def options(self) -> BackendOptions:
        """The namespace and the queue defaults in force."""
        ...

    @property
    def capabilities(self) -> frozenset[str]:
        """The optional capabilities it has (a subset of ``CAPABILITIES``)."""
        ...

    @property
    def queue(self) -> QueueStore:
        """The agent queue store."""
        ...

    @property
    def registry(self) -> RegistryStore:
        """The agent registry store."""
        ...

    @property
    def breakers(self) -> BreakerStore:
        """The circuit-breaker state store."""
        ...

    @property
    def clock(self) -> ClockControl | None:
        """The clock hook when ``clock_control`` is among the capabilities, else ``None``."""
        ...

    async def drop_namespace(self) -> None:
        """Remove everything this backend wrote in its namespace, from its indexes."""
        ...

    async def aclose(self) -> None:
        """Release connections; idempotent."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
