"""Deliberately broken drivers: the conformance suite must catch every one of them.

Each mutant is the memory driver with one clause of the contract broken, by a small subclass of
one of its stores. They are served by a test plugin under ``mutant-NAME://`` schemes (plus
``mutant-none://``, the same wrapping with nothing broken, and ``noclock://``, a healthy driver
that declares no optional capability). :func:`installed` registers the plugin for a while.

A mutant URL without a name connects to one store per scheme that every backend connected to it
shares while any is open (as every client of one Redis server does), so the suite's two-client
tests race two clients of one store. Each test of the suite works in a namespace of its own.

The plugin's ``"module:attribute"`` references are built from ``__name__``, so they resolve
however pytest imported this module (``tests/conformance`` has no ``__init__.py``: pytest puts the
directory on ``sys.path`` and the module is ``mutants``).
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

import anyio.lowlevel

from tta_agent_coordination import checks
from tta_agent_coordination._validation import require_name
from tta_agent_coordination.backends._memory_breakers import MemoryBreakerStore, _Breaker
from tta_agent_coordination.backends._memory_queue import (
    _READY,
    _RESERVED,
    MemoryQueueStore,
    _Entry,
    _parse_receipt,
    _Queue,
)
from tta_agent_coordination.backends._memory_registry import MemoryRegistryStore, _dt
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.errors import QueueFullError
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    BreakerDecision,
    CircuitBreakerConfig,
    Delivery,
    Page,
    RegistryEvent,
    RegistryEventKind,
)
from tta_agent_coordination.plugins import plugin_registry
from tta_agent_coordination.protocols import BreakerStore, ClockControl, QueueStore, RegistryStore
from tta_agent_coordination.settings import BackendOptions

__all__ = [
    "CONTROL",
    "MUTANTS",
    "PLUGIN_NAME",
    "MutantBackend",
    "NoClockBackend",
    "installed",
    "tta_backend_schemes",
]

#: The name the test plugin is registered under.
PLUGIN_NAME = "tta-test-mutants"

_NORMAL = 5


# -- queue mutants --------------------------------------------------------------------------------


class _IgnoresPriority(MemoryQueueStore):
    """Every entry is ordered as if it had NORMAL priority (FIFO only)."""

    def _admit(self, queue: _Queue, entry: _Entry, now: float, delay: float) -> None:
        entry.priority = _NORMAL
        super()._admit(queue, entry, now, delay)


class _StaleReceiptAcks(MemoryQueueStore):
    """An ack whose receipt is stale still removes the entry if it is there."""

    def _ack(self, receipt: str) -> bool:
        if super()._ack(receipt):
            return True
        name, _, entry_id = _parse_receipt(receipt)
        queue = self._queues.get(name)
        entry = None if queue is None else queue.entries.get(entry_id)
        if queue is None or entry is None:
            return False
        now = self._clock.time()
        self._remove_live(queue, entry)
        self._settle(queue, entry, now, "")
        self._release_dedup(queue, entry, now)
        return True


class _AckNotIdempotent(MemoryQueueStore):
    """Repeating an ack that succeeded (a retry after a lost reply) returns ``False``."""

    def _ack(self, receipt: str) -> bool:
        name, _, entry_id = _parse_receipt(receipt)
        queue = self._queues.get(name)
        if queue is not None and entry_id in queue.settled:
            return False
        return super()._ack(receipt)


class _CapRace(MemoryQueueStore):
    """The cap check and the write are two steps: racing producers pass the cap."""

    async def enqueue(
        self,
        message: AgentMessage,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        item = self._prepare(message, delay, dedup_key, entry_id, max_attempts)
        queue = self._queue_for(message.recipient)
        if len(queue.entries) >= self._options.max_queue_length:
            raise QueueFullError(queue.name, self._options.max_queue_length)
        await anyio.lowlevel.checkpoint()  # a round trip: the count read above is stale now
        now = self._clock.time()
        self._prune(queue, now)
        existing = self._existing(queue, item)
        if existing is not None:
            return existing
        new_id = self._write(queue, item, now)
        self._wake(queue.name)
        return new_id


class _ReserveRace(MemoryQueueStore):
    """``reserve`` reads the due entries, awaits, then takes them without checking again.

    So two consumers reserving at once can both get one entry.
    """

    async def reserve(
        self,
        queue: AgentId,
        *,
        visibility_timeout: float,
        max_messages: int = 1,
        wait: float | None = None,
    ) -> list[Delivery]:
        found = self._queues.get(str(queue))
        if found is not None and not wait:
            self._maintain(found, self._clock.time())
            due = [i[4] for i in heapq.nsmallest(max_messages, found.ready) if i[4].version == i[3]]
            await anyio.lowlevel.checkpoint()  # a round trip between the read and the write
            now = self._clock.time()
            for entry in due:
                if entry.state == _RESERVED:  # another consumer took it meanwhile: take it too
                    found.n_reserved -= 1
                    entry.state = _READY
                    entry.version += 1
                    item = (-entry.priority, now, entry.seq, entry.version, entry)
                    heapq.heappush(found.ready, item)
        return await super().reserve(
            queue, visibility_timeout=visibility_timeout, max_messages=max_messages, wait=wait
        )


class _NackLoses(MemoryQueueStore):
    """A nack removes the entry (as an ack would) instead of making it due again."""

    async def nack(self, receipt: str, *, delay: float = 0.0, error: str | None = None) -> bool:
        checks.duration(delay, "delay", positive=False)
        checks.optional_text(error, "error")
        queue, entry, token, _, now = self._current(receipt)
        if queue is None or entry is None:
            return False
        self._remove_live(queue, entry)
        self._settle(queue, entry, now, token)
        self._release_dedup(queue, entry, now)
        return True


class _NoReclaim(MemoryQueueStore):
    """Expired reservations are never reclaimed: the entry stays reserved for good."""

    def _maintain(self, queue: _Queue, now: float) -> int:
        reserved, queue.reserved = queue.reserved, []
        try:
            return super()._maintain(queue, now)
        finally:
            queue.reserved = reserved


class _ReleaseCounts(MemoryQueueStore):
    """A release counts an attempt, as a nack does."""

    async def release(self, receipt: str) -> bool:
        _, entry, _, _, _ = self._current(receipt)
        if entry is not None:
            entry.attempt += 1
        return await super().release(receipt)


class _ExpiryFree(MemoryQueueStore):
    """An expired reservation comes back without counting an attempt (so never dead-letters)."""

    def _maintain(self, queue: _Queue, now: float) -> int:
        reserved = queue.reserved
        reclaimed = 0
        while reserved and reserved[0][0] <= now:
            deadline, _, version, entry = heapq.heappop(reserved)
            if entry.version == version:
                reclaimed += 1
                self._return(queue, entry, deadline, now)
        return reclaimed + super()._maintain(queue, now)


class _DedupIgnored(MemoryQueueStore):
    """``enqueue`` ignores ``dedup_key``: every send is a new entry."""

    async def enqueue(
        self,
        message: AgentMessage,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        return await super().enqueue(
            message, delay=delay, dedup_key=None, entry_id=entry_id, max_attempts=max_attempts
        )


class _TtlIgnored(MemoryQueueStore):
    """A message's ttl is never applied: it is delivered however late."""

    def _admit(self, queue: _Queue, entry: _Entry, now: float, delay: float) -> None:
        entry.ttl = None
        super()._admit(queue, entry, now, delay)


