"""OpenTelemetryMetrics on the SDK's InMemoryMetricReader: the core's reports as instruments."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
    Sum,
)

from tta_agent_coordination import (
    AgentId,
    Backend,
    CircuitBreaker,
    CircuitBreakerConfig,
    Delivery,
    PermanentFailureError,
    ValidationError,
    connect,
)
from tta_agent_coordination.coordinator import MessageCoordinator
from tta_agent_coordination.metrics import (
    DELIVERIES_ACKED,
    HANDLER_DURATION,
    MESSAGES_SENT,
    QUEUE_DEPTH,
    MetricsSink,
)
from tta_agent_coordination_opentelemetry import (
    DEFAULT_BUCKETS,
    INSTRUMENTS,
    OTHER,
    OpenTelemetryMetrics,
    queue_attributes,
)

SVC = AgentId("svc", "1")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


@dataclass
class Meters:
    provider: MeterProvider
    reader: InMemoryMetricReader

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        found: dict[str, Metric] = {}
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name: str) -> dict[frozenset[tuple[str, object]], float]:
        """Counter and gauge values by attribute set."""
        metric = self.metrics()[name]
        assert isinstance(metric.data, Sum | Gauge)
        out: dict[frozenset[tuple[str, object]], float] = {}
        for point in metric.data.data_points:
            assert isinstance(point, NumberDataPoint)
            out[frozenset((point.attributes or {}).items())] = point.value
        return out

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        metric = self.metrics()[name]
        assert isinstance(metric.data, Histogram)
        return list(metric.data.data_points)


@pytest.fixture
def meters() -> Meters:
    reader = InMemoryMetricReader()
    return Meters(MeterProvider(metric_readers=[reader]), reader)


def attrs(**values: str) -> frozenset[tuple[str, object]]:
    return frozenset(values.items())


@pytest.mark.anyio
async def test_the_core_reports_through_the_sink(backend: Backend, meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider)
    assert isinstance(sink, MetricsSink)
    coord = MessageCoordinator(backend, metrics=sink)
    for n in range(3):
        await coord.send(SVC, {"n": n})
    done = anyio.Event()
    handled = 0

    async def handler(delivery: Delivery) -> None:
        nonlocal handled
        handled += 1
        if handled == 3:
            done.set()
        payload = delivery.message.payload
        assert isinstance(payload, dict)
        if payload["n"] == 0:
            raise PermanentFailureError("no")

    with anyio.fail_after(5):
        # A graceful stop returns once running handlers are done and their deliveries settled.
        await coord.serve(SVC, handler, stop=done)

    queue = {"queue": "svc:*", "agent_type": "svc"}
    assert meters.points("tta.messages.sent") == {attrs(**queue, message_type="event"): 3}
    assert meters.points("tta.deliveries.reserved") == {attrs(**queue): 3}
    assert meters.points("tta.deliveries.acked") == {attrs(**queue): 2}
    assert meters.points("tta.deliveries.dead_lettered") == {
        attrs(**queue, reason="handler_error"): 1
    }
    points = meters.histogram("tta.handler.duration")
    by_outcome = {dict(p.attributes or {})["outcome"]: p.count for p in points}
    assert by_outcome == {"ok": 2, "error": 1}
    assert all(tuple(p.explicit_bounds) == DEFAULT_BUCKETS for p in points)
    metric = meters.metrics()["tta.handler.duration"]
    assert metric.unit == "s"
    assert metric.description == INSTRUMENTS[HANDLER_DURATION].description
    assert meters.metrics()["tta.messages.sent"].unit == "{message}"


@pytest.mark.anyio
async def test_breaker_transitions_and_request_durations(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider)
    async with connect("memory://?clock=manual") as backend:
        config = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=10)
        breaker = CircuitBreaker(backend, "llm", config, metrics=sink)

        def fail() -> None:
            raise ConnectionError

        with pytest.raises(ConnectionError):
            await breaker.call(fail)
    assert meters.points("tta.breaker.transitions") == {
        attrs(breaker="llm", from_state="closed", to_state="open"): 1
    }
    sink.observe("tta_request_duration_seconds", 0.2, {"outcome": "timeout"})
    (point,) = meters.histogram("tta.request.duration")
    assert (point.count, dict(point.attributes or {})) == (1, {"outcome": "timeout"})


def test_instance_labels_keep_the_full_queue(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider, instance_labels=True)
    assert sink.instance_labels
    sink.increment(DELIVERIES_ACKED, labels={"queue": "svc:1"})
    sink.increment(DELIVERIES_ACKED, labels={"queue": "svc:2"})
    assert meters.points("tta.deliveries.acked") == {
        attrs(queue="svc:1", agent_type="svc"): 1,
        attrs(queue="svc:2", agent_type="svc"): 1,
    }


def test_reply_queues_share_one_series(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider)
    assert not sink.instance_labels
    for uid in ("a" * 32, "b" * 32):
        sink.increment(DELIVERIES_ACKED, labels={"queue": f"tta.reply:{uid}"})
    assert meters.points("tta.deliveries.acked") == {
        attrs(queue="tta.reply:*", agent_type="tta.reply"): 2
    }
    assert queue_attributes("svc") == ("svc", "svc")
    assert queue_attributes("svc:1", instance_labels=True) == ("svc:1", "svc")


def test_attribute_values_are_capped(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider, max_label_values=2)
    for kind in ("event", "request", "command", "custom"):
        sink.increment(MESSAGES_SENT, labels={"queue": "svc", "message_type": kind})
    values = {dict(k)["message_type"]: v for k, v in meters.points("tta.messages.sent").items()}
    assert values == {"event": 1, "request": 1, OTHER: 2}


def test_gauges_and_names_the_sink_does_not_declare(
    meters: Meters, caplog: pytest.LogCaptureFixture
) -> None:
    sink = OpenTelemetryMetrics(meters.provider)
    sink.gauge(QUEUE_DEPTH, 4, {"queue": "svc:1", "state": "ready"})
    sink.gauge(QUEUE_DEPTH, 5, {"queue": "svc:1", "state": "ready"})
    assert meters.points("tta.queue.depth") == {
        attrs(queue="svc:*", agent_type="svc", state="ready"): 5
    }
    sink.increment("tta_custom_things", 2)
    sink.observe("tta_custom_wait_seconds", 0.5)
    sink.gauge("my.own.gauge", 1.0)
    found = meters.metrics()
    assert meters.points("tta.custom_things") == {frozenset(): 2}
    assert found["tta.custom_wait"].unit == "s"
    assert meters.points("my.own.gauge") == {frozenset(): 1.0}
    assert caplog.records == []


def test_bad_reports_are_dropped_logged_once_and_never_raise(
    meters: Meters, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING, logger="tta_agent_coordination.opentelemetry")
    sink = OpenTelemetryMetrics(meters.provider)
    for _ in range(2):
        sink.increment("9 not a name")  # not an OpenTelemetry instrument name
        sink.observe(MESSAGES_SENT, 1.0)  # a counter reported as a histogram
        sink.increment(DELIVERIES_ACKED, -1)  # a counter cannot go down
    monkeypatch.setattr(
        sink._instruments[HANDLER_DURATION], "instrument", object()
    )  # recording fails inside the instrument
    sink.observe(HANDLER_DURATION, 1.0)
    dropped = [r.__dict__["metric"] for r in caplog.records]
    assert dropped == ["9 not a name", MESSAGES_SENT, DELIVERIES_ACKED, HANDLER_DURATION]
    assert "AttributeError" in caplog.records[-1].getMessage()
    assert "tta.deliveries.acked" not in meters.metrics()


def test_dynamic_instruments_are_capped(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider)
    for n in range(101):
        sink.increment(f"tta_extra_{n}")
    found = meters.metrics()
    assert "tta.extra_99" in found
    assert "tta.extra_100" not in found


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_label_values": 0}, "max_label_values must be >= 1, not 0"),
        ({"max_label_values": True}, "an int"),
        ({"buckets": []}, "strictly increasing"),
        ({"buckets": [2.0, 1.0]}, "strictly increasing"),
        ({"buckets": ["x"]}, "numbers"),
        ({"buckets": [math.nan]}, "numbers"),
    ],
)
def test_bad_arguments(meters: Meters, kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        OpenTelemetryMetrics(meters.provider, **kwargs)  # type: ignore[arg-type]


def test_an_infinite_top_bucket_is_implied(meters: Meters) -> None:
    sink = OpenTelemetryMetrics(meters.provider, buckets=[0.1, 1, math.inf])
    sink.observe(HANDLER_DURATION, 5.0, {"queue": "svc", "outcome": "ok"})
    (point,) = meters.histogram("tta.handler.duration")
    assert tuple(point.explicit_bounds) == (0.1, 1.0)
    assert list(point.bucket_counts) == [0, 0, 1]
