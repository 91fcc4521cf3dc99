"""A plain-Python model of the contract, for the stateful test (:mod:`.stateful`).

It models what the store protocols let a caller observe, for ONE queue (with its dead letters),
ONE registry and ONE breaker name, on an explicit model clock (float seconds, moved only by
:meth:`ModelClock.advance`). It is written to be read, not to be fast: every operation is a
loop over a handful of entries. It does not import any driver.

Where the contract leaves an answer open, the model computes the set of acceptable answers:

* Reserve order: highest priority first, then by the time an entry became due, ties by
  enqueue order. On a clock that also flows in real time, two entries that became due at the
  same model instant became due in the order of the operations that made them due; on a frozen
  clock they tie and go by enqueue order. The model therefore only insists on ``a`` before
  ``b`` when every reading agrees (:meth:`QueueModel.must_precede`). Entries replayed by one
  call have no order among themselves.
* An entry that fails at ``max_attempts`` after its ttl passed may be dead-lettered as
  ``max_attempts`` or as ``expired``.
* The order of dead letters that died in one operation is open; across operations it is oldest
  first.
* A heartbeat with the token of a deregistered session, after another session registered the
  same id, may raise ``AgentConflictError`` or ``AgentNotFoundError``.
* A breaker's failure count is exact while closed; while open or half-open it is at least
  ``failure_threshold`` (the contract keeps failures visible, but whether a probe's failure adds
  one is open).

Operation numbers (``op``) order the model's operations; every public operation of a model
takes the next one. Times are compared only where they are at least five seconds apart, so a
backend clock that drifts by a fraction of a second never changes an answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..models import BreakerState, CircuitBreakerConfig, DeadLetterReason, RegistryEventKind

__all__ = [
    "BreakerExpectation",
    "BreakerModel",
    "EnqueueExpectation",
    "ModelClock",
    "ModelDeadLetter",
    "ModelEntry",
    "ModelEvent",
    "ModelSession",
    "QueueModel",
    "RegistryModel",
    "ReserveVerdict",
]

MAX_ATTEMPTS = str(DeadLetterReason.MAX_ATTEMPTS)
EXPIRED = str(DeadLetterReason.EXPIRED)


class ModelClock:
    """The model's clock and operation counter, shared by the three models of one machine."""

    def __init__(self) -> None:
        self.now = 0.0
        self.op = 0

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self.now += seconds

    def tick(self) -> int:
        """Start the next operation; return its number."""
        self.op += 1
        return self.op


# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelEntry:
    """One live entry (or the entry inside a dead letter).

    Attributes:
        entry_id: The backend's entry id.
        tag: The test's marker in the message payload.
        priority: The message's priority.
        max_attempts: The attempts after which a failure dead-letters it.
        ttl: The message's ttl, or ``None``.
        dedup_key: The dedup key it holds, or ``None``.
        enq_op: The operation that (re-)enqueued it (enqueue or replay).
        expires_at: When its ttl ends, or ``None``.
        attempt: The attempt number of its next (or current) delivery.
        due: When it became (or becomes) due, if not reserved.
        due_op: The operation that set ``due``.
        receipt: The current receipt while reserved, else ``None``.
        deadline: The reservation deadline while reserved.
        deadline_op: The operation that set ``deadline`` (reserve or extend).
    """

    entry_id: str
    tag: int
    priority: int
    max_attempts: int
    ttl: float | None
    dedup_key: str | None
    enq_op: int = 0
    expires_at: float | None = None
    attempt: int = 1
    due: float = 0.0
    due_op: int = 0
    receipt: str | None = None
    deadline: float = 0.0
    deadline_op: int = 0

    def expired(self, now: float) -> bool:
        """True once its ttl has passed."""
        return self.expires_at is not None and self.expires_at <= now

    def readmit(self, now: float, op: int, delay: float) -> None:
        """(Re-)enqueue it now: a fresh enqueue time and ttl, due after ``delay``."""
        self.enq_op = op
        self.expires_at = None if self.ttl is None else now + self.ttl
        self.due = now + delay
        self.due_op = op
        self.receipt = None