class _ReplayKeepsAttempts(MemoryQueueStore):
    """A replayed dead letter keeps the attempt count it died with instead of starting at 1."""

    async def replay_dead_letters(
        self, queue: AgentId, entry_ids: Sequence[str] | None = None
    ) -> list[str]:
        found = self._queues.get(str(queue))
        died_at = {} if found is None else {k: d.entry.attempt for k, d in found.dead.items()}
        replayed = await super().replay_dead_letters(queue, entry_ids)
        if found is not None:
            for entry_id in replayed:
                found.entries[entry_id].attempt = died_at.get(entry_id, 1)
        return replayed


# -- registry mutants -----------------------------------------------------------------------------


class _SweepNotAtomic(MemoryRegistryStore):
    """``sweep`` reads the expired agents, awaits, then emits without checking again.

    So two clients sweeping at once both emit ``expired`` for one agent. (Like a networked
    driver, it does not sweep when the clock moves: operations detect expiry.)
    """

    def _on_clock_advance(self) -> None:
        self._notify()

    async def sweep(self) -> int:
        now = self._clock.time()
        due = [r for r in self._records.values() if not r.expired and r.expires_at <= now]
        await anyio.lowlevel.checkpoint()  # a round trip between the read and the write
        for record in due:
            if not record.expired:
                record.expired = True
                self._unindex(record.info)
            self._emit(RegistryEventKind.EXPIRED, record.info, _dt(record.expires_at))
        return len(due)


