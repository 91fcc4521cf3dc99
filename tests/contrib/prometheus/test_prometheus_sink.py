"""``PrometheusMetrics``: what the core reports lands in prometheus_client, labels stay bounded,
and the sink never raises.

Each test uses a private ``CollectorRegistry`` and reads it back with ``get_sample_value`` or by
parsing the exposition with prometheus_client's own parser.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import anyio
import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tta_agent_coordination import (
    AgentId,
    AgentRegistry,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitOpenError,
    Delivery,
    MessageCoordinator,
    PermanentFailureError,
    RetryPolicy,
    ValidationError,
    connect,
)
from tta_agent_coordination import metrics as core_metrics
from tta_agent_coordination.metrics import Labels, MetricsSink
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination.worker import WORKER_HANDLERS_RUNNING
from tta_agent_coordination_prometheus import (
    DEFAULT_BUCKETS,
    METRICS,
    OTHER,
    PrometheusMetrics,
    queue_label,
)

pytestmark = pytest.mark.anyio

WORKER = AgentId("worker", "w1")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class Notifying(PrometheusMetrics):
    """The sink, with an event set after every report (tests wait on it, not on a timer)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry)
        self.changed = anyio.Event()

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        super().increment(name, value, labels)
        self.changed.set()
        self.changed = anyio.Event()


async def until(sink: Notifying, check: Callable[[], bool]) -> None:
    """Wait until ``check()`` holds after some report (the test fails after 5 s)."""
    with anyio.fail_after(5):
        while not check():
            await sink.changed.wait()


def families(registry: CollectorRegistry) -> dict[str, Any]:
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


# -- the protocol and the declared metrics ------------------------------------------------------


def test_is_a_metrics_sink(registry: CollectorRegistry) -> None:
    assert isinstance(PrometheusMetrics(registry), MetricsSink)


def test_declares_every_name_the_core_reports() -> None:
    values = [getattr(core_metrics, name) for name in core_metrics.__all__ if name.isupper()]
    reported = {v for v in values if isinstance(v, str) and v.startswith("tta_")}
    reported.discard(core_metrics.QUEUE_DEPTH)
    reported.add(WORKER_HANDLERS_RUNNING)
    assert set(METRICS) == reported  # QUEUE_DEPTH is the collector's, read at scrape time


def test_names_follow_prometheus_conventions(registry: CollectorRegistry) -> None:
    PrometheusMetrics(registry)
    text = generate_latest(registry).decode()
    found = {f.name: f.type for f in text_string_to_metric_families(text)}
    for name, spec in METRICS.items():
        assert found[name] == spec.kind
        assert name.startswith("tta_")
        if spec.kind == "histogram":
            assert name.endswith("_seconds")
    # counters are exposed with _total (the parser strips it from the family name)
    for name, spec in METRICS.items():
        suffix = "_total" if spec.kind == "counter" else ""
        assert f"# TYPE {name}{suffix} {spec.kind}\n" in text