@dataclass(frozen=True)
class ModelDeadLetter:
    """A dead letter: the entry, the acceptable reasons, the attempts and when it died.

    Attributes:
        entry: The entry.
        reasons: The reasons the contract accepts.
        attempts: The deliveries that ended in failure.
        death: The operation that dead-lettered it.
    """

    entry: ModelEntry
    reasons: frozenset[str]
    attempts: int
    death: int


@dataclass(frozen=True)
class ReserveVerdict:
    """The model's judgement of a reserve's answer.

    Attributes:
        wanted: How many deliveries it must have.
        unready: Delivered ids that were not ready (reserved, delayed, dead or unknown).
        misordered: ``(a, b)`` pairs where ``a`` was delivered after ``b`` but must precede it.
        skipped: ``(a, b)`` pairs where ready ``a`` was left but must precede delivered ``b``.
    """

    wanted: int
    unready: list[str]
    misordered: list[tuple[str, str]]
    skipped: list[tuple[str, str]]


@dataclass(frozen=True)
class EnqueueExpectation:
    """What an enqueue must do: return ``existing`` (writing nothing), refuse, or write.

    Attributes:
        existing: The id a repeated entry id or dedup key resolves to, or ``None``.
        full: True if a new entry must be refused (``QueueFullError``).
    """

    existing: str | None
    full: bool