class _EventsRepeat(MemoryRegistryStore):
    """An empty page's ``next_cursor`` is one behind: resuming from it repeats the last event."""

    async def read_events(
        self, *, after: str | None = None, limit: int = 100, wait: float | None = None
    ) -> Page[RegistryEvent]:
        page = await super().read_events(after=after, limit=limit, wait=wait)
        cursor = page.next_cursor
        if page.items or cursor is None or int(cursor) <= 1:
            return page
        return Page[RegistryEvent](items=[], next_cursor=str(int(cursor) - 1))


# -- breaker mutants ------------------------------------------------------------------------------


class _HalfOpenLetsAllThrough(MemoryBreakerStore):
    """Half-open ignores ``half_open_max_calls``: every caller gets a probe permit."""

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        unbounded = config.model_copy(update={"half_open_max_calls": 1_000_000})
        return await super().acquire(name, unbounded)


class _NeverLapses(_Breaker):
    def lapse(self, now: float) -> None:
        """Keep every permit, however old."""


class _PermitsNeverLapse(MemoryBreakerStore):
    """Probe permits never lapse: a crashed probe holds the breaker half-open forever."""

    def _use(self, name: str) -> tuple[_Breaker, float]:
        if name not in self._breakers:
            require_name(name, "breaker name")
            self._breakers[name] = _NeverLapses()
        return super()._use(name)


# -- the backends ---------------------------------------------------------------------------------


def _store_url(url: str, prefix: str) -> str:
    """The ``memory://`` URL of the named store behind ``url`` (shared by its clients)."""
    parts = urlsplit(url)
    name = f"{prefix}-{parts.netloc or 'shared'}"
    return urlunsplit(parts._replace(scheme="memory", netloc=name))


class MutantBackend(MemoryBackend):
    """The memory backend with some of its stores replaced: the control, and base of mutants."""

    scheme: ClassVar[str] = "mutant-none"
    #: The contract clause the mutant breaks.
    breaks: ClassVar[str] = "nothing (the control: the same wrapping, no mutation)"
    #: A suite test that must catch it (the one written for the clause).
    caught_by: ClassVar[str] = ""
    queue_store: ClassVar[type[MemoryQueueStore]] = MemoryQueueStore
    registry_store: ClassVar[type[MemoryRegistryStore]] = MemoryRegistryStore
    breaker_store: ClassVar[type[MemoryBreakerStore]] = MemoryBreakerStore

    def __init__(
        self,
        options: BackendOptions | None = None,
        *,
        name: str | None = None,
        clock: MemoryClock | None = None,
    ) -> None:
        super().__init__(options, name=name, clock=clock)
        # The first client of a namespace puts the mutant stores in; later clients share them.
        space, world_clock = self._space, self._world.clock
        if type(space.queue) is not self.queue_store:
            space.queue = self.queue_store(world_clock, self._options)
        if type(space.registry) is not self.registry_store:
            space.registry = self.registry_store(world_clock, self._options)
        if type(space.breakers) is not self.breaker_store:
            space.breakers = self.breaker_store(world_clock, self._options)

    @classmethod
    def from_mutant_url(cls, url: str, options: BackendOptions) -> MemoryBackend:
        """The factory the plugin names: ``mutant-NAME://[STORE]``."""
        return cls.from_url(_store_url(url, cls.scheme), options)

    @property
    def url(self) -> str:
        """The mutant's URL."""
        return f"{self.scheme}://?namespace={self.options.namespace}"


