"""``PrometheusMetrics``: the core's ``MetricsSink`` on prometheus_client.

Every name the core reports has a metric declared up front with fixed label names (see
:data:`METRICS`); a name the sink does not know (a newer core, a user's own reports) gets a
metric made on first sight. Label values are kept to a bounded set:

* ``queue``: a per-instance queue ``type:instance`` becomes ``type:*``, so every instance of a
  type shares one series, and so do all coordinators' reply queues (``tta.reply:*``). A shared
  queue (``type``) keeps its name. ``instance_labels=True`` keeps the full queue name.
* ``agent`` (a worker's ``type:instance``): mapped the same way, to ``type:*``.
* ``agent_type``: added wherever a ``queue`` or an ``agent`` is reported: its type.
* any label: at most ``max_label_values`` distinct values per metric and label; later new values
  are reported as ``_other_`` (which no agent type can be: types start with a letter or digit).

The sink never raises and never blocks on I/O: a report it cannot record is dropped, counted in
``tta_metrics_sink_errors_total`` and logged (once per metric name).
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from tta_agent_coordination import checks
from tta_agent_coordination.errors import ValidationError
from tta_agent_coordination.metrics import (
    BREAKER_STORE_ERRORS,
    BREAKER_TRANSITIONS,
    DELIVERIES_ACKED,
    DELIVERIES_DEAD_LETTERED,
    DELIVERIES_NACKED,
    DELIVERIES_RELEASED,
    DELIVERIES_RESERVED,
    DURATION_BUCKETS,
    HANDLER_DURATION,
    MESSAGES_SENT,
    OTHER_LABEL,
    REGISTRY_EVENTS,
    REQUEST_DURATION,
    RESPONSES_LATE,
    Labels,
    queue_labels,
)
from tta_agent_coordination.worker import WORKER_HANDLERS_RUNNING

__all__ = [
    "DEFAULT_BUCKETS",
    "METRICS",
    "OTHER",
    "SINK_ERRORS",
    "MetricSpec",
    "PrometheusMetrics",
    "queue_label",
]

logger = logging.getLogger(__name__)

Kind = Literal["counter", "histogram", "gauge"]

#: Histogram buckets (seconds): the core's :data:`~tta_agent_coordination.metrics.DURATION_BUCKETS`
#: (5 ms to 5 minutes) and ``+Inf``.
DEFAULT_BUCKETS: Final[tuple[float, ...]] = (*DURATION_BUCKETS, math.inf)

#: The label value that stands for every value past a label's ``max_label_values``.
OTHER: Final = OTHER_LABEL

#: The counter of reports the sink dropped (exposed as ``tta_metrics_sink_errors_total``).
SINK_ERRORS: Final = "tta_metrics_sink_errors"

_QUEUE = ("queue", "agent_type")
_BY_AGENT = ("queue", "agent")  # labels whose values are agent ids, mapped by queue_label
_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_MAX_DYNAMIC = 100
_MAX_CACHED = 10_000  # labelled children remembered by their report's labels
_CacheKey = tuple[str, str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class MetricSpec:
    """How one reported name is exposed: its type, help text and label names."""

    kind: Kind
    documentation: str
    labelnames: tuple[str, ...]


#: Every name the core reports, as it is exposed (counters get ``_total`` in the exposition).
METRICS: Final[Mapping[str, MetricSpec]] = {
    MESSAGES_SENT: MetricSpec(
        "counter",
        "Messages enqueued by send, request, reply and broadcast.",
        (*_QUEUE, "message_type"),
    ),
    DELIVERIES_RESERVED: MetricSpec("counter", "Deliveries reserved from a queue.", _QUEUE),
    DELIVERIES_ACKED: MetricSpec("counter", "Deliveries acknowledged (done for good).", _QUEUE),
    DELIVERIES_NACKED: MetricSpec(
        "counter", "Deliveries nacked (due again after a delay).", _QUEUE
    ),
    DELIVERIES_RELEASED: MetricSpec(
        "counter", "Deliveries released (due again at once, no attempt counted).", _QUEUE
    ),
    DELIVERIES_DEAD_LETTERED: MetricSpec(
        "counter", "Deliveries moved to the dead letters, by reason.", (*_QUEUE, "reason")
    ),
    RESPONSES_LATE: MetricSpec(
        "counter", "Responses that arrived after their request stopped waiting.", _QUEUE
    ),
    BREAKER_TRANSITIONS: MetricSpec(
        "counter",
        "Circuit-breaker state changes seen by this process.",
        ("breaker", "from_state", "to_state"),
    ),
    BREAKER_STORE_ERRORS: MetricSpec(
        "counter", "Failures of the breaker store, by operation.", ("breaker", "operation")
    ),
    REGISTRY_EVENTS: MetricSpec(
        "counter", "Agent registry events read, by kind.", ("kind", "agent_type")
    ),
    HANDLER_DURATION: MetricSpec(
        "histogram", "Time a handler ran on a delivery, by outcome.", (*_QUEUE, "outcome")
    ),
    REQUEST_DURATION: MetricSpec(
        "histogram", "Time from sending a request to its response (or timeout).", ("outcome",)
    ),
    WORKER_HANDLERS_RUNNING: MetricSpec(
        "gauge", "Handlers a worker is running now.", ("agent", "agent_type")
    ),
}


#: ``(queue, agent_type)`` label values for a queue name: the core's bounded labels.
queue_label = queue_labels


@dataclass
class _Metric:
    spec: MetricSpec
    metric: Counter | Histogram | Gauge
    seen: dict[str, set[str]]


class PrometheusMetrics:
    """A :class:`~tta_agent_coordination.metrics.MetricsSink` that records to prometheus_client.

    Pass it as ``metrics=`` to ``MessageCoordinator``, ``AgentRegistry`` and ``CircuitBreaker``;
    serve the registry with :func:`~tta_agent_coordination_prometheus.serve_metrics`.

    Args:
        registry: Where the metrics are registered (prometheus_client's global ``REGISTRY``
            when ``None``). One ``PrometheusMetrics`` per registry.
        instance_labels: Keep per-instance queue names in the ``queue`` label (one series per
            agent instance and per reply queue: only for small, fixed fleets).
        buckets: Histogram bucket bounds in seconds (``+Inf`` is added if missing).
        max_label_values: Distinct values kept per metric and label; later ones become
            ``_other_``.

    Raises:
        ValidationError: A bad argument, or ``registry`` already holds these metrics.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        instance_labels: bool = False,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_label_values: int = 1000,
    ) -> None:
        max_label_values = checks.integer(max_label_values, "max_label_values", 1)
        bounds = _buckets(buckets)
        self._registry = REGISTRY if registry is None else registry
        self._instance_labels = bool(instance_labels)
        self._buckets = bounds
        self._max_values = max_label_values
        self._lock = threading.Lock()  # guards the creation of metrics, not the hot path
        self._metrics: dict[str, _Metric | None] = {}
        self._warned: set[str] = set()
        self._children: dict[_CacheKey, Counter | Histogram | Gauge] = {}
        self._unregistered = False
        created: list[Counter | Histogram | Gauge] = []
        try:
            errors = Counter(
                SINK_ERRORS,
                "Metric reports the Prometheus sink dropped (bad value or label, a clash).",
                registry=self._registry,
            )
            created.append(errors)
            for name, spec in METRICS.items():
                made = self._make(name, spec)
                created.append(made.metric)
                self._metrics[name] = made
        except ValueError as exc:
            for metric in created:
                self._registry.unregister(metric)
            msg = f"cannot register the tta metrics in {self._registry!r}: {exc}"
            raise ValidationError(msg) from exc
        self._errors = errors

    @property
    def registry(self) -> CollectorRegistry:
        """The registry the metrics live in."""
        return self._registry

    @property
    def instance_labels(self) -> bool:
        """Whether per-instance queue names are kept in the ``queue`` label."""
        return self._instance_labels

    def unregister(self) -> None:
        """Remove this sink's metrics from its registry; later reports go nowhere visible.

        Lets a process build a fresh sink on the same registry, e.g. a second worker run in one
        interpreter.
        """
        with self._lock:
            self._unregistered = True  # and a name first seen later is not registered either
            self._children.clear()
            made = [self._errors, *(m.metric for m in self._metrics.values() if m is not None)]
            for metric in made:
                try:
                    self._registry.unregister(metric)
                except KeyError:  # already unregistered
                    continue

    # -- the MetricsSink protocol ------------------------------------------------------------

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        """Add ``value`` to the counter ``name`` (never raises)."""
        try:
            child = self._child(name, "counter", labels)
            if isinstance(child, Counter):
                child.inc(value)
        except Exception as exc:  # noqa: BLE001  # a sink never raises into the hot path
            self._dropped(name, exc)

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Record ``value`` (seconds) in the histogram ``name`` (never raises)."""
        try:
            child = self._child(name, "histogram", labels)
            if isinstance(child, Histogram):
                child.observe(value)
        except Exception as exc:  # noqa: BLE001  # a sink never raises into the hot path
            self._dropped(name, exc)

    def gauge(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Set the gauge ``name`` to ``value`` (never raises)."""
        try:
            child = self._child(name, "gauge", labels)
            if isinstance(child, Gauge):
                child.set(value)
        except Exception as exc:  # noqa: BLE001  # a sink never raises into the hot path
            self._dropped(name, exc)

    # -- helpers -------------------------------------------------------------------------------

    def _child(
        self, name: str, kind: Kind, labels: Labels | None
    ) -> Counter | Histogram | Gauge | None:
        """The labelled child to record on, from the cache when these labels were seen."""
        key: _CacheKey = (name, kind, tuple(labels.items()) if labels else ())
        try:
            cached = self._children.get(key)
        except TypeError:  # an unhashable label value: record it without the cache
            return self._resolve(name, kind, labels)
        if cached is not None:
            return cached
        child = self._resolve(name, kind, labels)
        if child is not None and len(self._children) < _MAX_CACHED:
            self._children[key] = child
        return child

    def _resolve(
        self, name: str, kind: Kind, labels: Labels | None
    ) -> Counter | Histogram | Gauge | None:
        found = self._metrics.get(name)
        if found is None:
            if name in self._metrics:  # known to be unusable: dropped before
                self._dropped(name, None)
                return None
            found = self._dynamic(name, kind, labels)
            if found is None:
                return None
        if found.spec.kind != kind:
            msg = f"{name} is a {found.spec.kind}, reported as a {kind}"
            raise ValueError(msg)
        if not found.spec.labelnames:
            return found.metric
        return found.metric.labels(*self._values(found, labels or {}))

    def _values(self, found: _Metric, labels: Labels) -> list[str]:
        given = dict(labels)
        for label in _BY_AGENT:
            name = given.get(label)
            if name is not None:
                given[label], agent_type = queue_label(
                    str(name), instance_labels=self._instance_labels
                )
                given.setdefault("agent_type", agent_type)
        values: list[str] = []
        for label in found.spec.labelnames:
            value = str(given.get(label, ""))
            seen = found.seen[label]
            if value not in seen:
                if len(seen) >= self._max_values:
                    value = OTHER
                else:
                    seen.add(value)
            values.append(value)
        return values

    def _dynamic(self, name: str, kind: Kind, labels: Labels | None) -> _Metric | None:
        """A metric for a name the sink does not declare, made on its first report."""
        with self._lock:
            if name in self._metrics:
                return self._metrics[name]
            keys = {str(key) for key in (labels or {})}
            if keys & set(_BY_AGENT):
                keys.add("agent_type")
            dynamic = sum(1 for n in self._metrics if n not in METRICS)
            problem = None
            if self._unregistered:
                self._metrics[name] = None
                return None
            if _NAME.fullmatch(name) is None:
                problem = "not a Prometheus metric name"
            elif any(_LABEL.fullmatch(key) is None or key.startswith("__") for key in keys):
                problem = f"a label name that Prometheus refuses in {sorted(keys)}"
            elif dynamic >= _MAX_DYNAMIC:
                problem = f"more than {_MAX_DYNAMIC} metrics of names the sink does not declare"
            made = None
            if problem is None:
                spec = MetricSpec(
                    kind, f"{name} (reported by tta-agent-coordination)", tuple(sorted(keys))
                )
                try:
                    made = self._make(name, spec)
                except ValueError as exc:
                    problem = str(exc)
            self._metrics[name] = made
        if made is None:
            self._dropped(name, ValueError(problem))
        return made

    def _make(self, name: str, spec: MetricSpec) -> _Metric:
        metric: Counter | Histogram | Gauge
        doc, labelnames, registry = spec.documentation, spec.labelnames, self._registry
        if spec.kind == "counter":
            metric = Counter(name, doc, labelnames, registry=registry)
        elif spec.kind == "histogram":
            metric = Histogram(name, doc, labelnames, registry=registry, buckets=self._buckets)
        else:
            metric = Gauge(name, doc, labelnames, registry=registry)
        return _Metric(spec, metric, {label: set() for label in spec.labelnames})

    def _dropped(self, name: str, exc: Exception | None) -> None:
        self._errors.inc()
        if exc is not None and name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "prometheus sink: dropped a report of %s (%s); later ones too", name, exc
            )


def _buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    try:
        bounds = [float(bound) for bound in buckets]
    except (TypeError, ValueError) as exc:
        msg = f"buckets must be numbers, not {buckets!r}"
        raise ValidationError(msg) from exc
    if not bounds or any(math.isnan(b) for b in bounds) or bounds != sorted(set(bounds)):
        msg = f"buckets must be a non-empty increasing sequence of numbers, not {buckets!r}"
        raise ValidationError(msg)
    if bounds[-1] != math.inf:
        bounds.append(math.inf)
    return tuple(bounds)