class QueueModel:
    """One queue and its dead letters.

    Args:
        clock: The shared model clock.
        cap: ``max_queue_length``.
    """

    def __init__(self, clock: ModelClock, cap: int) -> None:
        self.clock = clock
        self.cap = cap
        self.entries: dict[str, ModelEntry] = {}
        self.dead: dict[str, ModelDeadLetter] = {}
        self.known: set[str] = set()  # every id ever written (retention outlasts the run)
        self.owner: dict[str, str] = {}  # receipt -> entry id
        self.acked: set[str] = set()  # receipts whose ack succeeded

    # -- helpers ------------------------------------------------------------------------------

    def _step(self) -> int:
        """Start an operation: the next op number, then the maintenance every operation sees."""
        op = self.clock.tick()
        self._maintain(op)
        return op

    def _bury(self, entry: ModelEntry, reasons: set[str], attempts: int, op: int) -> None:
        del self.entries[entry.entry_id]
        entry.receipt = None
        self.dead[entry.entry_id] = ModelDeadLetter(entry, frozenset(reasons), attempts, op)

    def _fail(self, entry: ModelEntry, op: int) -> bool:
        """A delivery failed (nack or lapsed reservation); True if it stays live."""
        now = self.clock.now
        if entry.attempt >= entry.max_attempts:
            reasons = {MAX_ATTEMPTS, EXPIRED} if entry.expired(now) else {MAX_ATTEMPTS}
            self._bury(entry, reasons, entry.attempt, op)
            return False
        entry.attempt += 1
        return self._hand_back(entry, op)

    def _hand_back(self, entry: ModelEntry, op: int) -> bool:
        """No longer reserved: dead-letter it if its ttl passed; True if it stays live."""
        entry.receipt = None
        if entry.expired(self.clock.now):
            self._bury(entry, {EXPIRED}, entry.attempt - 1, op)
            return False
        return True

    def _maintain(self, op: int) -> None:
        """Reclaim lapsed reservations, then dead-letter unreserved entries past their ttl."""
        now = self.clock.now
        for entry in list(self.entries.values()):
            if entry.receipt is not None and entry.deadline <= now and self._fail(entry, op):
                entry.due = entry.deadline
                entry.due_op = entry.deadline_op
        for entry in list(self.entries.values()):
            if entry.receipt is None and entry.expired(now):
                self._bury(entry, {EXPIRED}, entry.attempt - 1, op)

    def holder(self, dedup_key: str) -> ModelEntry | None:
        """The live entry holding ``dedup_key`` (the dedup window is 0), or ``None``."""
        for entry in self.entries.values():
            if entry.dedup_key == dedup_key:
                return entry
        return None

    def ready(self) -> list[ModelEntry]:
        """Entries due now and not reserved."""
        now = self.clock.now
        return [e for e in self.entries.values() if e.receipt is None and e.due <= now]

    def current(self, receipt: str) -> ModelEntry | None:
        """The entry ``receipt`` currently holds, or ``None`` if the receipt is stale."""
        entry = self.entries.get(self.owner.get(receipt, ""))
        return entry if entry is not None and entry.receipt == receipt else None

    @staticmethod
    def must_precede(a: ModelEntry, b: ModelEntry) -> bool:
        """True if every reading of the contract delivers ready entry ``a`` before ``b``."""
        if (-a.priority, a.due) != (-b.priority, b.due):
            return (-a.priority, a.due) < (-b.priority, b.due)
        return a.enq_op < b.enq_op and a.due_op <= b.due_op

    # -- operations ---------------------------------------------------------------------------

    def stats(self) -> tuple[int, int, int, int]:
        """Ready, delayed, reserved and dead counts."""
        self._step()
        now = self.clock.now
        reserved = sum(1 for e in self.entries.values() if e.receipt is not None)
        delayed = sum(1 for e in self.entries.values() if e.receipt is None and e.due > now)
        ready = len(self.entries) - reserved - delayed
        return ready, delayed, reserved, len(self.dead)

    def enqueue(self, entry_id: str | None, dedup_key: str | None) -> EnqueueExpectation:
        """What an enqueue with ``entry_id`` and ``dedup_key`` must do (commit with admit)."""
        self._step()
        if entry_id is not None and entry_id in self.known:
            return EnqueueExpectation(entry_id, full=False)
        held = None if dedup_key is None else self.holder(dedup_key)
        if held is not None:
            return EnqueueExpectation(held.entry_id, full=False)
        return EnqueueExpectation(None, full=len(self.entries) >= self.cap)

    def admit(self, entry: ModelEntry, delay: float) -> None:
        """Commit the new entry the last :meth:`enqueue` allowed (same operation)."""
        entry.readmit(self.clock.now, self.clock.op, delay)
        self.entries[entry.entry_id] = entry
        self.known.add(entry.entry_id)

    def check_reserve(self, entry_ids: list[str], max_messages: int) -> ReserveVerdict:
        """Judge ``entry_ids`` as the answer to a reserve of ``max_messages`` (no commit)."""
        self._step()
        ready = {e.entry_id: e for e in self.ready()}
        chosen = [ready[i] for i in entry_ids if i in ready]
        return ReserveVerdict(
            wanted=min(max_messages, len(ready)),
            unready=[i for i in entry_ids if i not in ready],
            misordered=[
                (later.entry_id, earlier.entry_id)
                for index, later in enumerate(chosen)
                for earlier in chosen[:index]
                if self.must_precede(later, earlier)
            ],
            skipped=[
                (left.entry_id, taken.entry_id)
                for left in ready.values()
                if left.entry_id not in entry_ids
                for taken in chosen
                if self.must_precede(left, taken)
            ],
        )

    def reserve(self, receipts: list[tuple[str, str]], visibility_timeout: float) -> None:
        """Commit a reserve checked by :meth:`check_reserve`: ``(entry id, receipt)`` pairs."""
        for entry_id, receipt in receipts:
            entry = self.entries[entry_id]
            entry.receipt = receipt
            entry.deadline = self.clock.now + visibility_timeout
            entry.deadline_op = self.clock.op
            self.owner[receipt] = entry_id

    def ack(self, receipt: str) -> bool:
        """Ack: True for the current receipt and for a repeat of a successful ack."""
        self._step()
        entry = self.current(receipt)
        if entry is None:
            return receipt in self.acked
        del self.entries[entry.entry_id]
        self.acked.add(receipt)
        return True

    def nack(self, receipt: str, delay: float) -> bool:
        """Nack: due after ``delay`` with one more attempt, or dead at ``max_attempts``."""
        op = self._step()
        entry = self.current(receipt)
        if entry is None:
            return False
        if self._fail(entry, op):
            entry.due = self.clock.now + delay
            entry.due_op = op
        return True

    def release(self, receipt: str) -> bool:
        """Release: due at once, no attempt counted."""
        op = self._step()
        entry = self.current(receipt)
        if entry is None:
            return False
        if self._hand_back(entry, op):
            entry.due = self.clock.now
            entry.due_op = op
        return True

    def extend(self, receipt: str, visibility_timeout: float) -> bool:
        """Extend: the reservation ends ``visibility_timeout`` from now."""
        op = self._step()
        entry = self.current(receipt)
        if entry is None:
            return False
        entry.deadline = self.clock.now + visibility_timeout
        entry.deadline_op = op
        return True

    def dead_letter(self, receipt: str, reason: str) -> bool:
        """Dead-letter the reserved entry with ``reason`` (attempts: the current attempt)."""
        op = self._step()
        entry = self.current(receipt)
        if entry is None:
            return False
        self._bury(entry, {reason}, entry.attempt, op)
        return True

    def replay(self, entry_ids: list[str] | None) -> list[str]:
        """Replay dead letters (all if ``None``): same ids, attempt 1, enqueued now."""
        op = self._step()
        chosen = list(self.dead) if entry_ids is None else entry_ids
        replayed: list[str] = []
        for entry_id in chosen:
            dead = self.dead.pop(entry_id, None)
            if dead is None:
                continue
            entry = dead.entry
            entry.attempt = 1
            if entry.dedup_key is not None and self.holder(entry.dedup_key) is not None:
                entry.dedup_key = None
            entry.readmit(self.clock.now, op, 0.0)
            self.entries[entry_id] = entry
            replayed.append(entry_id)
        return replayed

    def purge(self, entry_ids: list[str] | None) -> int:
        """Delete dead letters (all if ``None``); how many."""
        self._step()
        chosen = list(self.dead) if entry_ids is None else entry_ids
        purged = [i for i in chosen if self.dead.pop(i, None) is not None]
        return len(purged)

    def dead_letters(self) -> list[ModelDeadLetter]:
        """The dead letters, oldest first (those of one operation in no particular order)."""
        self._step()
        return sorted(self.dead.values(), key=lambda d: d.death)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelSession:
    """An agent's current session (kept after expiry, as a heartbeat may revive it).

    Attributes:
        token: The session token.
        ttl: The liveness ttl.
        expires_at: When it stops being live.
        load: The reported load.
        available: The reported availability.
        capable: Whether it holds the test's capability.
        expired: True once its ``expired`` event was emitted.
    """

    token: str
    ttl: float
    expires_at: float
    load: float
    available: bool
    capable: bool
    expired: bool = False


