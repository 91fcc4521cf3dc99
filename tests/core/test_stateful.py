"""The stateful contract test against the memory driver, and proof that it has teeth.

The machines of :mod:`tta_agent_coordination.testing.stateful` must pass on the memory driver
(system and manual clock, and with ``clock_control`` hidden: then in scaled real time), and must
fail on deliberately broken stores, served under test schemes through the plugin hook.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import ClassVar, Self

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from tta_agent_coordination import BackendOptions
from tta_agent_coordination.backends._memory_breakers import MemoryBreakerStore
from tta_agent_coordination.backends._memory_queue import MemoryQueueStore
from tta_agent_coordination.backends._memory_registry import MemoryRegistryStore
from tta_agent_coordination.backends.memory import MemoryBackend, MemoryClock
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.models import (
    AgentId,
    AgentMessage,
    BreakerDecision,
    BreakerState,
    CircuitBreakerConfig,
)
from tta_agent_coordination.plugins import plugin_registry
from tta_agent_coordination.testing.stateful import (
    LAG_LIMIT,
    REAL_STEP,
    REAL_STEPS,
    STATEFUL_SCALE,
    BreakerMachine,
    QueueMachine,
    RegistryMachine,
    StatefulContract,
    _may_advance,  # pyright: ignore[reportPrivateUsage]
    bind,
    controls_clock,
    machine_settings,
    run_machine,
)

# -- deliberately broken stores -------------------------------------------------------------


class PriorityBlindQueue(MemoryQueueStore):
    """Ignores the message's priority (every entry is stored as NORMAL)."""

    async def enqueue(
        self,
        message: AgentMessage,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        flat = message.model_copy(update={"priority": 5})
        return await super().enqueue(
            flat, delay=delay, dedup_key=dedup_key, entry_id=entry_id, max_attempts=max_attempts
        )


class ReleaseCountsQueue(MemoryQueueStore):
    """Counts a release as an attempt (a release that is really a nack)."""

    async def release(self, receipt: str) -> bool:
        return await self.nack(receipt, delay=0.0)


class ForgivingRegistry(MemoryRegistryStore):
    """Reports every deregistration as done, even with a stale token."""

    async def deregister(self, agent_id: AgentId, token: str) -> bool:
        await super().deregister(agent_id, token)
        return True


class FloodingBreakers(MemoryBreakerStore):
    """Lets every half-open caller through, beyond ``half_open_max_calls``."""

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        decision = await super().acquire(name, config)
        if not decision.allowed and decision.snapshot.state is BreakerState.HALF_OPEN:
            return BreakerDecision(
                allowed=True, permit=uuid.uuid4().hex, snapshot=decision.snapshot
            )
        return decision


class PatchedBackend:
    """A memory backend with some stores swapped for broken ones, or its clock hidden."""

    def __init__(
        self,
        options: BackendOptions,
        *,
        queue: type[MemoryQueueStore] = MemoryQueueStore,
        registry: type[MemoryRegistryStore] = MemoryRegistryStore,
        breakers: type[MemoryBreakerStore] = MemoryBreakerStore,
        clock_control: bool = True,
    ) -> None:
        self._inner = MemoryBackend(options)
        clock: MemoryClock = self._inner.clock
        self._queue = queue(clock, options)
        self._registry = registry(clock, options)
        self._breakers = breakers(clock, options)
        self._clock_control = clock_control

    @property
    def url(self) -> str:
        return self._inner.url

    @property
    def options(self) -> BackendOptions:
        return self._inner.options

    @property
    def capabilities(self) -> frozenset[str]:
        if self._clock_control:
            return self._inner.capabilities
        return self._inner.capabilities - {"clock_control"}

    @property
    def queue(self) -> MemoryQueueStore:
        return self._queue

    @property
    def registry(self) -> MemoryRegistryStore:
        return self._registry

    @property
    def breakers(self) -> MemoryBreakerStore:
        return self._breakers

    @property
    def clock(self) -> MemoryClock | None:
        return self._inner.clock if self._clock_control else None

    async def drop_namespace(self) -> None:
        self._queue.clear()
        self._registry.clear()
        self._breakers.clear()

    async def aclose(self) -> None:
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


def no_clock(url: str, options: BackendOptions) -> PatchedBackend:
    return PatchedBackend(options, clock_control=False)


def priority_blind(url: str, options: BackendOptions) -> PatchedBackend:
    return PatchedBackend(options, queue=PriorityBlindQueue)


def release_counts(url: str, options: BackendOptions) -> PatchedBackend:
    return PatchedBackend(options, queue=ReleaseCountsQueue)


def forgiving_registry(url: str, options: BackendOptions) -> PatchedBackend:
    return PatchedBackend(options, registry=ForgivingRegistry)


def flooding_breakers(url: str, options: BackendOptions) -> PatchedBackend:
    return PatchedBackend(options, breakers=FloodingBreakers)


SCHEMES = {
    "smnoclock": f"{__name__}:no_clock",
    "smprio": f"{__name__}:priority_blind",
    "smrelease": f"{__name__}:release_counts",
    "smregistry": f"{__name__}:forgiving_registry",
    "smflood": f"{__name__}:flooding_breakers",
}


class TestSchemes:
    @hookimpl
    def tta_backend_schemes(self) -> dict[str, str]:
        return SCHEMES


@pytest.fixture(autouse=True)
def test_schemes() -> Iterator[None]:
    name = f"stateful-test-schemes-{uuid.uuid4().hex}"
    plugin_registry().register(TestSchemes(), name=name)
    try:
        yield
    finally:
        plugin_registry().unregister(name)


# -- the machines pass on the memory driver ---------------------------------------------------


class TestStatefulMemory(StatefulContract):
    url: ClassVar[str] = "memory://"


class TestStatefulManualClock(StatefulContract):
    url: ClassVar[str] = "memory://?clock=manual"


class TestStatefulWithoutClockControl(StatefulContract):
    """Without ``clock_control`` the time rules run in scaled real time (real sleeps)."""

    url: ClassVar[str] = "smnoclock://"


# -- and fail on broken stores ------------------------------------------------------------------

BROKEN = [
    pytest.param(QueueMachine, "smprio://", "must (come|be delivered) before", id="priority"),
    pytest.param(QueueMachine, "smrelease://", "attempt", id="release-counts"),
    pytest.param(RegistryMachine, "smregistry://", "deregister", id="stale-deregister"),
    pytest.param(BreakerMachine, "smflood://", "acquire", id="half-open-flood"),
]


@pytest.mark.parametrize(("machine", "url", "complaint"), BROKEN)
def test_the_machines_catch_broken_stores(
    machine: type[QueueMachine | RegistryMachine | BreakerMachine], url: str, complaint: str
) -> None:
    # Finding the bug is fast; shrinking it (done when the sequences were first found, see
    # the commit message) is slow and proves nothing more here. Even derandomised, the examples
    # depend on the modules loaded before (hypothesis draws constants found in their source):
    # release-counts was found within 34 examples alone, but took 297 in one ordering of the
    # suite. The limit leaves room for that.
    base = settings(
        derandomize=True,
        max_examples=1000,
        database=None,
        report_multiple_bugs=False,
        phases=[Phase.explicit, Phase.generate],
    )
    with pytest.raises(AssertionError, match=complaint):
        run_machine(machine, url, base)


def test_bind_makes_one_class_per_machine_and_url() -> None:
    bound = bind(QueueMachine, "memory://")
    assert bound is bind(QueueMachine, "memory://")
    assert bound.url == "memory://"
    assert issubclass(bound, QueueMachine)
    assert bind(QueueMachine, "memory://?clock=manual") is not bound


def test_machine_settings_follow_the_profile() -> None:
    assert machine_settings(settings(max_examples=10)).stateful_step_count == 30
    heavy = machine_settings(settings(max_examples=2000))
    assert heavy.stateful_step_count == 50
    assert heavy.deadline is None
    assert heavy.max_examples == 2000


def test_without_clock_control_a_tenth_of_the_examples_run() -> None:
    real = machine_settings(settings(max_examples=30), clock_control=False)
    assert (real.max_examples, real.stateful_step_count) == (3, 30)
    assert machine_settings(settings(max_examples=5), clock_control=False).max_examples == 1


def test_controls_clock_reads_the_capability() -> None:
    assert controls_clock("memory://")
    assert not controls_clock("smnoclock://")


def test_scripted_scaled_real_time() -> None:
    machine = bind(QueueMachine, "smnoclock://")()
    try:
        assert (machine.clock_control, machine.scale) == (False, STATEFUL_SCALE)
        assert not _may_advance(machine)  # no call yet since the start
        expiring = enqueue(machine, ttl=15.0)  # and stats: two calls
        assert not _may_advance(machine)
        checked(machine)
        assert _may_advance(machine)
        machine.advance(seconds=30.0)  # without clock_control every step is REAL_STEP
        assert machine.clock.now == REAL_STEP
        assert not _may_advance(machine)
        checked(machine)
        assert expiring not in machine.model.dead
        machine.advance(seconds=30.0)
        checked(machine)  # 20 s: the backend dead-lettered it too
        assert expiring in machine.model.dead
        for _ in range(REAL_STEPS - 2):
            machine.advance(seconds=10.0)
        checked(machine)
        assert machine.lag() < LAG_LIMIT
        assert not _may_advance(machine)  # the example's steps are spent
        machine.origin -= LAG_LIMIT * machine.scale  # as if a call took that long
        noted: list[bool] = []

        @given(st.none())
        @settings(max_examples=1, database=None)
        def in_a_test(_: None) -> None:  # (hypothesis notes only inside a test)
            machine.stats_agree()
            noted.append(machine.lag_noted)
            machine.stats_agree()  # noted once

        in_a_test()
        assert noted == [True]
    finally:
        machine.teardown()


# -- scripted runs: rare paths, step by step ----------------------------------------------------


def checked(machine: QueueMachine) -> None:
    machine.stats_agree()
    machine.one_current_receipt_per_entry()


def enqueue(machine: QueueMachine, **changes: object) -> str:
    """Enqueue a new entry through the machine's rule (which checks it); its id."""
    args: dict[str, object] = {
        "priority": 5,
        "delay": None,
        "ttl": None,
        "dedup_key": None,
        "entry_id": None,
        "max_attempts": None,
    }
    args.update(changes)
    got = machine.enqueue(**args)  # pyright: ignore[reportArgumentType]
    checked(machine)
    assert isinstance(got, str)
    return got


def reserve(machine: QueueMachine, max_messages: int = 1) -> list[str]:
    got = list(machine.reserve(max_messages=max_messages, visibility=25.0))
    checked(machine)
    return got


def settle(machine: QueueMachine, receipt: str, action: str) -> None:
    machine.settle(receipt=receipt, action=action, delay=0.0, visibility=25.0)
    checked(machine)


def test_scripted_replay_loses_a_dedup_key_taken_meanwhile() -> None:
    machine = bind(QueueMachine, "memory://?clock=manual")()
    try:
        first = enqueue(machine, dedup_key="k0", max_attempts=1)
        (receipt,) = reserve(machine)
        settle(machine, receipt, "nack")  # at max_attempts: dead
        checked(machine)
        second = enqueue(machine, dedup_key="k0")
        assert second != first
        machine.replay(entry_id=first)
        checked(machine)
        assert machine.model.entries[first].dedup_key is None
        count = len(machine.model.known)
        machine.enqueue(  # the rule asserts that the backend answers with the holder, second
            priority=5, delay=None, ttl=None, dedup_key="k0", entry_id=None, max_attempts=None
        )
        checked(machine)
        assert len(machine.model.known) == count
        assert machine.model.holder("k0") is machine.model.entries[second]
        machine.list_dead_letters(entry_id=first)
    finally:
        machine.teardown()


def test_scripted_ttl_passing_during_a_reservation() -> None:
    machine = bind(QueueMachine, "memory://?clock=manual")()
    try:
        released = enqueue(machine, ttl=15.0)
        nacked = enqueue(machine, ttl=15.0)
        acked = enqueue(machine, ttl=15.0)
        receipts = reserve(machine, max_messages=3)
        machine.advance(seconds=20.0)
        checked(machine)
        settle(machine, receipts[0], "release")
        settle(machine, receipts[1], "nack")
        settle(machine, receipts[2], "ack")  # a ttl passing does not take it from its consumer
        checked(machine)
        dead = machine.model.dead
        assert (dead[released].attempts, dead[nacked].attempts) == (0, 1)
        assert acked not in dead
        machine.list_dead_letters(entry_id=released)
        machine.list_dead_letters(entry_id=acked)
        for receipt, action in zip(receipts, ("handler_error", "extend", "ack"), strict=True):
            settle(machine, receipt, action)  # stale, stale, and an ack repeated
    finally:
        machine.teardown()


def test_scripted_dead_letters_span_pages() -> None:
    machine = bind(QueueMachine, "memory://")()
    try:
        ids = [enqueue(machine, ttl=15.0, priority=p) for p in (1, 5, 9)]
        machine.advance(seconds=20.0)
        checked(machine)
        assert set(machine.model.dead) == set(ids)
        machine.list_dead_letters(entry_id=ids[0])
        machine.replay(entry_id=None)
        checked(machine)
        machine.purge(entry_id=None)
    finally:
        machine.teardown()


def test_scripted_breaker_probes_close_and_reopen() -> None:
    machine = bind(BreakerMachine, "memory://?clock=manual")()
    try:
        machine.configure(
            failure_threshold=1,
            half_open_max_calls=2,
            success_threshold=2,
            recovery_timeout=15.0,
            probe_timeout=45.0,
        )
        machine.record(success=False, permit=None)  # opens
        machine.advance(seconds=20.0)
        first = machine.acquire()
        second = machine.acquire()
        assert isinstance(first, str)
        assert isinstance(second, str)
        machine.acquire()  # refused: both permits out
        machine.probe(success=True, permit=first)  # one success of two
        machine.probe(success=True, permit=second)  # closes
        machine.record(success=True, permit=first)  # an earlier period's permit: ignored
        machine.record(success=False, permit=None)  # opens again
        machine.advance(seconds=20.0)
        probe = machine.acquire()
        assert isinstance(probe, str)
        machine.probe(success=False, permit=probe)  # re-opens
        machine.inspect(reset=False)
        machine.inspect(reset=True)
        assert machine.model.state is BreakerState.CLOSED
    finally:
        machine.teardown()
