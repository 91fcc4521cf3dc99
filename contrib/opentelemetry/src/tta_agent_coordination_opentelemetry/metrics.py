"""``OpenTelemetryMetrics``: the core's ``MetricsSink`` on the OpenTelemetry metrics API.

Every name the core reports maps to an OpenTelemetry instrument (see :data:`INSTRUMENTS`):
dotted names, units in the ``unit`` field rather than in the name (``tta.handler.duration``
in ``s``), counters for the core's counters, histograms for its durations and a synchronous
gauge for its gauges. A name the sink does not know (a newer core, a user's own report) gets
an instrument made on first sight: ``tta_<rest>`` becomes ``tta.<rest>``, a ``_seconds``
suffix becomes the unit ``s``.

Attributes are the core's label names, with values kept to a bounded set, exactly as the
Prometheus sink keeps them:

* ``queue``: a per-instance queue ``type:instance`` becomes ``type:*``, so every instance of a
  type shares one series, and so do all coordinators' reply queues (``tta.reply:*``). A shared
  queue (``type``) keeps its name. ``instance_labels=True`` keeps the full queue name.
* ``agent_type``: added wherever a ``queue`` is reported: the queue's type.
* any attribute: at most ``max_label_values`` distinct values per instrument and attribute;
  later new values are reported as ``_other_``.

The sink never raises into the caller and never blocks on I/O (exporting is the SDK's
reader's business): a report it cannot record is dropped and logged once per name on the
``tta_agent_coordination.opentelemetry`` logger.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, Protocol, cast

from opentelemetry import metrics as otel_metrics

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
    QUEUE_DEPTH,
    REGISTRY_EVENTS,
    REQUEST_DURATION,
    RESPONSES_LATE,
    Labels,
    queue_labels,
)

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.util.types import Attributes

__all__ = [
    "DEFAULT_BUCKETS",
    "INSTRUMENTS",
    "OTHER",
    "InstrumentSpec",
    "OpenTelemetryMetrics",
    "queue_attributes",
]

logger = logging.getLogger("tta_agent_coordination.opentelemetry")

Kind = Literal["counter", "histogram", "gauge"]

#: Histogram bucket bounds (seconds), passed as the instruments' advice: the core's
#: :data:`~tta_agent_coordination.metrics.DURATION_BUCKETS`, 5 ms to 5 minutes (the SDK's
#: default bounds are made for milliseconds). A view configured in the SDK wins.
DEFAULT_BUCKETS: Final[tuple[float, ...]] = DURATION_BUCKETS

#: The attribute value that stands for every value past an attribute's ``max_label_values``.
OTHER: Final = OTHER_LABEL

#: OpenTelemetry's instrument-name syntax.
_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_./-]{0,254}")
#: At most this many instruments are made for names the sink does not declare.
_MAX_DYNAMIC: Final = 100


@dataclass(frozen=True)
class InstrumentSpec:
    """How one reported name is recorded: instrument name, kind, unit and description."""

    name: str
    kind: Kind
    unit: str
    description: str


#: Every name the core reports and the instrument it is recorded on.
INSTRUMENTS: Final[Mapping[str, InstrumentSpec]] = {
    MESSAGES_SENT: InstrumentSpec(
        "tta.messages.sent",
        "counter",
        "{message}",
        "Messages enqueued by send, request, reply and broadcast.",
    ),
    DELIVERIES_RESERVED: InstrumentSpec(
        "tta.deliveries.reserved", "counter", "{delivery}", "Deliveries reserved from a queue."
    ),
    DELIVERIES_ACKED: InstrumentSpec(
        "tta.deliveries.acked", "counter", "{delivery}", "Deliveries acknowledged (done for good)."
    ),
    DELIVERIES_NACKED: InstrumentSpec(
        "tta.deliveries.nacked",
        "counter",
        "{delivery}",
        "Deliveries nacked (due again after a delay).",
    ),
    DELIVERIES_RELEASED: InstrumentSpec(
        "tta.deliveries.released",
        "counter",
        "{delivery}",
        "Deliveries released (due again at once, no attempt counted).",
    ),
    DELIVERIES_DEAD_LETTERED: InstrumentSpec(
        "tta.deliveries.dead_lettered",
        "counter",
        "{delivery}",
        "Deliveries moved to the dead letters, by reason.",
    ),
    RESPONSES_LATE: InstrumentSpec(
        "tta.responses.late",
        "counter",
        "{response}",
        "Responses that arrived after their request stopped waiting.",
    ),
    BREAKER_TRANSITIONS: InstrumentSpec(
        "tta.breaker.transitions",
        "counter",
        "{transition}",
        "Circuit-breaker state changes seen by this process.",
    ),
    BREAKER_STORE_ERRORS: InstrumentSpec(
        "tta.breaker.store_errors",
        "counter",
        "{error}",
        "Failures of the breaker store, by operation.",
    ),
    REGISTRY_EVENTS: InstrumentSpec(
        "tta.registry.events", "counter", "{event}", "Agent registry events read, by kind."
    ),
    HANDLER_DURATION: InstrumentSpec(
        "tta.handler.duration", "histogram", "s", "Time a handler ran on a delivery, by outcome."
    ),
    REQUEST_DURATION: InstrumentSpec(
        "tta.request.duration",
        "histogram",
        "s",
        "Time from sending a request to its response (or timeout).",
    ),
    QUEUE_DEPTH: InstrumentSpec(
        "tta.queue.depth", "gauge", "{entry}", "Entries in a queue, by state."
    ),
}


#: ``(queue, agent_type)`` attribute values for a queue name: the core's bounded labels.
queue_attributes = queue_labels


def _derived(name: str, kind: Kind) -> InstrumentSpec:
    """The instrument for a name the sink does not declare."""
    unit = ""
    base = name
    if kind == "histogram" and base.endswith("_seconds"):
        base, unit = base.removesuffix("_seconds"), "s"
    if base.startswith("tta_"):
        base = "tta." + base.removeprefix("tta_")
    return InstrumentSpec(base, kind, unit, f"Reported by tta-agent-coordination as {name}.")


class _Settable(Protocol):
    def set(self, amount: float, attributes: Attributes = None) -> None: ...


class _Addable(Protocol):
    def add(self, amount: float, attributes: Attributes = None) -> None: ...


class _Recordable(Protocol):
    def record(self, amount: float, attributes: Attributes = None) -> None: ...


@dataclass
class _Instrument:
    spec: InstrumentSpec
    instrument: _Addable | _Recordable | _Settable
    seen: dict[str, set[str]] = field(default_factory=dict[str, set[str]])


class OpenTelemetryMetrics:
    """A :class:`~tta_agent_coordination.metrics.MetricsSink` that records to OpenTelemetry.

    Pass it as ``metrics=`` to ``MessageCoordinator``, ``AgentRegistry`` and ``CircuitBreaker``;
    export with any SDK metric reader (OTLP, Prometheus, the console).

    Args:
        meter_provider: Where the instruments are made (the global provider when ``None``,
            looked up once, here).
        instance_labels: Keep per-instance queue names in the ``queue`` attribute (one series
            per agent instance and per reply queue: only for small, fixed fleets).
        buckets: Histogram bucket bounds in seconds, given to the SDK as advice.
        max_label_values: Distinct values kept per instrument and attribute; later ones become
            ``_other_``.

    Raises:
        ValidationError: A bad argument.
    """

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        instance_labels: bool = False,
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_label_values: int = 1000,
    ) -> None:
        max_label_values = checks.integer(max_label_values, "max_label_values", 1)
        self._buckets = _buckets(buckets)
        self._meter = otel_metrics.get_meter(
            "tta_agent_coordination_opentelemetry", __version__, meter_provider=meter_provider
        )
        self._instance_labels = bool(instance_labels)
        self._max_values = max_label_values
        self._lock = threading.Lock()  # guards making instruments, not the hot path
        self._instruments: dict[str, _Instrument | None] = {}
        self._warned: set[str] = set()
        for name, spec in INSTRUMENTS.items():
            self._instruments[name] = self._make(spec)

    @property
    def instance_labels(self) -> bool:
        """Whether per-instance queue names are kept in the ``queue`` attribute."""
        return self._instance_labels

    # -- the MetricsSink protocol ------------------------------------------------------------

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        """Add ``value`` to the counter for ``name`` (never raises)."""
        self._report(name, "counter", value, labels)

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Record ``value`` (seconds) in the histogram for ``name`` (never raises)."""
        self._report(name, "histogram", value, labels)

    def gauge(self, name: str, value: float, labels: Labels | None = None) -> None:
        """Set the gauge for ``name`` to ``value`` (never raises)."""
        self._report(name, "gauge", value, labels)

    # -- helpers -------------------------------------------------------------------------------

    def _report(self, name: str, kind: Kind, value: float, labels: Labels | None) -> None:
        try:
            found = self._instruments.get(name)
            if found is None:
                found = self._dynamic(name, kind)
                if found is None:
                    self._dropped(name, "no instrument can be made for it")
                    return
            if found.spec.kind != kind:
                self._dropped(name, f"it is a {found.spec.kind}, reported as a {kind}")
                return
            attributes = self._attributes(found, labels or {})
            instrument = found.instrument
            if kind == "counter":
                if value < 0:
                    self._dropped(name, f"a counter cannot go down by {value}")
                    return
                cast("_Addable", instrument).add(value, attributes)  # the kind says which
            elif kind == "histogram":
                cast("_Recordable", instrument).record(value, attributes)
            else:
                cast("_Settable", instrument).set(value, attributes)
        except Exception as exc:  # noqa: BLE001  # a sink never raises into the hot path
            self._dropped(name, f"{type(exc).__name__}: {exc}")

    def _attributes(self, found: _Instrument, labels: Labels) -> dict[str, str]:
        given = {str(key): str(value) for key, value in labels.items()}
        queue = given.get("queue")
        if queue is not None:
            given["queue"], agent_type = queue_attributes(
                queue, instance_labels=self._instance_labels
            )
            given.setdefault("agent_type", agent_type)
        for key, value in given.items():
            seen = found.seen.setdefault(key, set())
            if value not in seen:
                if len(seen) >= self._max_values:
                    given[key] = OTHER
                else:
                    seen.add(value)
        return given

    def _make(self, spec: InstrumentSpec) -> _Instrument:
        instrument: _Addable | _Recordable | _Settable
        if spec.kind == "counter":
            instrument = self._meter.create_counter(spec.name, spec.unit, spec.description)
        elif spec.kind == "histogram":
            instrument = self._meter.create_histogram(
                spec.name,
                spec.unit,
                spec.description,
                explicit_bucket_boundaries_advisory=self._buckets,
            )
        else:
            instrument = self._meter.create_gauge(spec.name, spec.unit, spec.description)
        return _Instrument(spec, instrument)

    def _dynamic(self, name: str, kind: Kind) -> _Instrument | None:
        """An instrument for a name the sink does not declare, made on its first report."""
        with self._lock:
            if name in self._instruments:
                return self._instruments[name]
            spec = _derived(name, kind)
            dynamic = sum(1 for n in self._instruments if n not in INSTRUMENTS)
            made = None
            if _NAME.fullmatch(spec.name) is not None and dynamic < _MAX_DYNAMIC:
                made = self._make(spec)
            self._instruments[name] = made
            return made

    def _dropped(self, name: str, why: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            logger.warning(
                "OpenTelemetry sink: dropped a report of %r (%s); later ones are dropped silently",
                name,
                why,
                extra={"metric": name},
            )


def _buckets(buckets: Sequence[float]) -> tuple[float, ...]:
    bounds: list[float] = []
    for bound in buckets:
        if isinstance(bound, bool) or not isinstance(bound, int | float) or math.isnan(bound):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
            msg = f"bucket bounds must be numbers, not {bound!r}"
            raise ValidationError(msg)
        if not math.isinf(bound):
            bounds.append(float(bound))
    if not bounds or any(low >= high for low, high in itertools.pairwise(bounds)):
        msg = f"bucket bounds must be strictly increasing numbers, not {buckets!r}"
        raise ValidationError(msg)
    return tuple(bounds)
