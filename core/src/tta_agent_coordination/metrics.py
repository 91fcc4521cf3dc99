"""Metrics: a small sink protocol the core reports to, with a no-op default.

Every send, reserve, ack, nack, release, dead-letter, breaker transition and registry event is
reported. ``contrib/`` provides Prometheus and OpenTelemetry sinks; :class:`RecordingMetrics`
keeps everything in memory, for tests and the demo's summary.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Final, Protocol, runtime_checkable

__all__ = [
    "BREAKER_STORE_ERRORS",
    "BREAKER_TRANSITIONS",
    "DELIVERIES_ACKED",
    "DELIVERIES_DEAD_LETTERED",
    "DELIVERIES_NACKED",
    "DELIVERIES_RELEASED",
    "DELIVERIES_RESERVED",
    "DURATION_BUCKETS",
    "HANDLER_DURATION",
    "MESSAGES_SENT",
    "NOOP_METRICS",
    "OTHER_LABEL",
    "QUEUE_DEPTH",
    "REGISTRY_EVENTS",
    "REQUEST_DURATION",
    "RESPONSES_LATE",
    "Labels",
    "MetricsSink",
    "NoopMetrics",
    "RecordingMetrics",
    "queue_labels",
]

Labels = Mapping[str, str]

# The metric names the core reports (counters unless noted).
MESSAGES_SENT: Final = "tta_messages_sent"  # labels: queue, message_type
DELIVERIES_RESERVED: Final = "tta_deliveries_reserved"  # labels: queue
DELIVERIES_ACKED: Final = "tta_deliveries_acked"  # labels: queue
DELIVERIES_NACKED: Final = "tta_deliveries_nacked"  # labels: queue
DELIVERIES_RELEASED: Final = "tta_deliveries_released"  # labels: queue
DELIVERIES_DEAD_LETTERED: Final = "tta_deliveries_dead_lettered"  # labels: queue, reason
RESPONSES_LATE: Final = "tta_responses_late"  # labels: queue
BREAKER_TRANSITIONS: Final = "tta_breaker_transitions"  # labels: breaker, from_state, to_state
BREAKER_STORE_ERRORS: Final = "tta_breaker_store_errors"  # labels: breaker, operation
REGISTRY_EVENTS: Final = "tta_registry_events"  # labels: kind, agent_type
HANDLER_DURATION: Final = "tta_handler_duration_seconds"  # histogram; labels: queue, outcome
REQUEST_DURATION: Final = "tta_request_duration_seconds"  # histogram; labels: outcome
QUEUE_DEPTH: Final = "tta_queue_depth"  # gauge; labels: queue, state

#: Histogram bounds in seconds for handler and request durations, for sinks that bucket them:
#: from 5 ms to 5 minutes, since agent handlers (model calls, tool runs) often take seconds to
#: minutes, past the usual default top bucket of 10 s.
DURATION_BUCKETS: Final[tuple[float, ...]] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
)

#: The label value a sink reports in place of every value past its cap on a label's values.
OTHER_LABEL: Final = "_other_"


def queue_labels(queue: str, *, instance_labels: bool = False) -> tuple[str, str]:
    """Bounded ``(queue, agent_type)`` label values for a queue name (``str(AgentId)``).

    Per-instance queues (and per-request reply queues) would make one series each, so a sink
    labels them by type: ``"world:w-1"`` gives ``("world:*", "world")``, the shared queue
    ``"world"`` gives ``("world", "world")``. With ``instance_labels`` the queue keeps its full
    name (for small, fixed fleets).
    """
    agent_type, sep, _ = queue.partition(":")
    if instance_labels or not sep:
        return queue, agent_type
    return f"{agent_type}:*", agent_type


@runtime_checkable
class MetricsSink(Protocol):
    """Where the core reports counters, histograms and gauges. Must not block or raise."""

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        """Add ``value`` to a counter."""
        ...

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Record one observation in a histogram (durations in seconds)."""
        ...

    def gauge(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Set a gauge."""
        ...


class NoopMetrics:
    """The default sink: reports go nowhere."""

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        """Do nothing."""

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Do nothing."""

    def gauge(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Do nothing."""


NOOP_METRICS: Final = NoopMetrics()

_Key = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, labels: Labels | None) -> _Key:
    return (name, tuple(sorted((labels or {}).items())))


class RecordingMetrics:
    """A sink that keeps every report in memory (tests, the demo, quick looks)."""

    def __init__(self) -> None:
        self.counters: defaultdict[_Key, float] = defaultdict(float)
        self.observations: defaultdict[_Key, list[float]] = defaultdict(list)
        self.gauges: dict[_Key, float] = {}

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        """Add to a counter."""
        self.counters[_key(name, labels)] += value

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Keep an observation."""
        self.observations[_key(name, labels)].append(value)

    def gauge(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Set a gauge."""
        self.gauges[_key(name, labels)] = value

    def total(self, name: str, **labels: str) -> float:
        """Sum of a counter over every label set that includes ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.counters.items() if n == name and wanted <= set(ls))

    def values(self, name: str, **labels: str) -> list[float]:
        """Every observation of a histogram over label sets that include ``labels``."""
        wanted = set(labels.items())
        out: list[float] = []
        for (n, ls), vs in self.observations.items():
            if n == name and wanted <= set(ls):
                out.extend(vs)
        return out