@dataclass(frozen=True)
class ModelEvent:
    """A registry event as the model predicts it.

    Attributes:
        kind: The event kind.
        agent: The agent's key (the test's agent number).
        load: The agent's load in the event's snapshot.
        available: The agent's availability in the event's snapshot.
    """

    kind: RegistryEventKind
    agent: int
    load: float
    available: bool


@dataclass
class RegistryModel:
    """The registry, for a few agents numbered 0..n-1.

    Attributes:
        clock: The shared model clock.
        sessions: The current session of each agent that has one.
        fates: What ended each old token: ``"replaced"`` or ``"deregistered"``.
        pending: Events emitted and not yet read.
    """

    clock: ModelClock
    sessions: dict[int, ModelSession] = field(default_factory=dict[int, ModelSession])
    fates: dict[str, str] = field(default_factory=dict[str, str])
    pending: list[ModelEvent] = field(default_factory=list[ModelEvent])

    def _emit(self, kind: RegistryEventKind, agent: int, session: ModelSession) -> None:
        self.pending.append(ModelEvent(kind, agent, session.load, session.available))

    def _step(self) -> None:
        """Start an operation: detect expiries (each agent's ``expired`` exactly once)."""
        self.clock.tick()
        for agent, session in sorted(self.sessions.items()):
            if not session.expired and session.expires_at <= self.clock.now:
                session.expired = True
                self._emit(RegistryEventKind.EXPIRED, agent, session)

    def live(self) -> dict[int, ModelSession]:
        """The live sessions by agent (call after an operation started)."""
        return {a: s for a, s in sorted(self.sessions.items()) if not s.expired}

    def can_register(self, agent: int, replace: bool) -> bool:
        """Start a register: False if it must raise ``AgentConflictError``."""
        self._step()
        return replace or agent not in self.live()

    def register(self, agent: int, token: str, ttl: float, capable: bool) -> None:
        """Commit a register that :meth:`can_register` allowed."""
        old = self.sessions.get(agent)
        if old is not None:
            self.fates[old.token] = "replaced"
        session = ModelSession(
            token, ttl, self.clock.now + ttl, load=0.0, available=True, capable=capable
        )
        self.sessions[agent] = session
        self._emit(RegistryEventKind.REGISTERED, agent, session)

    def heartbeat(
        self, agent: int, token: str, load: float | None, available: bool | None
    ) -> frozenset[str]:
        """Heartbeat; the acceptable outcomes (``ok`` commits the effect)."""
        self._step()
        session = self.sessions.get(agent)
        if session is None:
            return frozenset({"not_found"})
        if session.token != token:
            if self.fates.get(token) == "deregistered":
                return frozenset({"conflict", "not_found"})
            return frozenset({"conflict"})
        new_load = session.load if load is None else load
        new_available = session.available if available is None else available
        changed = (new_load, new_available) != (session.load, session.available)
        session.load, session.available = new_load, new_available
        session.expires_at = self.clock.now + session.ttl
        if session.expired:
            session.expired = False
            self._emit(RegistryEventKind.REGISTERED, agent, session)
        elif changed:
            self._emit(RegistryEventKind.UPDATED, agent, session)
        return frozenset({"ok"})

    def deregister(self, agent: int, token: str) -> bool:
        """Deregister: True for the current session (no event if it had expired)."""
        self._step()
        session = self.sessions.get(agent)
        if session is None or session.token != token:
            return False
        del self.sessions[agent]
        self.fates[token] = "deregistered"
        if not session.expired:
            self._emit(RegistryEventKind.DEREGISTERED, agent, session)
        return True

    def listed(self, capability: bool) -> dict[int, ModelSession]:
        """Live agents (only those holding the capability if ``capability``)."""
        self._step()
        return {a: s for a, s in self.live().items() if s.capable or not capability}

    def get(self, agent: int) -> ModelSession | None:
        """The live session of ``agent``, or ``None``."""
        self._step()
        return self.live().get(agent)

    def read_events(self) -> list[ModelEvent]:
        """The events not read yet (emptying the pending list)."""
        self._step()
        events, self.pending = self.pending, []
        return events