def _mutant(
    scheme: str,
    *,
    breaks: str,
    caught_by: str,
    queue: type[MemoryQueueStore] = MemoryQueueStore,
    registry: type[MemoryRegistryStore] = MemoryRegistryStore,
    breakers: type[MemoryBreakerStore] = MemoryBreakerStore,
) -> type[MutantBackend]:
    name = "".join(part.title() for part in scheme.split("-")) + "Backend"
    attributes: dict[str, object] = {
        "__doc__": breaks,
        "__module__": __name__,
        "__qualname__": name,
        "scheme": scheme,
        "breaks": breaks,
        "caught_by": caught_by,
        "queue_store": queue,
        "registry_store": registry,
        "breaker_store": breakers,
    }
    cls = type(name, (MutantBackend,), attributes)
    globals()[name] = cls  # so the plugin's "module:Class.factory" reference resolves
    return cls


CONTROL: type[MutantBackend] = MutantBackend

#: Every mutant, in the order of the kill table.
MUTANTS: tuple[type[MutantBackend], ...] = (
    _mutant(
        "mutant-priority",
        breaks="queue 2: reserve ignores priority (FIFO only)",
        caught_by="test_highest_priority_first_then_fifo",
        queue=_IgnoresPriority,
    ),
    _mutant(
        "mutant-stale-ack",
        breaks="queue 4: an ack with a stale receipt still removes the entry",
        caught_by="test_receipt_of_a_released_delivery_is_stale",
        queue=_StaleReceiptAcks,
    ),
    _mutant(
        "mutant-cap-race",
        breaks="queue 1: the cap check and the write are two steps (racing producers pass it)",
        caught_by="test_racing_producers_never_pass_the_cap",
        queue=_CapRace,
    ),
    _mutant(
        "mutant-reserve-race",
        breaks="queue 2: reserve reads then writes (two racing consumers both get an entry)",
        caught_by="test_racing_reservers_never_share_an_entry",
        queue=_ReserveRace,
    ),
    _mutant(
        "mutant-nack-loses",
        breaks="queue 4: nack loses the message",
        caught_by="test_nack_delay_makes_it_due_later",
        queue=_NackLoses,
    ),
    _mutant(
        "mutant-no-reclaim",
        breaks="queue 3: expired reservations are never reclaimed",
        caught_by="test_reserved_entry_is_invisible_then_reclaimed_without_a_sweeper",
        queue=_NoReclaim,
    ),
    _mutant(
        "mutant-release-counts",
        breaks="queue 3: release counts an attempt",
        caught_by="test_attempts_count_nacks_and_expiries_not_releases",
        queue=_ReleaseCounts,
    ),
    _mutant(
        "mutant-expiry-free",
        breaks="queue 3: an expired reservation does not count an attempt (never dead-letters)",
        caught_by="test_max_attempts_by_expired_reservation_dead_letters",
        queue=_ExpiryFree,
    ),
    _mutant(
        "mutant-expired-twice",
        breaks="registry: two clients sweeping at once both emit expired (non-atomic sweep)",
        caught_by="test_expired_once_across_two_clients",
        registry=_SweepNotAtomic,
    ),
    _mutant(
        "mutant-half-open-all",
        breaks="breakers: half-open lets every caller through",
        caught_by="test_half_open_lets_at_most_max_calls_through",
        breakers=_HalfOpenLetsAllThrough,
    ),
    _mutant(
        "mutant-ack-not-idempotent",
        breaks="queue 4: repeating a successful ack (a retry) returns False",
        caught_by="test_stale_receipt_changes_nothing",
        queue=_AckNotIdempotent,
    ),
    _mutant(
        "mutant-dedup-ignored",
        breaks="queue 1: enqueue ignores dedup_key",
        caught_by="test_dedup_key_collapses_sends_while_live",
        queue=_DedupIgnored,
    ),
    _mutant(
        "mutant-ttl-ignored",
        breaks="queue 5: a message past its ttl is still delivered",
        caught_by="test_expired_message_is_never_delivered",
        queue=_TtlIgnored,
    ),
    _mutant(
        "mutant-replay-keeps-attempts",
        breaks="queue 5: replay keeps the attempt count instead of resetting it",
        caught_by="test_replay_resets_the_attempt_count",
        queue=_ReplayKeepsAttempts,
    ),
    _mutant(
        "mutant-events-repeat",
        breaks="registry: resuming from an empty page's cursor repeats the last event",
        caught_by="test_events_resume_without_loss_or_repetition",
        registry=_EventsRepeat,
    ),
    _mutant(
        "mutant-permits-never-lapse",
        breaks="breakers: probe permits never lapse (probe_timeout ignored)",
        caught_by="test_lapsed_permits_free_their_slot_and_are_ignored",
        breakers=_PermitsNeverLapse,
    ),
)


