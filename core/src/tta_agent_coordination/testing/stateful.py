"""The stateful contract test: random operation sequences against a backend and a model.

Three ``hypothesis`` state machines (queue, registry, breakers) each drive one store of a real
backend, connected from a URL in a fresh namespace, and the plain-Python model of
:mod:`.model`, and compare every answer. :class:`StatefulContract` runs them as
``test_stateful_contract[queue|registry|breakers]``.

The rules are synchronous; the backend's coroutines run on an ``anyio`` blocking portal
(asyncio) that lives as long as the machine. The namespace is dropped in ``teardown``.

Time. Every duration the machines use (delays, ttls, visibility timeouts, recovery and probe
timeouts) is 5 s off a multiple of 10 s, and the ``advance`` rules move the model clock by
multiples of 10 s, so no comparison falls within 5 s of a boundary. When the backend declares
``clock_control``, ``advance`` moves the backend clock with the model's (10, 20 or 30 s), so a
backend clock that also flows in real time (the Redis driver's offset clock) only needs an
example to run for less than 5 s. Without ``clock_control`` the machines run in scaled real
time: :data:`STATEFUL_SCALE` (0.02, as the contract tests) real seconds per model second. Every
duration passed to the backend is scaled, ``retry_after`` is read back unscaled, and
``advance`` (always 10 s then, at most :data:`REAL_STEPS` per example, each after
:data:`REAL_STEP_GAP` backend calls) sleeps until the real instant of the new model time, so
the time operations take is absorbed by the next sleep instead of adding up. Between steps the
backend's clock runs ahead of the model by the real time spent since the last step (the
*lag*). A step of an example takes about 0.5 ms (measured on the memory driver, invariants
included), so a whole 30-step example lags 15 ms, 0.75 model seconds, against the 5 s (100 ms)
every duration keeps off a boundary; a loaded 2-core machine (two busy processes beside the
test) stalled the run for at most 80 ms. Every backend call also measures the lag, and a
failing example in which it reached :data:`LAG_LIMIT` (4 model seconds) says so in its report.
(Rejecting such examples instead would make hypothesis's data generation depend on timing,
which it reports as flaky.) The sleeps cost real time (up to 0.8 s an example), so a profile
runs a tenth of its examples there (:func:`machine_settings`).

Maintenance. The queue machine's invariant calls ``stats`` after every step, and ``stats``
applies the same maintenance as ``reserve`` (decision 0003). So the backend is maintained at
every model instant, and whether a driver maintains lazily or eagerly is not observable.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from functools import partial
from typing import ClassVar, TypeVar, cast

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from ..errors import AgentConflictError, AgentNotFoundError, QueueFullError
from ..models import (
    AgentId,
    AgentInfo,
    AgentMessage,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    Capability,
    CircuitBreakerConfig,
    DeadLetter,
)
from ..plugins import connect
from ..protocols import Backend
from .base import SCALE, BackendTestBase
from .model import BreakerModel, ModelClock, ModelEntry, ModelSession, QueueModel, RegistryModel

__all__ = [
    "LAG_LIMIT",
    "STATEFUL_SCALE",
    "BreakerMachine",
    "QueueMachine",
    "RegistryMachine",
    "StatefulContract",
    "bind",
    "controls_clock",
    "machine_settings",
    "run_machine",
]

T = TypeVar("T")
M = TypeVar("M", bound="_BackendMachine")

#: The backend options every machine connects with (keywords win over the URL's query).
CAP = 4
MAX_ATTEMPTS = 3
OPTIONS: dict[str, object] = {
    "max_queue_length": CAP,
    "max_attempts": MAX_ATTEMPTS,
    "dedup_window": 0.0,
    "dead_letter_max_age": None,
    "dead_letter_max_length": None,
    "entry_id_retention": 86_400.0,
}

# Durations: clock steps are multiples of 10 s, every other duration is 5 s off one.
STEPS = (10.0, 20.0, 30.0)
#: The clock step without ``clock_control`` (every step is a real sleep)...
REAL_STEP = 10.0
#: ... at most this many per example (40 s: durations of 15, 25 and 35 s can lapse)...
REAL_STEPS = 4
#: ... each after at least this many backend calls since the last one (back-to-back sleeps
#: are one longer sleep: they cost real time and test nothing more).
REAL_STEP_GAP = 3
#: Real seconds per model second on a backend without ``clock_control`` (as the contract tests).
STATEFUL_SCALE = SCALE
#: Model seconds the backend clock may run ahead of the model before a failure report says so
#: (below the 5 s that every duration keeps off a boundary).
LAG_LIMIT = 4.0
DELAYS = (None, None, 0.0, 15.0, 35.0)
TTLS = (None, None, 15.0, 45.0)
VISIBILITY = (25.0, 45.0)
NACK_DELAYS = (0.0, 15.0)
#: Settling actions (``ack`` twice as often; the last one is a dead-letter reason).
SETTLE_ACTIONS = ("ack", "ack", "nack", "release", "extend", "handler_error")
AGENT_TTLS = (15.0, 35.0)
#: A backend's ``retry_after`` may be this much below the model's (real time flows while the
#: machine runs; the margins of every duration assume an example runs for less than this)...
RETRY_AFTER_SLACK = 5.0
#: ... and this much above it (float rounding, a server clock stepped back a little; without
#: ``clock_control``, plus :data:`LAG_LIMIT`: the lag when the breaker opened may be gone).
RETRY_AFTER_EXCESS = 0.5

QUEUE = AgentId("stateful", "q")
SENDER = AgentId("stateful", "sender")
AGENTS = tuple(AgentId("stateful", f"a{i}") for i in range(3))
CAPABILITY = Capability("stateful-cap", "1.0")
BREAKER = "stateful-breaker"


class _BackendMachine(RuleBasedStateMachine):
    """A machine holding a backend (fresh namespace) and a blocking portal for its lifetime."""

    #: The backend URL (set by :func:`bind`).
    url: ClassVar[str] = "memory://"
    #: Real seconds per model second when the backend has no ``clock_control``.
    time_scale: ClassVar[float] = STATEFUL_SCALE

    def __init__(self) -> None:
        super().__init__()
        with ExitStack() as stack:
            portal = stack.enter_context(start_blocking_portal("asyncio"))
            namespace = f"sm{uuid.uuid4().hex[:16]}"
            backend = connect(self.url, namespace=namespace, **OPTIONS)
            stack.callback(portal.call, backend.aclose)
            stack.callback(portal.call, backend.drop_namespace)
            self._stack = stack.pop_all()
        self.portal: BlockingPortal = portal
        self.backend: Backend = backend
        self.clock = ModelClock()
        self.clock_control = _controls_clock(backend)
        self.scale = 1.0 if self.clock_control else self.time_scale
        self.retry_after_excess = RETRY_AFTER_EXCESS + (0.0 if self.clock_control else LAG_LIMIT)
        #: The real (monotonic) instant of model time 0.
        self.origin = time.monotonic()
        #: Backend calls so far, their number at the last clock step, and the clock steps.
        self.calls = 0
        self.calls_at_step = 0
        self.steps = 0
        self.lag_noted = False

    def d(self, seconds: float) -> float:
        """A model duration as the backend takes it (scaled without ``clock_control``)."""
        return seconds * self.scale

    def lag(self) -> float:
        """Model seconds by which the backend's clock runs ahead of the model (scaled time)."""
        return (time.monotonic() - self.origin) / self.scale - self.clock.now

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one backend coroutine to completion on the portal.

        In scaled real time, if the backend's clock ran :data:`LAG_LIMIT` ahead of the model by
        the end of the call, say so in the report of a failing example (before any comparison).
        """
        result = self.portal.call(fn)
        self.calls += 1
        if not self.clock_control and not self.lag_noted and self.lag() >= LAG_LIMIT:
            self.lag_noted = True
            note(
                f"The backend's clock ran {self.lag():.1f} s ahead of the model here (a stalled "
                "test machine): a failure from now on may be the machine's, not the backend's. "
                "Raise time_scale on the machine if this repeats."
            )
        return result

    def teardown(self) -> None:
        """Drop the namespace, close the backend and the portal."""
        self._stack.close()

    def _advance(self, seconds: float) -> None:
        clock = self.backend.clock
        if self.clock_control and clock is not None:
            self.call(lambda: clock.advance(seconds))
        else:
            seconds = REAL_STEP
            until = self.origin + (self.clock.now + seconds) * self.scale
            self.portal.call(lambda: anyio.sleep(max(0.0, until - time.monotonic())))
            self.calls_at_step = self.calls
        self.steps += 1
        self.clock.advance(seconds)


def _may_advance(machine: _BackendMachine) -> bool:
    """Always with ``clock_control``; else within :data:`REAL_STEPS`, :data:`REAL_STEP_GAP`."""
    return machine.clock_control or (
        machine.steps < REAL_STEPS and machine.calls >= machine.calls_at_step + REAL_STEP_GAP
    )


def _controls_clock(backend: Backend) -> bool:
    return "clock_control" in backend.capabilities and backend.clock is not None


def _nothing() -> MultipleResults[str]:
    """No value for a bundle."""
    return multiple()


# ---------------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------------


class QueueMachine(_BackendMachine):
    """One queue: enqueue (delay, ttl, dedup, entry-id retry, cap), reserve, settle, replay."""

    receipts = Bundle("receipts")
    used = Bundle("used")
    entry_ids = Bundle("entry_ids")

    def __init__(self) -> None:
        super().__init__()
        self.model = QueueModel(self.clock, CAP)
        self.store = self.backend.queue
        self.tags = 0
        self.issued: set[str] = set()

    @rule(
        target=entry_ids,
        priority=st.sampled_from((1, 5, 9)),
        delay=st.sampled_from(DELAYS),
        ttl=st.sampled_from(TTLS),
        dedup_key=st.sampled_from((None, None, "k0", "k1")),
        entry_id=st.sampled_from((None, None, "e0", "e1", "e2", "e3")),
        max_attempts=st.sampled_from((None, 1, 2)),
    )
    def enqueue(
        self,
        *,
        priority: int,
        delay: float | None,
        ttl: float | None,
        dedup_key: str | None,
        entry_id: str | None,
        max_attempts: int | None,
    ) -> MultipleResults[str] | str:
        """Enqueue one message; the model says: existing id, queue full, or a new entry."""
        self.tags += 1
        tag = self.tags
        message = AgentMessage(
            sender=SENDER,
            recipient=QUEUE,
            priority=priority,
            ttl=None if ttl is None else self.d(ttl),
            payload={"tag": tag},
        )
        expected = self.model.enqueue(entry_id, dedup_key)
        try:
            got = self.call(
                lambda: self.store.enqueue(
                    message,
                    delay=None if delay is None else self.d(delay),
                    dedup_key=dedup_key,
                    entry_id=entry_id,
                    max_attempts=max_attempts,
                )
            )
        except QueueFullError:
            assert expected.full, f"QueueFullError, but the model expects {expected}"
            return _nothing()
        if expected.existing is not None:
            assert got == expected.existing, (
                f"a repeated entry id or dedup key must return {expected.existing}, not {got}"
            )
            return _nothing()
        assert not expected.full, f"{CAP} live entries: enqueue must raise QueueFullError"
        assert got not in self.model.known, f"enqueue wrote a second entry with id {got}"
        assert entry_id is None or got == entry_id, f"enqueue(entry_id={entry_id}) returned {got}"
        attempts = MAX_ATTEMPTS if max_attempts is None else max_attempts
        entry = ModelEntry(got, tag, priority, attempts, ttl, dedup_key)
        self.model.admit(entry, 0.0 if delay is None else delay)
        return got

    @rule(
        target=receipts,
        max_messages=st.integers(1, 3),
        visibility=st.sampled_from(VISIBILITY),
    )
    def reserve(self, max_messages: int, visibility: float) -> MultipleResults[str]:
        """Reserve up to ``max_messages``; the order must be one the contract allows."""
        got = self.call(
            lambda: self.store.reserve(
                QUEUE, visibility_timeout=self.d(visibility), max_messages=max_messages
            )
        )
        ids = [d.entry_id for d in got]
        verdict = self.model.check_reserve(ids, max_messages)
        call = f"reserve(max_messages={max_messages}) gave {ids}"
        assert len(ids) == verdict.wanted, f"{call}: expected {verdict.wanted} deliveries"
        assert len(set(ids)) == len(ids), f"{call}: an entry delivered twice in one batch"
        assert not verdict.unready, f"{call}: {verdict.unready} were not ready"
        assert not verdict.misordered, (
            f"{call}: (a, b) where a must come before b: {verdict.misordered}"
        )
        assert not verdict.skipped, (
            f"{call}: (a, b) where a must be delivered before b: {verdict.skipped}"
        )
        for delivery in got:
            entry = self.model.entries[delivery.entry_id]
            seen = (delivery.queue, delivery.attempt, delivery.max_attempts)
            assert seen == (QUEUE, entry.attempt, entry.max_attempts), (
                f"{delivery.entry_id}: (queue, attempt, max_attempts) {seen}, expected "
                f"{(QUEUE, entry.attempt, entry.max_attempts)}"
            )
            assert delivery.message.payload == {"tag": entry.tag}, delivery.message.payload
        fresh = {d.receipt for d in got}
        assert len(fresh) == len(got), "two deliveries share a receipt"
        assert not fresh & self.issued, "a receipt was issued twice"
        self.issued |= fresh
        self.model.reserve([(d.entry_id, d.receipt) for d in got], visibility)
        return multiple(*(d.receipt for d in got))

    def _settle(self, receipt: str, action: str, delay: float, visibility: float) -> None:
        model, store = self.model, self.store
        if action == "ack":
            expected = model.ack(receipt)
            got = self.call(lambda: store.ack(receipt))
        elif action == "nack":
            expected = model.nack(receipt, delay)
            got = self.call(lambda: store.nack(receipt, delay=self.d(delay), error="boom"))
        elif action == "release":
            expected = model.release(receipt)
            got = self.call(lambda: store.release(receipt))
        elif action == "extend":
            expected = model.extend(receipt, visibility)
            got = self.call(lambda: store.extend(receipt, visibility_timeout=self.d(visibility)))
        else:
            expected = model.dead_letter(receipt, action)
            got = self.call(lambda: store.dead_letter(receipt, reason=action))
        assert got is expected, f"{action}({receipt}) -> {got}, expected {expected}"

    @rule(
        target=used,
        receipt=consumes(receipts),
        action=st.sampled_from(SETTLE_ACTIONS),
        delay=st.sampled_from(NACK_DELAYS),
        visibility=st.sampled_from(VISIBILITY),
    )
    def settle(self, receipt: str, action: str, delay: float, visibility: float) -> str:
        """Ack, nack, release, extend or dead-letter with a receipt not used before.

        It is current unless its reservation lapsed (then the answer is False).
        """
        self._settle(receipt, action, delay, visibility)
        return receipt

    @rule(
        receipt=used,
        action=st.sampled_from(SETTLE_ACTIONS),
        delay=st.sampled_from(NACK_DELAYS),
        visibility=st.sampled_from(VISIBILITY),
    )
    def settle_again(self, receipt: str, action: str, delay: float, visibility: float) -> None:
        """Settle with a receipt used before.

        Stale (False), unless it was extended (still current) or is an ack repeated (True).
        """
        self._settle(receipt, action, delay, visibility)

    @rule(entry_id=st.none() | entry_ids)
    def replay(self, entry_id: str | None) -> None:
        """Replay one dead letter (an id that is not one is skipped) or all of them."""
        ids = None if entry_id is None else [entry_id]
        expected = self.model.replay(ids)
        got = self.call(lambda: self.store.replay_dead_letters(QUEUE, ids))
        assert sorted(got) == sorted(expected), f"replay({ids}) -> {got}, expected {expected}"
        assert ids is None or got == expected

    @rule(entry_id=st.none() | entry_ids)
    def purge(self, entry_id: str | None) -> None:
        """Purge one dead letter (or an id that is not one) or all of them."""
        ids = None if entry_id is None else [entry_id]
        expected = self.model.purge(ids)
        got = self.call(lambda: self.store.purge_dead_letters(QUEUE, ids))
        assert got == expected, f"purge({ids}) -> {got}, expected {expected}"

    @rule(entry_id=entry_ids)
    def list_dead_letters(self, entry_id: str) -> None:
        """Page through the dead letters (2 a page), then get one by id.

        Ids, reasons, attempts and payloads as the model says, oldest first.
        """
        items: list[DeadLetter] = []
        cursor: str | None = None
        while True:
            page = self.call(partial(self.store.dead_letters, QUEUE, limit=2, cursor=cursor))
            items.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        expected = {d.entry.entry_id: d for d in self.model.dead_letters()}
        ids = [d.entry_id for d in items]
        assert sorted(ids) == sorted(expected), f"dead letters {ids}, expected {sorted(expected)}"
        deaths = [expected[i].death for i in ids]
        assert deaths == sorted(deaths), f"dead letters {ids} are not listed oldest first"
        for item in items:
            want = expected[item.entry_id]
            assert item.reason in want.reasons, f"{item.entry_id}: reason {item.reason}"
            assert item.attempts == want.attempts, f"{item.entry_id}: attempts {item.attempts}"
            assert item.message is not None
            assert item.message.payload == {"tag": want.entry.tag}
        one = self.call(lambda: self.store.get_dead_letter(QUEUE, entry_id))
        assert (one is None) == (entry_id not in expected), f"get_dead_letter({entry_id}): {one}"
        assert one is None or one.reason in expected[entry_id].reasons, one

    @precondition(_may_advance)
    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        """Move both clocks (without ``clock_control``: sleep, by :data:`REAL_STEP`)."""
        self._advance(seconds)

    @invariant()
    def stats_agree(self) -> None:
        """Ready, delayed, reserved and dead counts equal the model's; the cap holds."""
        stats = self.call(lambda: self.store.stats(QUEUE))
        got = (stats.ready, stats.delayed, stats.reserved, stats.dead)
        expected = self.model.stats()
        assert got == expected, f"stats (ready, delayed, reserved, dead) {got}, model {expected}"
        # Only a replay may take a queue past its cap (decision 0001); enqueue never does.
        assert stats.live <= CAP or len(self.model.entries) > CAP, f"{stats.live} > cap {CAP}"

    @invariant()
    def one_current_receipt_per_entry(self) -> None:
        """No entry is held by two current receipts (the model's view of the receipts)."""
        holders = [e.receipt for e in self.model.entries.values() if e.receipt is not None]
        owners = [self.model.owner[r] for r in holders]
        assert len(set(owners)) == len(owners), "an entry is held by two receipts"


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