# ---------------------------------------------------------------------------------------------
# Breaker
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerExpectation:
    """What ``acquire`` must answer.

    Attributes:
        allowed: Whether the call may proceed.
        permit: Whether the answer carries a probe permit.
        transition: The ``(from, to)`` states of the transition it causes, or ``None``.
        retry_after: The ``retry_after`` of a refusal's snapshot (``None`` when allowed).
    """

    allowed: bool
    permit: bool
    transition: tuple[BreakerState, BreakerState] | None
    retry_after: float | None


@dataclass
class BreakerModel:
    """One breaker name under one configuration (``window=None``: consecutive failures).

    Attributes:
        clock: The shared model clock.
        config: The configuration every call passes.
        state: The state.
        failures: Consecutive failures while closed.
        successes: Probe successes in this half-open period.
        permits: Probe permits of this half-open period, with their lease ends.
        opened_at: When it last opened.
    """

    clock: ModelClock
    config: CircuitBreakerConfig
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    successes: int = 0
    permits: dict[str, float] = field(default_factory=dict[str, float])
    opened_at: float = 0.0

    def _step(self) -> None:
        """Start an operation: forget lapsed probe permits."""
        self.clock.tick()
        now = self.clock.now
        self.permits = {p: end for p, end in self.permits.items() if end > now}

    def _move(self, to: BreakerState) -> tuple[BreakerState, BreakerState]:
        moved = (self.state, to)
        self.state = to
        self.successes = 0
        self.permits = {}
        if to is BreakerState.OPEN:
            self.opened_at = self.clock.now
        if to is BreakerState.CLOSED:
            self.failures = 0
        return moved

    def retry_after(self) -> float | None:
        """The snapshot's ``retry_after`` now (``None`` when a call would be let through)."""
        if self.state is BreakerState.OPEN:
            left = self.opened_at + self.config.recovery_timeout - self.clock.now
            return left if left > 0 else None
        full = len(self.permits) >= self.config.half_open_max_calls
        return 0.0 if self.state is BreakerState.HALF_OPEN and full else None

    def acquire(self) -> BreakerExpectation:
        """What ``acquire`` must answer (commit a granted permit with :meth:`grant`)."""
        self._step()
        if self.state is BreakerState.CLOSED:
            return BreakerExpectation(allowed=True, permit=False, transition=None, retry_after=None)
        transition = None
        if self.state is BreakerState.OPEN:
            left = self.retry_after()
            if left is not None:
                return BreakerExpectation(
                    allowed=False, permit=False, transition=None, retry_after=left
                )
            transition = self._move(BreakerState.HALF_OPEN)
        if len(self.permits) >= self.config.half_open_max_calls:
            return BreakerExpectation(allowed=False, permit=False, transition=None, retry_after=0.0)
        return BreakerExpectation(
            allowed=True, permit=True, transition=transition, retry_after=None
        )

    def grant(self, permit: str) -> None:
        """Commit the permit the last :meth:`acquire` granted."""
        self.permits[permit] = self.clock.now + self.config.probe_timeout

    def record_success(self, permit: str | None) -> tuple[BreakerState, BreakerState] | None:
        """A success (a probe's with its permit); the transition, if any."""
        self._step()
        if self.state is BreakerState.CLOSED and permit is None:
            self.failures = 0
        elif self.state is BreakerState.HALF_OPEN and permit in self.permits:
            del self.permits[permit]
            self.successes += 1
            if self.successes >= self.config.success_threshold:
                return self._move(BreakerState.CLOSED)
        return None

    def record_failure(self, permit: str | None) -> tuple[BreakerState, BreakerState] | None:
        """A failure (a probe's with its permit); the transition, if any."""
        self._step()
        if self.state is BreakerState.CLOSED and permit is None:
            self.failures += 1
            if self.failures >= self.config.failure_threshold:
                return self._move(BreakerState.OPEN)
        elif self.state is BreakerState.HALF_OPEN and permit in self.permits:
            return self._move(BreakerState.OPEN)
        return None

    def reset(self) -> tuple[BreakerState, BreakerState] | None:
        """Close it from any state and forget its failures; the transition, if any."""
        self._step()
        moved = None if self.state is BreakerState.CLOSED else self._move(BreakerState.CLOSED)
        self.failures = 0
        return moved

    def snapshot(self) -> None:
        """Start a snapshot (the caller compares against the model's fields)."""
        self._step()

    def failures_ok(self, failures: int) -> bool:
        """Whether a snapshot's failure count is acceptable now."""
        if self.state is BreakerState.CLOSED:
            return failures == self.failures
        return failures >= self.config.failure_threshold
