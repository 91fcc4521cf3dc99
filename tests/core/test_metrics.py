from __future__ import annotations

import pytest

from tta_agent_coordination.metrics import (
    DURATION_BUCKETS,
    MESSAGES_SENT,
    NOOP_METRICS,
    OTHER_LABEL,
    MetricsSink,
    NoopMetrics,
    RecordingMetrics,
    queue_labels,
)


def test_noop_metrics_is_a_sink_that_accepts_everything() -> None:
    assert isinstance(NOOP_METRICS, MetricsSink)
    sink = NoopMetrics()
    sink.increment("x")
    sink.observe("x", 1.0, {"a": "b"})
    sink.gauge("x", 2.0)
    assert not hasattr(sink, "counters")


def test_recording_metrics_sums_by_label_subset() -> None:
    sink = RecordingMetrics()
    assert isinstance(sink, MetricsSink)
    sink.increment(MESSAGES_SENT, labels={"queue": "a", "message_type": "request"})
    sink.increment(MESSAGES_SENT, 2, labels={"queue": "b", "message_type": "request"})
    sink.increment(MESSAGES_SENT, labels={"queue": "a", "message_type": "event"})
    sink.increment("other")
    assert sink.total(MESSAGES_SENT) == 4
    assert sink.total(MESSAGES_SENT, queue="a") == 2
    assert sink.total(MESSAGES_SENT, message_type="request") == 3
    assert sink.total(MESSAGES_SENT, queue="c") == 0
    assert sink.total("other") == 1


def test_recording_metrics_keeps_observations_and_gauges() -> None:
    sink = RecordingMetrics()
    sink.observe("duration", 0.5, {"outcome": "ok"})
    sink.observe("duration", 1.5, {"outcome": "error"})
    sink.observe("size", 3)
    sink.gauge("depth", 3, {"queue": "a"})
    sink.gauge("depth", 4, {"queue": "a"})
    assert sorted(sink.values("duration")) == [0.5, 1.5]
    assert sink.values("duration", outcome="ok") == [0.5]
    assert sink.values("missing") == []
    assert sink.gauges[("depth", (("queue", "a"),))] == 4


@pytest.mark.parametrize(
    ("queue", "bounded", "full"),
    [
        ("world", ("world", "world"), ("world", "world")),
        ("world:w-1", ("world:*", "world"), ("world:w-1", "world")),
        ("tta.reply:ab12", ("tta.reply:*", "tta.reply"), ("tta.reply:ab12", "tta.reply")),
    ],
)
def test_queue_labels_are_bounded_by_type_unless_instances_are_asked_for(
    queue: str, bounded: tuple[str, str], full: tuple[str, str]
) -> None:
    assert queue_labels(queue) == bounded
    assert queue_labels(queue, instance_labels=True) == full


def test_duration_buckets_rise_from_milliseconds_to_minutes() -> None:
    assert list(DURATION_BUCKETS) == sorted(set(DURATION_BUCKETS))
    assert DURATION_BUCKETS[0] == 0.005
    assert DURATION_BUCKETS[-1] == 300.0
    assert OTHER_LABEL == "_other_"