class NoClockBackend:
    """A healthy memory backend that declares no optional capability, so it has no clock."""

    scheme: ClassVar[str] = "noclock"

    def __init__(self, inner: MemoryBackend, url: str) -> None:
        self._inner = inner
        self._url = url

    @classmethod
    def from_url(cls, url: str, options: BackendOptions) -> NoClockBackend:
        """The factory the plugin names: ``noclock://[STORE]``."""
        return cls(MemoryBackend.from_url(_store_url(url, cls.scheme), options), url)

    @property
    def url(self) -> str:
        """The URL it was made from."""
        return self._url

    @property
    def options(self) -> BackendOptions:
        """The inner backend's options."""
        return self._inner.options

    @property
    def capabilities(self) -> frozenset[str]:
        """None: no cluster, no TLS, no clock control."""
        return frozenset()

    @property
    def queue(self) -> QueueStore:
        """The memory queue store."""
        return self._inner.queue

    @property
    def registry(self) -> RegistryStore:
        """The memory registry store."""
        return self._inner.registry

    @property
    def breakers(self) -> BreakerStore:
        """The memory breaker store."""
        return self._inner.breakers

    @property
    def clock(self) -> ClockControl | None:
        """No clock hook."""
        return None

    async def drop_namespace(self) -> None:
        """Forget the namespace."""
        await self._inner.drop_namespace()

    async def aclose(self) -> None:
        """Detach from the store."""
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


@hookimpl
def tta_backend_schemes() -> dict[str, str]:
    """Every mutant's scheme, the control's and ``noclock``, as lazy references."""
    schemes = {
        cls.scheme: f"{__name__}:{cls.__qualname__}.from_mutant_url" for cls in (CONTROL, *MUTANTS)
    }
    schemes[NoClockBackend.scheme] = f"{__name__}:NoClockBackend.from_url"
    return schemes


@contextmanager
def installed() -> Generator[None]:
    """Register this module as a plugin of the process-wide registry while the block runs."""
    registry = plugin_registry()
    registry.register(sys.modules[__name__], name=PLUGIN_NAME)
    try:
        yield
    finally:
        registry.unregister(PLUGIN_NAME)
