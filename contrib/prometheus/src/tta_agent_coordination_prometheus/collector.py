"""``CoordinationCollector``: queue depths and breaker states, served at scrape time.

The stores are async and live on an event loop; Prometheus scrapes are synchronous and come from
the HTTP server's thread. So a scrape never touches the backend: a refresher task (owned by
``async with collector.running():``) reads the queue index and the breakers at most every
``interval`` seconds into an immutable snapshot, and :meth:`CoordinationCollector.collect`
serves the latest snapshot with its age. The cost is bounded on both sides:

* a refresh reads at most ``max_queues`` queues (``stats_all`` pages, from the index, never a
  keyspace scan) and ``max_breakers`` breakers (one ``snapshot`` each), under ``timeout``;
  ``tta_collector_truncated`` says when a cap cut the listing;
* a scrape costs one pass over the snapshot (its series are bounded by the caps, and by the
  agent types without ``instance_labels``), whatever the number of scrapers.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from collections.abc import AsyncGenerator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Self

import anyio
from anyio.abc import TaskStatus
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from tta_agent_coordination import BreakerSnapshot, BreakerState, CircuitBreakerConfig, QueueStats
from tta_agent_coordination.errors import ValidationError
from tta_agent_coordination.metrics import QUEUE_DEPTH
from tta_agent_coordination.protocols import Backend

from .sink import queue_label

__all__ = ["QUEUE_STATES", "CollectorSnapshot", "CoordinationCollector"]

logger = logging.getLogger(__name__)

#: The ``state`` label values of ``tta_queue_depth``.
QUEUE_STATES = ("ready", "delayed", "reserved", "dead")

_PAGE = 500  # queues per stats_all call (drivers accept up to 1000)


@dataclass(frozen=True)
class CollectorSnapshot:
    """What one refresh read (immutable: the scrape thread reads it without a lock)."""

    taken_at: float  # time.monotonic() when the refresh finished
    duration: float
    queues: tuple[QueueStats, ...] = ()
    queues_truncated: bool = False
    breakers: tuple[BreakerSnapshot, ...] = ()
    breakers_truncated: bool = False


@dataclass
class _Status:
    """Refresh bookkeeping; each field is replaced whole (one store), so scrapes read it safely."""

    snapshot: CollectorSnapshot | None = None
    up: bool = False
    refreshes: int = 0
    errors: int = 0
    last_error: str | None = field(default=None)


def _positive(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"{name} must be a finite number of seconds, not {value!r}"
        raise ValidationError(msg)
    if value <= 0:
        msg = f"{name} must be positive, not {value!r}"
        raise ValidationError(msg)
    return float(value)


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"{name} must be an int, not {value!r}"
        raise ValidationError(msg)
    if value < 0:
        msg = f"{name} must be at least 0, not {value}"
        raise ValidationError(msg)
    return value


class CoordinationCollector:
    """A prometheus_client collector of queue depths and breaker states.

    Register it (``registry.register(collector)``) and run its refresher::

        collector = CoordinationCollector(backend)
        REGISTRY.register(collector)
        async with collector.running():
            ...  # scrapes see a snapshot at most `interval` seconds old

    Args:
        backend: The connected backend to read.
        interval: Seconds between refreshes.
        timeout: Seconds one refresh may take before it counts as failed.
        max_queues: Queues read per refresh, at most (0: none).
        max_breakers: Breakers read per refresh, at most (0: none).
        instance_labels: Keep per-instance queue names in the ``queue`` label (otherwise a
            type's instance queues are summed under ``type:*``, as the sink does).
        breaker_config: The config passed to ``BreakerStore.snapshot`` (its
            ``recovery_timeout`` decides a breaker's ``retry_after``); the default config
            when ``None``.

    Raises:
        ValidationError: A bad argument.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        interval: float = 15.0,
        timeout: float = 10.0,
        max_queues: int = 1000,
        max_breakers: int = 100,
        instance_labels: bool = False,
        breaker_config: CircuitBreakerConfig | None = None,
    ) -> None:
        self._backend = backend
        self._interval = _positive(interval, "interval")
        self._timeout = _positive(timeout, "timeout")
        self._max_queues = _count(max_queues, "max_queues")
        self._max_breakers = _count(max_breakers, "max_breakers")
        self._instance_labels = bool(instance_labels)
        self._breaker_config = breaker_config or CircuitBreakerConfig()
        self._status = _Status()

    @property
    def snapshot(self) -> CollectorSnapshot | None:
        """The latest successful refresh (``None`` before the first one)."""
        return self._status.snapshot

    @property
    def refreshes(self) -> int:
        """Refreshes that worked so far."""
        return self._status.refreshes

    @property
    def errors(self) -> int:
        """Refreshes that failed so far."""
        return self._status.errors

    @property
    def last_error(self) -> str | None:
        """Why the last refresh failed (``None`` when it worked)."""
        return self._status.last_error

    # -- reading the backend (on the event loop) -------------------------------------------------

    async def refresh(self) -> CollectorSnapshot:
        """Read the queues and breakers now and keep the result for scrapes.

        Raises:
            TimeoutError: The read took longer than ``timeout`` (the previous snapshot stays).
            CoordinationError: The backend failed (the previous snapshot stays).
        """
        started = time.monotonic()
        try:
            with anyio.fail_after(self._timeout):
                queues, queues_truncated = await self._read_queues()
                breakers, breakers_truncated = await self._read_breakers()
        except Exception as exc:
            status = self._status
            self._status = _Status(
                status.snapshot,
                up=False,
                refreshes=status.refreshes,
                errors=status.errors + 1,
                last_error=repr(exc),
            )
            raise
        finished = time.monotonic()
        snapshot = CollectorSnapshot(
            taken_at=finished,
            duration=finished - started,
            queues=queues,
            queues_truncated=queues_truncated,
            breakers=breakers,
            breakers_truncated=breakers_truncated,
        )
        self._status = _Status(
            snapshot,
            up=True,
            refreshes=self._status.refreshes + 1,
            errors=self._status.errors,
        )
        return snapshot

    async def _read_queues(self) -> tuple[tuple[QueueStats, ...], bool]:
        found: list[QueueStats] = []
        cursor: str | None = None
        if self._max_queues == 0:
            return (), False
        while len(found) < self._max_queues:
            page = await self._backend.queue.stats_all(
                limit=min(_PAGE, self._max_queues - len(found)), cursor=cursor
            )
            found.extend(page.items)
            cursor = page.next_cursor
            if cursor is None:
                return tuple(found), False
        return tuple(found), True

    async def _read_breakers(self) -> tuple[tuple[BreakerSnapshot, ...], bool]:
        if self._max_breakers == 0:
            return (), False
        names = await self._backend.breakers.breakers()
        store, config = self._backend.breakers, self._breaker_config
        snapshots = [await store.snapshot(name, config) for name in names[: self._max_breakers]]
        return tuple(snapshots), len(names) > self._max_breakers

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Refresh every ``interval`` seconds until cancelled (failures are logged and counted).

        With ``TaskGroup.start`` it reports started after the first refresh (done or failed).
        """
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # noqa: BLE001  # a failed read must not end the refresher
                logger.warning(
                    "prometheus collector: refreshing queue and breaker stats failed: %r", exc
                )
            task_status.started()
            task_status = anyio.TASK_STATUS_IGNORED
            await anyio.sleep(self._interval)

    @asynccontextmanager
    async def running(self) -> AsyncGenerator[Self]:
        """Run the refresher in a task group for the ``async with`` block (first refresh done).

        An exception from the block propagates as itself, not in an ``ExceptionGroup``.
        """
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            await tg.start(self.run)
            try:
                yield self
            except BaseException as exc:  # noqa: BLE001  # re-raised below, unwrapped
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure

    # -- serving a scrape (any thread) ------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """The metric families this collector exposes (for the registry's clash check)."""
        return list(self._families(None))

    def collect(self) -> Iterator[Metric]:
        """The latest snapshot as metric families (no backend I/O, no waiting)."""
        yield from self._families(self._status)

    def _families(self, status: _Status | None) -> Iterator[Metric]:
        """The families, with samples from ``status`` (none for ``describe``)."""
        snapshot = None if status is None else status.snapshot
        up = GaugeMetricFamily(
            "tta_collector_up",
            "1 if the collector's last refresh of queue and breaker stats worked.",
        )
        refreshes = CounterMetricFamily(
            "tta_collector_refreshes", "Refreshes of queue and breaker stats that worked."
        )
        errors = CounterMetricFamily(
            "tta_collector_refresh_errors", "Refreshes of queue and breaker stats that failed."
        )
        if status is not None:
            up.add_metric([], 1.0 if status.up else 0.0)
            refreshes.add_metric([], float(status.refreshes))
            errors.add_metric([], float(status.errors))
        yield from (up, refreshes, errors)
        age = GaugeMetricFamily(
            "tta_collector_snapshot_age_seconds",
            "Seconds since the queue and breaker stats served were read.",
        )
        duration = GaugeMetricFamily(
            "tta_collector_refresh_duration_seconds", "How long the last successful refresh took."
        )
        truncated = GaugeMetricFamily(
            "tta_collector_truncated",
            "1 if a cap (max_queues, max_breakers) left some out of the last refresh.",
            labels=["what"],
        )
        queues = GaugeMetricFamily("tta_collector_queues", "Queues read in the last refresh.")
        if snapshot is not None:
            age.add_metric([], max(0.0, time.monotonic() - snapshot.taken_at))
            duration.add_metric([], snapshot.duration)
            truncated.add_metric(["queues"], float(snapshot.queues_truncated))
            truncated.add_metric(["breakers"], float(snapshot.breakers_truncated))
            queues.add_metric([], float(len(snapshot.queues)))
        yield from (age, duration, truncated, queues)
        yield self._depths(snapshot)
        yield from self._breakers(snapshot)

    def _depths(self, snapshot: CollectorSnapshot | None) -> Metric:
        depth = GaugeMetricFamily(
            QUEUE_DEPTH,
            "Entries in a queue by state (ready, delayed, reserved, dead), at the last refresh.",
            labels=["queue", "agent_type", "state"],
        )
        if snapshot is None:
            return depth
        sums: defaultdict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0, 0])
        for stats in snapshot.queues:
            counts = sums[queue_label(str(stats.queue), instance_labels=self._instance_labels)]
            counts[0] += stats.ready
            counts[1] += stats.delayed
            counts[2] += stats.reserved
            counts[3] += stats.dead
        for (queue, agent_type), counts in sorted(sums.items()):
            for name, count in zip(QUEUE_STATES, counts, strict=True):
                depth.add_metric([queue, agent_type, name], float(count))
        return depth

    def _breakers(self, snapshot: CollectorSnapshot | None) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "tta_breaker_state",
            "1 for a circuit breaker's current state (closed, open, half_open), 0 for the others.",
            labels=["breaker", "state"],
        )
        failures = GaugeMetricFamily(
            "tta_breaker_failures",
            "Failures a circuit breaker counts in its current window, at the last refresh.",
            labels=["breaker"],
        )
        for breaker in () if snapshot is None else snapshot.breakers:
            for candidate in BreakerState:
                state.add_metric([breaker.name, candidate.value], float(breaker.state == candidate))
            failures.add_metric([breaker.name], float(breaker.failures))
        yield state
        yield failures