class RegistryMachine(_BackendMachine):
    """Three agent ids: register (conflict, replace), heartbeat, deregister, list, events."""

    sessions = Bundle("sessions")

    def __init__(self) -> None:
        super().__init__()
        self.model = RegistryModel(self.clock)
        self.store = self.backend.registry
        self.cursor = "0"

    def _same(self, info: AgentInfo, session: ModelSession) -> None:
        got = (info.load, info.available)
        assert got == (session.load, session.available), f"{info.agent_id}: (load, available) {got}"

    @rule(
        target=sessions,
        agent=st.integers(0, len(AGENTS) - 1),
        ttl=st.sampled_from(AGENT_TTLS),
        replace=st.booleans(),
        capable=st.booleans(),
    )
    def register(
        self, agent: int, ttl: float, replace: bool, capable: bool
    ) -> MultipleResults[tuple[int, str]] | tuple[int, str]:
        """Register (a conflict unless ``replace`` while another session is live)."""
        allowed = self.model.can_register(agent, replace)
        caps = (CAPABILITY,) if capable else ()
        try:
            token = self.call(
                lambda: self.store.register(
                    AGENTS[agent], capabilities=caps, ttl=self.d(ttl), replace=replace
                )
            )
        except AgentConflictError:
            assert not allowed, f"register(a{agent}, replace={replace}) raised a conflict"
            none: MultipleResults[tuple[int, str]] = multiple()
            return none
        assert allowed, f"register(a{agent}) must raise AgentConflictError: it is live"
        self.model.register(agent, token, ttl, capable)
        return (agent, token)

    @rule(
        session=sessions,
        load=st.sampled_from((None, 0.0, 0.5)),
        available=st.sampled_from((None, True, False)),
    )
    def heartbeat(
        self, session: tuple[int, str], load: float | None, available: bool | None
    ) -> None:
        """Heartbeat with a current, replaced or deregistered session's token."""
        agent, token = session
        expected = self.model.heartbeat(agent, token, load, available)
        try:
            info = self.call(
                lambda: self.store.heartbeat(AGENTS[agent], token, load=load, available=available)
            )
        except AgentConflictError:
            outcome = "conflict"
        except AgentNotFoundError:
            outcome = "not_found"
        else:
            outcome = "ok"
            assert outcome in expected, f"heartbeat(a{agent}) succeeded; expected {expected}"
            self._same(info, self.model.sessions[agent])
        assert outcome in expected, f"heartbeat(a{agent}): {outcome}, expected {set(expected)}"

    @rule(session=sessions)
    def deregister(self, session: tuple[int, str]) -> None:
        """Deregister a session (False unless it is the current one)."""
        agent, token = session
        expected = self.model.deregister(agent, token)
        got = self.call(lambda: self.store.deregister(AGENTS[agent], token))
        assert got is expected, f"deregister(a{agent}) -> {got}, expected {expected}"

    @rule(agent=st.integers(0, len(AGENTS) - 1))
    def get(self, agent: int) -> None:
        """The live agent or ``None``."""
        want = self.model.get(agent)
        got = self.call(lambda: self.store.get(AGENTS[agent]))
        assert (got is None) == (want is None), f"get(a{agent}) -> {got}, expected {want}"
        if got is not None and want is not None:
            self._same(got, want)

    @rule(capability=st.booleans())
    def list_agents(self, capability: bool) -> None:
        """Live agents only, by id (only capable ones when filtering by capability)."""
        want = self.model.listed(capability)
        name = CAPABILITY.name if capability else None
        got = self.call(lambda: self.store.list(capability=name))
        ids = [AGENTS.index(info.agent_id) for info in got]
        assert ids == list(want), f"list(capability={name}) -> {ids}, expected {list(want)}"
        for info in got:
            self._same(info, want[AGENTS.index(info.agent_id)])

    @rule()
    def read_events(self) -> None:
        """Every event since the last read: per agent, the model's events in order."""
        page = self.call(lambda: self.store.read_events(after=self.cursor, limit=1000))
        assert page.next_cursor is not None
        self.cursor = page.next_cursor
        got: list[tuple[int, str, float, bool]] = []
        for event in page.items:
            assert event.agent is not None, "an event carries a copy of the agent"
            index = AGENTS.index(event.agent_id)
            got.append((index, event.kind, event.agent.load, event.agent.available))
        want = [(e.agent, e.kind, e.load, e.available) for e in self.model.read_events()]
        for agent in range(len(AGENTS)):
            mine = [g[1:] for g in got if g[0] == agent]
            theirs = [w[1:] for w in want if w[0] == agent]
            assert mine == theirs, f"events of a{agent}: {mine}, expected {theirs}"

    @precondition(_may_advance)
    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        """Move both clocks (without ``clock_control``: sleep, by :data:`REAL_STEP`)."""
        self._advance(seconds)


