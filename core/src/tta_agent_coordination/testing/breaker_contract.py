"""The circuit-breaker state contract: what every driver's ``BreakerStore`` promises.

Subclass :class:`BreakerContract` and set ``url`` to run it against a backend::

    class TestAcmeBreakers(BreakerContract):
        url = "acme://localhost"

Tests of time take the ``timeline`` fixture (:class:`~.base.Timeline`): their configurations
go through :func:`timed` (durations by ``timeline.d()``), time passes with
``timeline.advance()`` (the backend's clock with ``clock_control``, scaled real time without),
and ``retry_after`` is read back with ``timeline.seconds()`` and checked against a range 5 s
wide. Recovery and probe timeouts of 10 are checked at least 2 after or 5 before, so order and
counts are asserted, never latency. A refused half-open caller may get ``retry_after`` of 0 or
up to ``probe_timeout``: both are allowed by the contract.
"""

from __future__ import annotations

import uuid

import anyio
import pytest

from tta_agent_coordination.errors import ValidationError
from tta_agent_coordination.models import (
    BreakerDecision,
    BreakerState,
    CircuitBreakerConfig,
)
from tta_agent_coordination.protocols import Backend, BreakerStore

from .base import BackendTestBase, Timeline
from .registry_contract import two_clients

__all__ = ["BreakerContract", "timed"]

CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN

#: Three consecutive failures open it; 10 s to recover; two probes; two successes close it.
CONFIG = CircuitBreakerConfig(
    failure_threshold=3,
    recovery_timeout=10,
    half_open_max_calls=2,
    success_threshold=2,
    probe_timeout=10,
)
#: The same, counting failures in a sliding window of 20 s.
WINDOWED = CONFIG.model_copy(update={"window": 20.0})
#: Float rounding of a scaled ``retry_after`` read back in test seconds.
ROUNDING = 1e-3


def timed(config: CircuitBreakerConfig, timeline: Timeline) -> CircuitBreakerConfig:
    """``config`` with its durations (window, recovery, probe timeout) as the backend takes them."""
    window = None if config.window is None else timeline.d(config.window)
    return config.model_copy(
        update={
            "window": window,
            "recovery_timeout": timeline.d(config.recovery_timeout),
            "probe_timeout": timeline.d(config.probe_timeout),
        }
    )


def retry_after(decision: BreakerDecision, timeline: Timeline) -> float:
    """The decision's ``retry_after`` in test seconds (it must have one)."""
    seen = decision.snapshot.retry_after
    assert seen is not None, decision
    return timeline.seconds(seen)


async def open_breaker(store: BreakerStore, name: str, config: CircuitBreakerConfig) -> None:
    """Record failures until the breaker opens."""
    for _ in range(config.failure_threshold):
        await store.record_failure(name, config)
    assert (await store.snapshot(name, config)).state is OPEN


async def half_open(
    store: BreakerStore, timeline: Timeline, name: str, config: CircuitBreakerConfig
) -> BreakerDecision:
    """Open the breaker, let its (:func:`timed`) recovery timeout pass, take the first permit."""
    await open_breaker(store, name, config)
    await timeline.advance(timeline.seconds(config.recovery_timeout) + 2)
    decision = await store.acquire(name, config)
    assert decision.allowed
    assert decision.permit is not None
    return decision