def test_counters_histograms_and_gauges_by_hand(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    sink.increment(core_metrics.DELIVERIES_ACKED, labels={"queue": "a"})
    sink.increment(core_metrics.DELIVERIES_ACKED, 2.0, {"queue": "a"})
    sink.observe(core_metrics.HANDLER_DURATION, 0.3, {"queue": "a", "outcome": "ok"})
    sink.gauge("tta_custom_level", 7.0, {"queue": "a:1"})
    sink.gauge("tta_custom_level", 4.0, {"queue": "a:1"})
    assert value(registry, "tta_deliveries_acked_total", queue="a", agent_type="a") == 3.0
    labels = {"queue": "a", "agent_type": "a", "outcome": "ok"}
    assert value(registry, "tta_handler_duration_seconds_count", **labels) == 1.0
    assert value(registry, "tta_handler_duration_seconds_sum", **labels) == pytest.approx(0.3)
    assert value(registry, "tta_handler_duration_seconds_bucket", le="0.5", **labels) == 1.0
    assert value(registry, "tta_handler_duration_seconds_bucket", le="0.25", **labels) == 0.0
    assert value(registry, "tta_custom_level", queue="a:*", agent_type="a") == 4.0


def test_buckets_reach_five_minutes_and_can_be_chosen(registry: CollectorRegistry) -> None:
    assert DEFAULT_BUCKETS[-2] == 300.0
    assert DEFAULT_BUCKETS[-1] == math.inf
    sink = PrometheusMetrics(registry, buckets=[1, 2])
    sink.observe(core_metrics.REQUEST_DURATION, 1.5, {"outcome": "ok"})
    got = families(registry)["tta_request_duration_seconds"]
    bounds = sorted({s.labels["le"] for s in got.samples if s.name.endswith("_bucket")})
    assert bounds == ["+Inf", "1.0", "2.0"]


# -- labels --------------------------------------------------------------------------------------


def test_queue_label_maps_instances_to_their_type() -> None:
    assert queue_label("world") == ("world", "world")
    assert queue_label("world:w-1") == ("world:*", "world")
    assert queue_label("tta.reply:0af3") == ("tta.reply:*", "tta.reply")
    assert queue_label("world:w-1", instance_labels=True) == ("world:w-1", "world")


def test_instances_and_reply_queues_share_one_series(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    for instance in range(50):
        sink.increment(core_metrics.DELIVERIES_RESERVED, labels={"queue": f"world:w{instance}"})
        sink.increment(
            core_metrics.DELIVERIES_ACKED, labels={"queue": f"tta.reply:{instance:032x}"}
        )
    sink.increment(core_metrics.DELIVERIES_RESERVED, labels={"queue": "world"})
    reserved = families(registry)["tta_deliveries_reserved"]
    series = {(s.labels["queue"], s.labels["agent_type"]) for s in reserved.samples}
    assert series == {("world:*", "world"), ("world", "world")}
    assert (
        value(registry, "tta_deliveries_reserved_total", queue="world:*", agent_type="world") == 50
    )
    reply = {"queue": "tta.reply:*", "agent_type": "tta.reply"}
    assert value(registry, "tta_deliveries_acked_total", **reply) == 50


def test_instance_labels_keep_full_queue_names(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry, instance_labels=True)
    assert sink.instance_labels
    sink.increment(core_metrics.DELIVERIES_RESERVED, labels={"queue": "world:w1"})
    sink.increment(core_metrics.DELIVERIES_RESERVED, labels={"queue": "world:w2"})
    assert (
        value(registry, "tta_deliveries_reserved_total", queue="world:w1", agent_type="world") == 1
    )
    assert (
        value(registry, "tta_deliveries_reserved_total", queue="world:w2", agent_type="world") == 1
    )


def test_worker_gauge_by_agent_type(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    sink.gauge(WORKER_HANDLERS_RUNNING, 3, {"agent": "summariser:host-12"})
    sink.gauge(WORKER_HANDLERS_RUNNING, 2, {"agent": "summariser:host-12"})
    got = value(registry, WORKER_HANDLERS_RUNNING, agent="summariser:*", agent_type="summariser")
    assert got == 2


def test_label_values_are_capped(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry, max_label_values=3)
    for kind in ("a", "b", "c", "d", "e"):
        sink.increment(core_metrics.MESSAGES_SENT, labels={"queue": "q", "message_type": kind})
    sent = families(registry)["tta_messages_sent"]
    kinds = {s.labels["message_type"]: s.value for s in sent.samples if s.name.endswith("_total")}
    assert kinds == {"a": 1, "b": 1, "c": 1, OTHER: 2}
    # a value seen before the cap keeps its own series
    sink.increment(core_metrics.MESSAGES_SENT, labels={"queue": "q", "message_type": "b"})
    assert (
        value(registry, "tta_messages_sent_total", queue="q", agent_type="q", message_type="b") == 2
    )


def test_missing_and_extra_labels(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    sink.increment(core_metrics.DELIVERIES_DEAD_LETTERED, labels={"queue": "q", "extra": "x"})
    sink.increment(core_metrics.REGISTRY_EVENTS)
    got = value(
        registry, "tta_deliveries_dead_lettered_total", queue="q", agent_type="q", reason=""
    )
    assert got == 1
    assert value(registry, "tta_registry_events_total", kind="", agent_type="") == 1
    assert value(registry, "tta_metrics_sink_errors_total") == 0


def test_repeated_reports_reuse_their_series(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry, max_label_values=2)
    for _ in range(3):
        for kind in ("a", "b", "c", "d"):
            sink.increment(
                core_metrics.MESSAGES_SENT, labels={"queue": "q:1", "message_type": kind}
            )
    sent = families(registry)["tta_messages_sent"]
    kinds = {s.labels["message_type"]: s.value for s in sent.samples if s.name.endswith("_total")}
    assert kinds == {"a": 3, "b": 3, OTHER: 6}


def test_an_unhashable_label_value_is_recorded_as_text(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    odd: Any = {"queue": "q", "reason": ["x"]}
    sink.increment(core_metrics.DELIVERIES_DEAD_LETTERED, labels=odd)
    sink.increment(core_metrics.DELIVERIES_DEAD_LETTERED, labels=odd)
    got = value(
        registry, "tta_deliveries_dead_lettered_total", queue="q", agent_type="q", reason="['x']"
    )
    assert got == 2


# -- never raises ----------------------------------------------------------------------------------


def test_bad_reports_are_dropped_counted_and_logged_once(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    sink = PrometheusMetrics(registry)
    with caplog.at_level(logging.WARNING, "tta_agent_coordination_prometheus.sink"):
        sink.increment(core_metrics.DELIVERIES_ACKED, -1.0, {"queue": "q"})  # counters only grow
        sink.increment(core_metrics.DELIVERIES_ACKED, -1.0, {"queue": "q"})
        sink.observe(core_metrics.DELIVERIES_ACKED, 1.0)  # a counter observed as a histogram
        sink.gauge(core_metrics.HANDLER_DURATION, 1.0)
        sink.increment("not a name!", 1.0)
        sink.increment("not a name!", 1.0)
        sink.increment("tta_odd", labels={"bad-label": "x"})
        sink.increment(core_metrics.DELIVERIES_ACKED, "x", {"queue": "q"})  # type: ignore[arg-type]
    assert value(registry, "tta_metrics_sink_errors_total") == 8
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 4  # once per metric name
    assert any("not a name!" in w for w in warned)
    assert value(registry, "tta_deliveries_acked_total", queue="q", agent_type="q") == 0


def test_a_name_another_collector_holds_is_dropped(registry: CollectorRegistry) -> None:
    Counter("tta_taken", "someone else's", registry=registry).inc()
    sink = PrometheusMetrics(registry)
    sink.increment("tta_taken")
    sink.increment("tta_taken")
    assert value(registry, "tta_taken_total") == 1.0
    assert value(registry, "tta_metrics_sink_errors_total") == 2


def test_names_it_does_not_declare_are_made_on_first_sight(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    sink.increment("tta_new_thing", labels={"queue": "q:1", "kind": "k"})
    sink.increment("tta_new_thing", labels={"queue": "q:2"})  # a label left out: ""
    sink.observe("tta_new_wait_seconds", 0.2)
    assert value(registry, "tta_new_thing_total", queue="q:*", agent_type="q", kind="k") == 1
    assert value(registry, "tta_new_thing_total", queue="q:*", agent_type="q", kind="") == 1
    assert value(registry, "tta_new_wait_seconds_count") == 1


def test_dynamic_metrics_are_capped(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)
    for number in range(105):
        sink.increment(f"tta_dyn_{number}")
    assert value(registry, "tta_dyn_99_total") == 1
    assert value(registry, "tta_dyn_100_total") == 0
    assert value(registry, "tta_metrics_sink_errors_total") == 5


def test_concurrent_threads_lose_nothing(registry: CollectorRegistry) -> None:
    sink = PrometheusMetrics(registry)

    def work(number: int) -> None:
        for _ in range(1000):
            sink.increment(core_metrics.DELIVERIES_ACKED, labels={"queue": f"q:{number}"})
            sink.increment(f"tta_late_{number % 2}")

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert value(registry, "tta_deliveries_acked_total", queue="q:*", agent_type="q") == 4000
    assert value(registry, "tta_late_0_total") + value(registry, "tta_late_1_total") == 4000
    assert value(registry, "tta_metrics_sink_errors_total") == 0


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_label_values": 0}, "max_label_values must be >= 1, not 0"),
        ({"max_label_values": True}, "must be an int"),
        ({"max_label_values": 1.5}, "must be an int"),
        ({"buckets": []}, "increasing"),
        ({"buckets": [2, 1]}, "increasing"),
        ({"buckets": [1, 1]}, "increasing"),
        ({"buckets": [math.nan]}, "increasing"),
        ({"buckets": ["x"]}, "numbers"),
        ({"buckets": None}, "numbers"),
    ],
)
def test_bad_arguments(registry: CollectorRegistry, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        PrometheusMetrics(registry, **kwargs)
    assert list(registry.collect()) == []  # nothing registered


def test_one_sink_per_registry_until_unregistered(registry: CollectorRegistry) -> None:
    first = PrometheusMetrics(registry)
    first.increment(core_metrics.DELIVERIES_ACKED, labels={"queue": "q"})
    with pytest.raises(ValidationError, match="cannot register the tta metrics"):
        PrometheusMetrics(registry)
    # the failed one left nothing behind: the first's metrics are intact
    assert value(registry, "tta_deliveries_acked_total", queue="q", agent_type="q") == 1
    first.increment("tta_extra")
    first.unregister()
    first.unregister()  # twice is fine
    first.increment("tta_after")  # a name first seen now registers nothing
    first.increment(core_metrics.DELIVERIES_ACKED, labels={"queue": "q"})
    assert list(registry.collect()) == []
    second = PrometheusMetrics(registry)
    assert second.registry is registry
    assert value(registry, "tta_deliveries_acked_total", queue="q", agent_type="q") == 0


def test_default_registry_is_the_global_one() -> None:
    sink = PrometheusMetrics()
    try:
        assert sink.registry is REGISTRY
        sink.increment(core_metrics.RESPONSES_LATE, labels={"queue": "tta.reply:ab"})
        got = REGISTRY.get_sample_value(
            "tta_responses_late_total", {"queue": "tta.reply:*", "agent_type": "tta.reply"}
        )
        assert got == 1
    finally:
        sink.unregister()


# -- what the core reports, end to end on memory:// ---------------------------------------------


async def serve_until(
    coord: MessageCoordinator,
    handler: Callable[[Delivery], Awaitable[object]],
    sink: Notifying,
    done: Callable[[], bool],
) -> None:
    async with anyio.create_task_group() as tg:
        await tg.start(coord.serve, WORKER, handler)
        await until(sink, done)
        tg.cancel_scope.cancel()


async def test_every_operation_the_core_reports(
    backend: Backend, registry: CollectorRegistry
) -> None:
    sink = Notifying(registry)
    policy = RetryPolicy(max_attempts=2, base=0.0, jitter="none")
    q_shared = {"queue": "worker", "agent_type": "worker"}
    q_inst = {"queue": "worker:*", "agent_type": "worker"}

    async with MessageCoordinator(backend, metrics=sink, retry_policy=policy) as coord:
        await coord.send(WORKER, {"do": "ok"})
        await coord.send(AgentId("worker"), {"do": "ok"})
        await coord.send(WORKER, {"do": "permanent"})
        await coord.send(WORKER, {"do": "flaky"})
        await coord.send(WORKER, {"do": "never"}, message_type="command")

        async def handler(delivery: Delivery) -> None:
            action = delivery.message.payload["do"]  # type: ignore[index, call-overload]
            if action == "permanent":
                raise PermanentFailureError("no")
            if action == "never" or (action == "flaky" and delivery.attempt == 1):
                raise RuntimeError("try again")
            if delivery.message.reply_to is not None:
                await coord.reply(delivery, {"ok": True})

        def settled() -> bool:
            acked = value(registry, "tta_deliveries_acked_total", **q_inst)
            dead = value(
                registry, "tta_deliveries_dead_lettered_total", reason="max_attempts", **q_inst
            )
            return acked == 2 and dead == 1

        await serve_until(coord, handler, sink, settled)

        sent = value(registry, "tta_messages_sent_total", message_type="event", **q_inst)
        assert sent == 3
        assert value(registry, "tta_messages_sent_total", message_type="event", **q_shared) == 1
        assert value(registry, "tta_messages_sent_total", message_type="command", **q_inst) == 1
        assert value(registry, "tta_deliveries_acked_total", **q_shared) == 1

        # A reserve that answers when the other queue's took the one slot hands its delivery
        # back at once (released, no attempt counted): those reservations come on top.
        def handled(labels: dict[str, str]) -> float:
            reserved = value(registry, "tta_deliveries_reserved_total", **labels)
            return reserved - value(registry, "tta_deliveries_released_total", **labels)

        assert handled(q_shared) == 1
        assert handled(q_inst) == 6  # ok, permanent, flaky x2, never x2
        assert value(registry, "tta_deliveries_nacked_total", **q_inst) == 2
        dead = value(
            registry, "tta_deliveries_dead_lettered_total", reason="handler_error", **q_inst
        )
        assert dead == 1
        outcomes = families(registry)["tta_handler_duration_seconds"]
        counts: dict[tuple[str, str], float] = {
            (s.labels["queue"], s.labels["outcome"]): s.value
            for s in outcomes.samples
            if s.name.endswith("_count")
        }
        assert counts == {("worker", "ok"): 1, ("worker:*", "ok"): 2, ("worker:*", "error"): 4}

        # a request and its reply; a response nobody waits for is late
        async def answer(delivery: Delivery) -> None:
            await coord.reply(delivery, {"ok": True})

        async with anyio.create_task_group() as tg:
            await tg.start(coord.serve, WORKER, answer)
            await coord.request(WORKER, {"q": 1}, timeout=5)
            tg.cancel_scope.cancel()
        assert value(registry, "tta_request_duration_seconds_count", outcome="ok") == 1
        reply = {"queue": "tta.reply:*", "agent_type": "tta.reply"}
        assert value(registry, "tta_messages_sent_total", message_type="response", **reply) == 1
        assert value(registry, "tta_deliveries_acked_total", **reply) == 1
        await coord.send(coord.reply_queue, {"stray": True}, message_type="response")
        await until(sink, lambda: value(registry, "tta_responses_late_total", **reply) == 1)

        # release
        await coord.send(WORKER, {"do": "later"})
        (delivery,) = await coord.reserve(WORKER, visibility_timeout=30)
        assert await coord.release(delivery)
        assert value(registry, "tta_deliveries_released_total", **q_inst) == 1


async def test_breaker_transitions_and_registry_events(
    backend: Backend, registry: CollectorRegistry
) -> None:
    sink = PrometheusMetrics(registry)
    config = CircuitBreakerConfig(failure_threshold=1, recovery_timeout=60)
    breaker = CircuitBreaker(backend, "llm", config, metrics=sink)

    async def fail() -> None:
        raise RuntimeError("down")

    with pytest.raises(RuntimeError):
        await breaker.call(fail)
    with pytest.raises(CircuitOpenError):
        await breaker.call(fail)
    opened = {"breaker": "llm", "from_state": "closed", "to_state": "open"}
    assert value(registry, "tta_breaker_transitions_total", **opened) == 1

    agents = AgentRegistry(backend, metrics=sink)
    token = await agents.register(AgentId("planner", "p1"))
    await agents.deregister(AgentId("planner", "p1"), token)
    async with aclosing(agents.events(after="0", wait=1)) as events:
        seen = [event.kind.value async for event, _ in zip_events(events, 2)]
    assert seen == ["registered", "deregistered"]
    assert (
        value(registry, "tta_registry_events_total", kind="registered", agent_type="planner") == 1
    )
    assert (
        value(registry, "tta_registry_events_total", kind="deregistered", agent_type="planner") == 1
    )


async def zip_events(events: AsyncIterator[Any], count: int) -> AsyncIterator[tuple[Any, int]]:
    number = 0
    async for event in events:
        yield event, number
        number += 1
        if number == count:
            return