# ---------------------------------------------------------------------------------------------
# Breakers
# ---------------------------------------------------------------------------------------------


def _moved(transition: BreakerTransition | None) -> tuple[BreakerState, BreakerState] | None:
    return None if transition is None else (transition.from_state, transition.to_state)


class BreakerMachine(_BackendMachine):
    """One breaker name (``window=None``): acquire, outcomes with permits, reset, snapshot."""

    permits = Bundle("permits")
    used_permits = Bundle("used_permits")

    def __init__(self) -> None:
        super().__init__()
        self.store = self.backend.breakers
        self.model = BreakerModel(self.clock, CircuitBreakerConfig())
        #: The model's configuration, with durations as the backend takes them.
        self.config = self.model.config

    @initialize(
        failure_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 2),
        success_threshold=st.integers(1, 2),
        recovery_timeout=st.sampled_from((15.0, 25.0)),
        probe_timeout=st.sampled_from((15.0, 45.0)),
    )
    def configure(
        self,
        failure_threshold: int,
        half_open_max_calls: int,
        success_threshold: int,
        recovery_timeout: float,
        probe_timeout: float,
    ) -> None:
        """Choose the configuration every call of this run passes."""
        self.model.config = CircuitBreakerConfig(
            failure_threshold=failure_threshold,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            recovery_timeout=recovery_timeout,
            probe_timeout=probe_timeout,
        )
        self.config = self.model.config.model_copy(
            update={
                "recovery_timeout": self.d(recovery_timeout),
                "probe_timeout": self.d(probe_timeout),
            }
        )

    def _same(self, snapshot: BreakerSnapshot) -> None:
        model = self.model
        got = (snapshot.state, snapshot.successes, snapshot.permits_in_use)
        want = (model.state, model.successes, len(model.permits))
        assert got == want, f"(state, successes, permits) {got}, expected {want}"
        assert model.failures_ok(snapshot.failures), f"{snapshot.failures} failures in {got}"
        expected = model.retry_after()
        seen = None if snapshot.retry_after is None else snapshot.retry_after / self.scale
        assert (seen is None) == (expected is None), f"retry_after {seen}, expected {expected}"
        if seen is not None and expected is not None:
            low, high = expected - RETRY_AFTER_SLACK, expected + self.retry_after_excess
            assert low < seen <= high, f"retry_after {seen}, expected {expected} (or a bit less)"

    @rule(target=permits)
    def acquire(self) -> MultipleResults[str] | str:
        """May a call proceed? (probe permits bounded by ``half_open_max_calls``)."""
        expected = self.model.acquire()
        config = self.config
        decision = self.call(lambda: self.store.acquire(BREAKER, config))
        got = (decision.allowed, decision.permit is not None, _moved(decision.transition))
        want = (expected.allowed, expected.permit, expected.transition)
        assert got == want, f"acquire: (allowed, permit, transition) {got}, expected {want}"
        if decision.permit is not None:
            self.model.grant(decision.permit)
        self._same(decision.snapshot)
        return _nothing() if decision.permit is None else decision.permit

    def _record(self, success: bool, permit: str | None) -> None:
        config = self.config
        if success:
            expected = self.model.record_success(permit)
            update = self.call(lambda: self.store.record_success(BREAKER, config, permit))
        else:
            expected = self.model.record_failure(permit)
            update = self.call(lambda: self.store.record_failure(BREAKER, config, permit))
        assert _moved(update.transition) == expected, f"success={success}: {update.transition}"
        self._same(update.snapshot)

    @rule(target=used_permits, success=st.booleans(), permit=consumes(permits))
    def probe(self, success: bool, permit: str) -> str:
        """A probe's outcome with a permit not used before (current unless it lapsed)."""
        self._record(success, permit)
        return permit

    @rule(success=st.sampled_from((True, False, False)), permit=st.none() | used_permits)
    def record(self, success: bool, permit: str | None) -> None:
        """A closed-state outcome (no permit), or one quoting a permit used before (ignored)."""
        self._record(success, permit)

    @rule(reset=st.sampled_from((False, False, False, True)))
    def inspect(self, reset: bool) -> None:
        """A snapshot, or (less often) a reset that closes it from any state."""
        if reset:
            expected = self.model.reset()
            update = self.call(lambda: self.store.reset(BREAKER))
            assert _moved(update.transition) == expected, f"reset: {update.transition}"
            self._same(update.snapshot)
        else:
            self.model.snapshot()
            config = self.config
            self._same(self.call(lambda: self.store.snapshot(BREAKER, config)))

    @precondition(_may_advance)
    @rule(seconds=st.sampled_from(STEPS))
    def advance(self, seconds: float) -> None:
        """Move both clocks (without ``clock_control``: sleep, by :data:`REAL_STEP`)."""
        self._advance(seconds)


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------