class BreakerContract(BackendTestBase):
    """The contract of ``BreakerStore``: transitions, windows, half-open leases, the index."""

    @pytest.fixture
    def store(self, backend: Backend) -> BreakerStore:
        """The backend's breaker store."""
        return backend.breakers

    @pytest.fixture
    def name(self) -> str:
        """A breaker name."""
        return f"dep-{uuid.uuid4().hex[:8]}"

    # -- closed ---------------------------------------------------------------------------

    async def test_an_unused_breaker_is_closed_with_zeros(
        self, store: BreakerStore, name: str
    ) -> None:
        """snapshot() of a name never used is closed and empty, and does not index it."""
        snapshot = await store.snapshot(name, CONFIG)
        assert snapshot.name == name
        assert snapshot.state is CLOSED
        assert (snapshot.failures, snapshot.successes, snapshot.permits_in_use) == (0, 0, 0)
        assert snapshot.opened_at is None
        assert name not in await store.breakers()

    async def test_closed_allows_without_a_permit(self, store: BreakerStore, name: str) -> None:
        """A closed breaker lets calls through with no permit and no transition."""
        decision = await store.acquire(name, CONFIG)
        assert decision.allowed
        assert decision.permit is None
        assert decision.transition is None
        assert decision.snapshot.state is CLOSED

    async def test_consecutive_failures_open_it(self, store: BreakerStore, name: str) -> None:
        """failure_threshold failures in a row open it, reported as one transition."""
        first = await store.record_failure(name, CONFIG)
        second = await store.record_failure(name, CONFIG)
        assert (first.transition, second.transition) == (None, None)
        assert second.snapshot.failures == 2
        assert second.snapshot.state is CLOSED
        third = await store.record_failure(name, CONFIG)
        assert third.transition is not None
        assert (third.transition.from_state, third.transition.to_state) == (CLOSED, OPEN)
        assert third.transition.name == name
        assert third.snapshot.state is OPEN
        assert third.snapshot.opened_at is not None
        assert third.snapshot.opened_at == third.transition.at

    async def test_a_success_resets_consecutive_failures(
        self, store: BreakerStore, name: str
    ) -> None:
        """With window=None a success forgets the failures before it."""
        for _ in range(2):
            await store.record_failure(name, CONFIG)
        update = await store.record_success(name, CONFIG)
        assert update.snapshot.failures == 0
        for _ in range(2):
            update = await store.record_failure(name, CONFIG)
        assert update.snapshot.state is CLOSED
        update = await store.record_failure(name, CONFIG)
        assert update.snapshot.state is OPEN

    async def test_a_sliding_window_forgets_old_failures(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """With a window, only failures within the last window seconds count."""
        windowed = timed(WINDOWED, timeline)
        await store.record_failure(name, windowed)
        await timeline.advance(12)
        await store.record_failure(name, windowed)
        await timeline.advance(10)  # the first is 2 s out of the window, the second 10 s in
        update = await store.record_failure(name, windowed)
        assert update.snapshot.state is CLOSED
        assert update.snapshot.failures == 2
        update = await store.record_failure(name, windowed)
        assert update.snapshot.state is OPEN
        assert update.transition is not None

    async def test_a_success_does_not_reset_a_window(self, store: BreakerStore, name: str) -> None:
        """With a window, successes in between do not forget the failures."""
        await store.record_failure(name, WINDOWED)
        await store.record_success(name, WINDOWED)
        await store.record_failure(name, WINDOWED)
        await store.record_success(name, WINDOWED)
        update = await store.record_failure(name, WINDOWED)
        assert update.snapshot.state is OPEN

    async def test_window_failures_age_out_of_snapshots(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """The snapshot counts only the failures still within the window."""
        windowed = timed(WINDOWED, timeline)
        await store.record_failure(name, windowed)
        await store.record_failure(name, windowed)
        assert (await store.snapshot(name, windowed)).failures == 2
        await timeline.advance(22)
        assert (await store.snapshot(name, windowed)).failures == 0

    # -- open -----------------------------------------------------------------------------

    async def test_open_refuses_with_retry_after(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """An open breaker refuses calls and says how long until a probe is let through."""
        config = timed(CONFIG, timeline)
        await open_breaker(store, name, config)
        decision = await store.acquire(name, config)
        assert not decision.allowed
        assert decision.permit is None
        assert decision.snapshot.state is OPEN
        assert 5 < retry_after(decision, timeline) <= 10 + ROUNDING
        await timeline.advance(4)
        decision = await store.acquire(name, config)
        assert not decision.allowed
        assert 1 < retry_after(decision, timeline) <= 6 + ROUNDING

    async def test_after_recovery_the_first_caller_half_opens_it(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """After recovery_timeout the first acquire moves it to half-open and gets a permit."""
        config = timed(CONFIG, timeline)
        await open_breaker(store, name, config)
        await timeline.advance(12)
        assert (await store.snapshot(name, config)).state is OPEN
        decision = await store.acquire(name, config)
        assert decision.allowed
        assert decision.permit is not None
        assert decision.transition is not None
        assert (decision.transition.from_state, decision.transition.to_state) == (OPEN, HALF_OPEN)
        assert decision.snapshot.state is HALF_OPEN
        assert decision.snapshot.permits_in_use == 1
        second = await store.acquire(name, config)
        assert second.allowed
        assert second.transition is None
        assert second.permit not in (None, decision.permit)

    async def test_outcomes_without_a_permit_are_ignored_while_open(
        self, store: BreakerStore, name: str
    ) -> None:
        """A permit-less success does not close an open breaker, nor a failure re-open it."""
        await open_breaker(store, name, CONFIG)
        before = await store.snapshot(name, CONFIG)
        success = await store.record_success(name, CONFIG)
        failure = await store.record_failure(name, CONFIG)
        assert (success.transition, failure.transition) == (None, None)
        assert failure.snapshot.state is OPEN
        assert failure.snapshot.opened_at == before.opened_at

    # -- half-open ------------------------------------------------------------------------

    async def test_half_open_lets_at_most_max_calls_through(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """At most half_open_max_calls permits are out; others are refused with retry_after."""
        config = timed(CONFIG, timeline)
        await half_open(store, timeline, name, config)
        second = await store.acquire(name, config)
        assert second.allowed
        third = await store.acquire(name, config)
        assert not third.allowed
        assert third.permit is None
        assert third.snapshot.state is HALF_OPEN
        assert third.snapshot.permits_in_use == 2
        assert 0 <= retry_after(third, timeline) <= CONFIG.probe_timeout + ROUNDING

    async def test_probe_successes_close_it(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """success_threshold probe successes close it and forget the failures."""
        config = timed(CONFIG, timeline)
        first = await half_open(store, timeline, name, config)
        second = await store.acquire(name, config)
        update = await store.record_success(name, config, first.permit)
        assert update.transition is None
        assert update.snapshot.state is HALF_OPEN
        assert update.snapshot.successes == 1
        update = await store.record_success(name, config, second.permit)
        assert update.transition is not None
        assert (update.transition.from_state, update.transition.to_state) == (HALF_OPEN, CLOSED)
        assert update.snapshot.state is CLOSED
        assert update.snapshot.failures == 0
        decision = await store.acquire(name, config)
        assert decision.allowed
        assert decision.permit is None

    async def test_a_probe_failure_re_opens_it(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """Any probe failure re-opens it with a new opened_at; the recovery timeout restarts."""
        config = timed(CONFIG, timeline)
        first = await half_open(store, timeline, name, config)
        opened_before = (await store.snapshot(name, config)).opened_at
        second = await store.acquire(name, config)
        await store.record_success(name, config, second.permit)
        update = await store.record_failure(name, config, first.permit)
        assert update.transition is not None
        assert (update.transition.from_state, update.transition.to_state) == (HALF_OPEN, OPEN)
        assert update.snapshot.state is OPEN
        assert update.snapshot.opened_at is not None
        assert opened_before is not None
        assert update.snapshot.opened_at > opened_before
        assert update.snapshot.opened_at == update.transition.at
        refused = await store.acquire(name, config)
        assert not refused.allowed
        assert retry_after(refused, timeline) > 5

    async def test_lapsed_permits_free_their_slot_and_are_ignored(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """A permit lapses after probe_timeout: its slot frees and its outcome is ignored."""
        config = timed(CONFIG, timeline)
        first = await half_open(store, timeline, name, config)
        second = await store.acquire(name, config)
        assert not (await store.acquire(name, config)).allowed
        await timeline.advance(CONFIG.probe_timeout + 2)
        assert (await store.snapshot(name, config)).permits_in_use == 0
        third = await store.acquire(name, config)
        assert third.allowed
        assert third.permit is not None
        for permit in (first.permit, second.permit):
            success = await store.record_success(name, config, permit)
            assert success.transition is None
            assert success.snapshot.successes == 0
            failure = await store.record_failure(name, config, permit)
            assert failure.transition is None
            assert failure.snapshot.state is HALF_OPEN

    async def test_unknown_and_missing_permits_are_ignored_half_open(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """Half-open, outcomes with an unknown permit or none change nothing."""
        config = timed(CONFIG, timeline)
        await half_open(store, timeline, name, config)
        for permit in (None, "not-a-permit", uuid.uuid4().hex):
            success = await store.record_success(name, config, permit)
            failure = await store.record_failure(name, config, permit)
            assert (success.transition, failure.transition) == (None, None)
            assert failure.snapshot.state is HALF_OPEN
            assert failure.snapshot.successes == 0
            assert failure.snapshot.permits_in_use == 1

    async def test_a_permit_of_an_earlier_half_open_period_is_ignored(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """Permits do not survive a re-open: an old permit's success is ignored later."""
        config = timed(CONFIG.model_copy(update={"probe_timeout": 60.0}), timeline)
        first = await half_open(store, timeline, name, config)
        second = await store.acquire(name, config)
        await store.record_failure(name, config, second.permit)
        await timeline.advance(CONFIG.recovery_timeout + 2)  # first's lease has not lapsed
        assert (await store.acquire(name, config)).allowed
        update = await store.record_success(name, config, first.permit)
        assert update.snapshot.successes == 0
        assert update.snapshot.state is HALF_OPEN

    async def test_a_late_probe_outcome_after_closing_is_ignored(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """Once closed, a permit from the half-open period no longer counts as a failure."""
        config = CONFIG.model_copy(update={"success_threshold": 1, "failure_threshold": 1})
        config = timed(config, timeline)
        first = await half_open(store, timeline, name, config)
        second = await store.acquire(name, config)
        await store.record_success(name, config, first.permit)
        update = await store.record_failure(name, config, second.permit)
        assert update.transition is None
        assert update.snapshot.state is CLOSED

    # -- reset and the index --------------------------------------------------------------

    async def test_reset_closes_from_any_state(
        self, store: BreakerStore, timeline: Timeline, name: str
    ) -> None:
        """reset() closes an open or half-open breaker (a transition) and a closed one (none)."""
        config = timed(CONFIG, timeline)
        await store.record_failure(name, config)
        update = await store.reset(name)
        assert update.transition is None
        assert update.snapshot.state is CLOSED
        assert (await store.snapshot(name, config)).failures == 0
        await open_breaker(store, name, config)
        update = await store.reset(name)
        assert update.transition is not None
        assert (update.transition.from_state, update.transition.to_state) == (OPEN, CLOSED)
        assert (await store.acquire(name, config)).allowed
        await half_open(store, timeline, name, config)
        update = await store.reset(name)
        assert update.transition is not None
        assert update.transition.from_state is HALF_OPEN
        snapshot = await store.snapshot(name, config)
        assert (snapshot.state, snapshot.failures, snapshot.permits_in_use) == (CLOSED, 0, 0)

    async def test_breakers_lists_every_name_used_sorted(self, store: BreakerStore) -> None:
        """breakers() lists names that were acquired, recorded or reset, sorted."""
        await store.acquire("b-acquired", CONFIG)
        await store.record_failure("c-failed", CONFIG)
        await store.record_success("a-succeeded", CONFIG)
        await store.reset("d-reset")
        await store.snapshot("e-only-looked-at", CONFIG)
        assert await store.breakers() == ["a-succeeded", "b-acquired", "c-failed", "d-reset"]

    @pytest.mark.parametrize("bad", ["", "has space", "a:b", "x" * 200, "new\nline", "{tag}"])
    async def test_invalid_names_are_rejected(self, store: BreakerStore, bad: str) -> None:
        """Every operation rejects a name that could not be a storage key part."""
        with pytest.raises(ValidationError):
            await store.acquire(bad, CONFIG)
        with pytest.raises(ValidationError):
            await store.record_success(bad, CONFIG)
        with pytest.raises(ValidationError):
            await store.record_failure(bad, CONFIG)
        with pytest.raises(ValidationError):
            await store.snapshot(bad, CONFIG)
        with pytest.raises(ValidationError):
            await store.reset(bad)
        assert await store.breakers() == []

    # -- two clients ----------------------------------------------------------------------

    async def test_two_clients_agree_on_the_state(self, name: str) -> None:
        """Failures recorded through two clients add up; both see the breaker open."""
        async with two_clients(self.target_url) as (first, second):
            await first.breakers.record_failure(name, CONFIG)
            await second.breakers.record_failure(name, CONFIG)
            update = await first.breakers.record_failure(name, CONFIG)
            assert update.transition is not None
            assert (await second.breakers.snapshot(name, CONFIG)).state is OPEN
            assert not (await second.breakers.acquire(name, CONFIG)).allowed
            assert await second.breakers.breakers() == [name]

    async def test_half_open_permits_are_shared_by_two_clients(self, name: str) -> None:
        """Many concurrent callers through two clients get at most half_open_max_calls permits."""
        async with two_clients(self.target_url) as (first, second):
            timeline = self.timeline_for(first)
            config = timed(CONFIG, timeline)
            await open_breaker(first.breakers, name, config)
            await timeline.advance(CONFIG.recovery_timeout + 2)
            decisions: list[BreakerDecision] = []

            async def caller(store: BreakerStore) -> None:
                decisions.append(await store.acquire(name, config))

            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(caller, first.breakers)
                    tg.start_soon(caller, second.breakers)
            allowed = [d for d in decisions if d.allowed]
            assert len(allowed) == CONFIG.half_open_max_calls
            assert len({d.permit for d in allowed}) == CONFIG.half_open_max_calls
            assert sum(d.transition is not None for d in decisions) == 1
            closing = [
                await first.breakers.record_success(name, config, allowed[0].permit),
                await second.breakers.record_success(name, config, allowed[1].permit),
            ]
            assert [u.transition is not None for u in closing] == [False, True]
            assert (await first.breakers.snapshot(name, config)).state is CLOSED
