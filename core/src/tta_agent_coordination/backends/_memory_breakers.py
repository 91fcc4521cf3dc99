"""The memory driver's breaker store: circuit-breaker state shared by every backend of a store.

Every operation is atomic (no ``await`` inside a state change). The configuration travels with
each call, so the store keeps only state: the failure times, the half-open successes, the probe
permits (leases with an end time) and the opened-at and changed-at times.

Decisions recorded here (see also ``docs/decisions``):

* Failures are kept as times. With ``window=None`` they are consecutive failures (a success in
  the closed state forgets them); with ``window=w`` those older than ``w`` seconds drop out
  (a success does not forget them). Reaching ``failure_threshold`` opens the breaker; the
  failures stay visible in snapshots until it closes again.
* A caller refused in the half-open state because every permit is taken gets
  ``retry_after=0`` (retry soon: a probe may finish any moment), as ``CircuitOpenError``
  documents. An open breaker reports the seconds left of ``recovery_timeout``.
* ``snapshot().retry_after`` is ``None`` when a call would be let through now.
* Outcomes reported with a lapsed or unknown permit, and permit-less outcomes while the breaker
  is not closed, are ignored: the snapshot comes back with no transition.
* ``acquire``, ``record_*`` and ``reset`` add the name to the index; ``snapshot`` does not.
"""

from __future__ import annotations

import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from tta_agent_coordination._validation import require_name
from tta_agent_coordination.models import (
    BreakerDecision,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    BreakerUpdate,
    CircuitBreakerConfig,
)

if TYPE_CHECKING:
    from tta_agent_coordination.settings import BackendOptions

    from .memory import MemoryClock

__all__ = ["MemoryBreakerStore"]