MACHINES: dict[str, type[_BackendMachine]] = {
    "queue": QueueMachine,
    "registry": RegistryMachine,
    "breakers": BreakerMachine,
}
_BOUND: dict[tuple[type[_BackendMachine], str], type[_BackendMachine]] = {}


def bind(machine: type[M], url: str) -> type[M]:
    """``machine`` bound to the backend ``url`` (a subclass, made once per pair)."""
    key = (machine, url)
    if key not in _BOUND:
        _BOUND[key] = type(machine.__name__, (machine,), {"url": url})
    return cast("type[M]", _BOUND[key])


def machine_settings(base: settings | None = None, *, clock_control: bool = True) -> settings:
    """Settings for a machine: ``base`` (default: the active profile's) with 30 steps.

    A heavy profile (``max_examples >= 1000``) gets 50 steps. No deadline; ``too_slow`` is
    not a failure (a networked backend is slow by nature). Without ``clock_control`` every
    clock step is a real sleep: a tenth of the examples run.
    """
    parent = settings() if base is None else base
    steps = 50 if parent.max_examples >= 1000 else 30
    examples = parent.max_examples if clock_control else max(1, parent.max_examples // 10)
    suppressed = [*parent.suppress_health_check, HealthCheck.too_slow]
    return settings(
        parent,
        max_examples=examples,
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=suppressed,
    )


def controls_clock(url: str) -> bool:
    """Whether the backend at ``url`` declares ``clock_control`` (connects, writes nothing)."""
    with start_blocking_portal("asyncio") as portal:
        backend = connect(url, namespace=f"sm{uuid.uuid4().hex[:16]}")
        try:
            return _controls_clock(backend)
        finally:
            portal.call(backend.aclose)


def run_machine(machine: type[_BackendMachine], url: str, base: settings | None = None) -> None:
    """Run ``machine`` against ``url`` as a test, with :func:`machine_settings` of ``base``."""
    config = machine_settings(base, clock_control=controls_clock(url))
    run_state_machine_as_test(bind(machine, url), settings=config)


class StatefulContract(BackendTestBase):
    """The stateful contract test: one machine per store against the class's ``url``."""

    @pytest.mark.parametrize("store", list(MACHINES))
    def test_stateful_contract(self, store: str, backend_url: str) -> None:
        """Random operation sequences agree with the model (see the module docstring)."""
        run_machine(MACHINES[store], backend_url)