def _dt(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


@dataclass
class _Breaker:
    """One breaker's shared state (times on the backend's clock, in seconds)."""

    state: BreakerState = BreakerState.CLOSED
    failures: deque[float] = field(default_factory=deque[float])
    successes: int = 0
    permits: dict[str, float] = field(default_factory=dict[str, float])
    opened_at: float | None = None
    changed_at: float | None = None

    def lapse(self, now: float) -> None:
        """Forget the probe permits whose lease has ended."""
        for permit in [p for p, end in self.permits.items() if end <= now]:
            del self.permits[permit]

    def failure_count(self, config: CircuitBreakerConfig, now: float) -> int:
        if config.window is None:
            return len(self.failures)
        since = now - config.window
        return sum(1 for t in self.failures if t >= since)


class MemoryBreakerStore:
    """In-memory breaker store (the :class:`~tta_agent_coordination.protocols.BreakerStore`).

    Args:
        clock: The backend's clock; every time is read from it.
        options: The backend's options.
    """

    def __init__(self, clock: MemoryClock, options: BackendOptions) -> None:
        self._clock = clock
        self._options = options
        self._breakers: dict[str, _Breaker] = {}

    def clear(self) -> None:
        """Forget every breaker (``drop_namespace``)."""
        self._breakers.clear()

    # -- helpers --------------------------------------------------------------------------

    def _use(self, name: str) -> tuple[_Breaker, float]:
        """The breaker called ``name`` (indexed from now on), with lapsed permits dropped."""
        require_name(name, "breaker name")
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = self._breakers[name] = _Breaker()
        now = self._clock.time()
        breaker.lapse(now)
        return breaker, now

    @staticmethod
    def _retry_after(breaker: _Breaker, config: CircuitBreakerConfig, now: float) -> float | None:
        if breaker.state is BreakerState.OPEN:
            assert breaker.opened_at is not None  # noqa: S101  # set whenever it opens
            left = breaker.opened_at + config.recovery_timeout - now
            return left if left > 0 else None
        if (
            breaker.state is BreakerState.HALF_OPEN
            and len(breaker.permits) >= config.half_open_max_calls
        ):
            return 0.0
        return None

    def _snapshot(
        self, name: str, breaker: _Breaker, config: CircuitBreakerConfig, now: float
    ) -> BreakerSnapshot:
        return BreakerSnapshot(
            name=name,
            state=breaker.state,
            failures=breaker.failure_count(config, now),
            successes=breaker.successes,
            permits_in_use=len(breaker.permits),
            opened_at=_dt(breaker.opened_at),
            changed_at=_dt(breaker.changed_at),
            retry_after=self._retry_after(breaker, config, now),
        )

    @staticmethod
    def _move(name: str, breaker: _Breaker, to: BreakerState, now: float) -> BreakerTransition:
        """Change state (one atomic step) and describe the transition."""
        transition = BreakerTransition(
            name=name, from_state=breaker.state, to_state=to, at=datetime.fromtimestamp(now, UTC)
        )
        breaker.state = to
        breaker.changed_at = now
        breaker.successes = 0
        breaker.permits.clear()
        if to is BreakerState.OPEN:
            breaker.opened_at = now
        elif to is BreakerState.CLOSED:
            breaker.opened_at = None
            breaker.failures.clear()
        return transition

    def _grant(self, breaker: _Breaker, config: CircuitBreakerConfig, now: float) -> str:
        permit = uuid.uuid4().hex
        breaker.permits[permit] = now + config.probe_timeout
        return permit

    # -- the protocol ---------------------------------------------------------------------

    async def acquire(self, name: str, config: CircuitBreakerConfig) -> BreakerDecision:
        """May a call proceed? Moves open to half-open once ``recovery_timeout`` has passed.

        Closed: allowed without a permit. Open: refused with ``retry_after`` until the recovery
        timeout ends; then the first caller moves it to half-open and gets a permit. Half-open:
        a permit (a lease of ``probe_timeout`` seconds) while fewer than
        ``half_open_max_calls`` are outstanding, else refused with ``retry_after=0``.

        Raises:
            ValidationError: An invalid breaker name.
        """
        breaker, now = self._use(name)
        transition: BreakerTransition | None = None
        if breaker.state is BreakerState.CLOSED:
            return BreakerDecision(
                allowed=True, snapshot=self._snapshot(name, breaker, config, now)
            )
        if breaker.state is BreakerState.OPEN:
            if self._retry_after(breaker, config, now) is not None:
                return BreakerDecision(
                    allowed=False, snapshot=self._snapshot(name, breaker, config, now)
                )
            transition = self._move(name, breaker, BreakerState.HALF_OPEN, now)
        if len(breaker.permits) >= config.half_open_max_calls:
            return BreakerDecision(
                allowed=False, snapshot=self._snapshot(name, breaker, config, now)
            )
        permit = self._grant(breaker, config, now)
        return BreakerDecision(
            allowed=True,
            permit=permit,
            snapshot=self._snapshot(name, breaker, config, now),
            transition=transition,
        )

    async def record_success(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a successful call: a probe's (with its permit) or a closed call's (without).

        ``success_threshold`` probe successes close a half-open breaker; a success in the
        closed state forgets consecutive failures (``window=None``).

        Raises:
            ValidationError: An invalid breaker name.
        """
        breaker, now = self._use(name)
        transition: BreakerTransition | None = None
        if breaker.state is BreakerState.CLOSED:
            if permit is None and config.window is None:
                breaker.failures.clear()
        elif breaker.state is BreakerState.HALF_OPEN and permit in breaker.permits:
            del breaker.permits[permit]
            breaker.successes += 1
            if breaker.successes >= config.success_threshold:
                transition = self._move(name, breaker, BreakerState.CLOSED, now)
        return BreakerUpdate(
            snapshot=self._snapshot(name, breaker, config, now), transition=transition
        )

    async def record_failure(
        self, name: str, config: CircuitBreakerConfig, permit: str | None = None
    ) -> BreakerUpdate:
        """Record a failed call: ``failure_threshold`` failures open it, a probe's re-opens it.

        Raises:
            ValidationError: An invalid breaker name.
        """
        breaker, now = self._use(name)
        transition: BreakerTransition | None = None
        if breaker.state is BreakerState.CLOSED:
            if permit is None:
                breaker.failures.append(now)
                if config.window is not None:
                    since = now - config.window
                    while breaker.failures[0] < since:
                        breaker.failures.popleft()
                while len(breaker.failures) > config.failure_threshold:
                    breaker.failures.popleft()
                if len(breaker.failures) >= config.failure_threshold:
                    transition = self._move(name, breaker, BreakerState.OPEN, now)
        elif breaker.state is BreakerState.HALF_OPEN and permit in breaker.permits:
            breaker.failures.append(now)
            transition = self._move(name, breaker, BreakerState.OPEN, now)
        return BreakerUpdate(
            snapshot=self._snapshot(name, breaker, config, now), transition=transition
        )

    async def snapshot(self, name: str, config: CircuitBreakerConfig) -> BreakerSnapshot:
        """The current state; closed with zeros for a name never used (not added to the index).

        Raises:
            ValidationError: An invalid breaker name.
        """
        require_name(name, "breaker name")
        now = self._clock.time()
        breaker = self._breakers.get(name)
        if breaker is None:
            return BreakerSnapshot(name=name)
        breaker.lapse(now)
        return self._snapshot(name, breaker, config, now)

    async def reset(self, name: str) -> BreakerUpdate:
        """Close the breaker from any state and forget its failures.

        Raises:
            ValidationError: An invalid breaker name.
        """
        breaker, now = self._use(name)
        transition: BreakerTransition | None = None
        if breaker.state is not BreakerState.CLOSED:
            transition = self._move(name, breaker, BreakerState.CLOSED, now)
        breaker.failures.clear()
        breaker.successes = 0
        snapshot = BreakerSnapshot(
            name=name, changed_at=_dt(breaker.changed_at), state=BreakerState.CLOSED
        )
        return BreakerUpdate(snapshot=snapshot, transition=transition)

    async def breakers(self) -> list[str]:
        """Every breaker name used in this namespace, sorted."""
        return sorted(self._breakers)
