"""TracingMiddleware on memory:// with the SDK's in-memory span exporter (asyncio and trio).

One trace from the send through the handler to the reply, parent links right, retries as
separate consumer spans, the W3C context in the headers, semantic-convention attributes.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial

import anyio
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    Backend,
    Delivery,
    QueueFullError,
    RetryPolicy,
    connect,
)
from tta_agent_coordination.coordinator import MessageCoordinator
from tta_agent_coordination.registry import AgentRegistry
from tta_agent_coordination_opentelemetry import TracingMiddleware, destination_template
from tta_agent_coordination_opentelemetry.tracing import (
    ATTEMPT,
    CLIENT_ID,
    CONSUMER_GROUP_NAME,
    CONVERSATION_ID,
    DESTINATION_ANONYMOUS,
    DESTINATION_NAME,
    DESTINATION_TEMPLATE,
    DESTINATION_TEMPORARY,
    ENTRY_ID,
    ERROR_TYPE,
    MESSAGE_ID,
    MESSAGE_TYPE,
    OPERATION_NAME,
    OPERATION_TYPE,
    SYSTEM,
)

pytestmark = pytest.mark.anyio

SVC = AgentId("svc", "1")
NO_WAIT = RetryPolicy(max_attempts=5, base=0.0)


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


@dataclass
class Tracing:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.spans()]
        return found[0]


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracing(provider, exporter)
    provider.shutdown()


def traceparent(span: ReadableSpan) -> str:
    ctx = span.get_span_context()
    assert ctx is not None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def ids(span: ReadableSpan) -> tuple[int, int]:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id, ctx.span_id


def parent_id(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def linked(span: ReadableSpan) -> list[int]:
    return [link.context.span_id for link in span.links]


# -- one trace through request, handler and reply -----------------------------------------


async def test_one_trace_from_request_through_handler_to_reply(
    backend: Backend, tracing: Tracing
) -> None:
    middleware = TracingMiddleware(tracing.provider)
    tracer = tracing.provider.get_tracer("test")
    seen: list[Delivery] = []
    answers: list[AgentMessage] = []
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        seen.append(delivery)
        await worker.reply(delivery, {"echo": delivery.message.payload})

    async with (
        MessageCoordinator(backend, middleware=[middleware]) as worker,
        MessageCoordinator(backend, middleware=[middleware]) as client,
        anyio.create_task_group() as tg,
    ):
        await tg.start(partial(worker.serve, SVC, handler, stop=stop))
        with tracer.start_as_current_span("caller"):
            answers.append(await client.request(SVC, {"q": 1}, timeout=10))
        stop.set()  # serve returns once the handler (and its span) is done
    (answer,) = answers
    assert answer.payload == {"echo": {"q": 1}}

    caller = tracing.one("caller")
    send = tracing.one("send svc:*")
    process = tracing.one("process svc:*")
    reply = tracing.one("send tta.reply:*")
    trace_id = ids(caller)[0]
    assert {ids(s)[0] for s in (send, process, reply)} == {trace_id}  # one trace
    assert parent_id(send) == ids(caller)[1]
    assert parent_id(process) == ids(send)[1]
    assert linked(process) == [ids(send)[1]]  # the creation context, as a link too
    assert parent_id(reply) == ids(process)[1]
    assert (send.kind, process.kind, reply.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.PRODUCER,
    )

    (delivery,) = seen
    request = delivery.message
    assert request.correlation_id is not None
    assert dict(send.attributes or {}) == {
        SYSTEM: "tta",
        OPERATION_TYPE: "send",
        OPERATION_NAME: "send",
        DESTINATION_NAME: "svc:1",
        DESTINATION_TEMPLATE: "svc:*",
        MESSAGE_ID: request.message_id,
        MESSAGE_TYPE: "request",
        CONVERSATION_ID: request.correlation_id,
        CLIENT_ID: str(client.agent_id),
        ENTRY_ID: delivery.entry_id,
    }
    assert dict(process.attributes or {}) == {
        SYSTEM: "tta",
        OPERATION_TYPE: "process",
        OPERATION_NAME: "process",
        DESTINATION_NAME: "svc:1",
        DESTINATION_TEMPLATE: "svc:*",
        MESSAGE_ID: request.message_id,
        MESSAGE_TYPE: "request",
        CONVERSATION_ID: request.correlation_id,
        ENTRY_ID: delivery.entry_id,
        ATTEMPT: 1,
    }
    reply_attributes = dict(reply.attributes or {})
    assert reply_attributes[DESTINATION_NAME] == str(client.reply_queue)
    assert reply_attributes[DESTINATION_TEMPORARY] is True
    assert reply_attributes[DESTINATION_ANONYMOUS] is True
    assert reply_attributes[CONVERSATION_ID] == request.correlation_id
    assert reply_attributes[MESSAGE_TYPE] == "response"
    assert reply_attributes[MESSAGE_ID] == answer.message_id
    assert process.status.status_code is StatusCode.UNSET


async def test_the_headers_carry_the_producer_span_as_w3c_trace_context(
    backend: Backend, tracing: Tracing
) -> None:
    coord = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
    message = AgentMessage(sender=AgentId("a"), recipient=SVC, headers={"x-app": "kept"})
    await coord.send(message)
    assert message.headers == {"x-app": "kept"}  # the caller's object is not changed
    (delivery,) = await backend.queue.reserve(SVC, visibility_timeout=30)
    send = tracing.one("send svc:*")
    assert delivery.message.headers == {"x-app": "kept", "traceparent": traceparent(send)}
    assert traceparent(send).startswith(f"00-{ids(send)[0]:032x}-{ids(send)[1]:016x}-")


async def test_a_message_sent_on_gets_a_new_context_linked_to_the_old(
    backend: Backend, tracing: Tracing
) -> None:
    coord = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
    await coord.send(AgentId("first"), {"n": 1})
    (received,) = await backend.queue.reserve(AgentId("first"), visibility_timeout=30)
    stale = {**received.message.headers, "tracestate": "vendor=stale"}
    forwarded = received.message.model_copy(update={"recipient": SVC, "headers": stale})
    await coord.send(forwarded)
    (delivery,) = await backend.queue.reserve(SVC, visibility_timeout=30)
    first, second = tracing.one("send first"), tracing.one("send svc:*")
    assert linked(second) == [ids(first)[1]]
    # The new context replaces every propagation field, the stale tracestate included.
    assert delivery.message.headers == {"traceparent": traceparent(second)}


# -- retries ------------------------------------------------------------------------------


async def test_each_retry_is_its_own_consumer_span_under_the_one_producer(
    backend: Backend, tracing: Tracing
) -> None:
    coord = MessageCoordinator(
        backend, middleware=[TracingMiddleware(tracing.provider)], retry_policy=NO_WAIT
    )
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        if delivery.attempt < 3:
            raise ConnectionError("flaky")
        stop.set()

    entry = await coord.send(SVC, {"job": 1})
    with anyio.fail_after(10):
        await coord.serve(SVC, handler, stop=stop)

    send = tracing.one("send svc:*")
    processes = sorted(tracing.named("process svc:*"), key=lambda s: s.start_time or 0)
    assert [dict(s.attributes or {})[ATTEMPT] for s in processes] == [1, 2, 3]
    assert {ids(s)[0] for s in processes} == {ids(send)[0]}
    assert {parent_id(s) for s in processes} == {ids(send)[1]}
    assert all(linked(s) == [ids(send)[1]] for s in processes)
    assert len({ids(s)[1] for s in processes}) == 3  # three distinct spans
    assert all(dict(s.attributes or {})[ENTRY_ID] == entry for s in processes)
    failed, ok = processes[:2], processes[2]
    for span in failed:
        assert span.status.status_code is StatusCode.ERROR
        assert dict(span.attributes or {})[ERROR_TYPE] == "ConnectionError"
        assert [event.name for event in span.events] == ["exception"]
    assert ok.status.status_code is StatusCode.UNSET
    assert ERROR_TYPE not in dict(ok.attributes or {})


async def test_a_timeout_names_its_error_type(backend: Backend, tracing: Tracing) -> None:
    coord = MessageCoordinator(
        backend,
        middleware=[TracingMiddleware(tracing.provider)],
        retry_policy=RetryPolicy(max_attempts=1),
    )
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        stop.set()
        await anyio.sleep_forever()

    await coord.send(SVC)
    with anyio.fail_after(10):
        await coord.serve(SVC, handler, stop=stop, handler_timeout=0.05, grace=5)
    process = tracing.one("process svc:*")
    assert process.status.status_code is StatusCode.ERROR
    assert (
        dict(process.attributes or {})[ERROR_TYPE]
        == "tta_agent_coordination.errors.HandlerTimeoutError"
    )
    assert (await backend.queue.stats(SVC)).dead == 1


# -- producers that fail, shared queues, context without headers -------------------------


async def test_a_failed_send_is_an_error_span(tracing: Tracing) -> None:
    async with connect("memory://?max_queue_length=1") as backend:
        coord = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
        await coord.send(SVC)
        with pytest.raises(QueueFullError):
            await coord.send(SVC)
    ok, full = tracing.named("send svc:*")
    assert ok.status.status_code is StatusCode.UNSET
    assert full.status.status_code is StatusCode.ERROR
    attributes = dict(full.attributes or {})
    assert attributes[ERROR_TYPE] == "tta_agent_coordination.errors.QueueFullError"
    assert ENTRY_ID not in attributes


async def test_a_shared_queue_names_its_consumer_group(backend: Backend, tracing: Tracing) -> None:
    coord = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        stop.set()

    await coord.send(AgentId("svc"), {"for": "anyone"})
    with anyio.fail_after(10):
        await coord.serve(SVC, handler, stop=stop)  # also serves the shared queue
    process = tracing.one("process svc")
    attributes = dict(process.attributes or {})
    assert attributes[DESTINATION_NAME] == "svc"
    assert attributes[DESTINATION_TEMPLATE] == "svc"
    assert attributes[CONSUMER_GROUP_NAME] == "svc"
    assert parent_id(process) == ids(tracing.one("send svc"))[1]


async def test_a_message_without_context_is_processed_in_the_current_one(
    backend: Backend, tracing: Tracing
) -> None:
    plain = MessageCoordinator(backend)  # an uninstrumented producer
    traced = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        stop.set()

    with anyio.fail_after(10):
        await plain.send(SVC)
        await traced.serve(SVC, handler, stop=stop)
        stop = anyio.Event()
        await plain.send(SVC)
        with tracing.provider.get_tracer("test").start_as_current_span("worker"):
            await traced.serve(SVC, handler, stop=stop)
    root, child = sorted(tracing.named("process svc:*"), key=lambda s: s.start_time or 0)
    assert root.parent is None
    assert root.links == ()
    assert parent_id(child) == ids(tracing.one("worker"))[1]


async def test_baggage_travels_with_the_default_propagator_only(
    backend: Backend, tracing: Tracing
) -> None:
    default = MessageCoordinator(backend, middleware=[TracingMiddleware(tracing.provider)])
    tracecontext_only = MessageCoordinator(
        backend,
        middleware=[
            TracingMiddleware(tracing.provider, propagator=TraceContextTextMapPropagator())
        ],
    )
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        await default.send(SVC, {"via": "default"})
        await tracecontext_only.send(SVC, {"via": "tracecontext"})
    finally:
        context.detach(token)
    got: dict[str, object] = {}
    stop = anyio.Event()

    async def handler(delivery: Delivery) -> None:
        payload = delivery.message.payload
        assert isinstance(payload, dict)
        got[str(payload["via"])] = baggage.get_baggage("tenant")
        if len(got) == 2:
            stop.set()

    with anyio.fail_after(10):
        await default.serve(SVC, handler, stop=stop)
    assert got == {"default": "acme", "tracecontext": None}


async def test_custom_system_name_and_the_current_propagator(tracing: Tracing) -> None:
    middleware = TracingMiddleware(tracing.provider, system="agents")
    async with connect("memory://") as backend:
        await MessageCoordinator(backend, middleware=[middleware]).send(SVC)
    assert dict(tracing.one("send svc:*").attributes or {})[SYSTEM] == "agents"
    assert middleware.propagator is not None
    custom = TraceContextTextMapPropagator()
    assert TracingMiddleware(propagator=custom).propagator is custom


def test_destination_templates() -> None:
    assert destination_template(AgentId("svc")) == "svc"
    assert destination_template(AgentId("svc", "1")) == "svc:*"


def test_the_core_imports_no_opentelemetry() -> None:
    code = (
        "import sys, tta_agent_coordination, tta_agent_coordination.coordinator;"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


async def test_broadcast_copies_and_the_original_api_are_traced(
    backend: Backend, tracing: Tracing
) -> None:
    registry = AgentRegistry(backend)
    for instance in ("1", "2"):
        await registry.register(AgentId("svc", instance))
    coord = MessageCoordinator(
        backend, middleware=[TracingMiddleware(tracing.provider)], registry=registry
    )
    entries = await coord.broadcast("svc", {"all": True})
    message = AgentMessage(sender=AgentId("a"), recipient=AgentId("other"))
    result = await coord.send_message(AgentId("a"), AgentId("other"), message)
    copies = tracing.named("send svc:*")
    assert sorted(str(dict(s.attributes or {})[ENTRY_ID]) for s in copies) == sorted(entries)
    assert sorted(str(dict(s.attributes or {})[DESTINATION_NAME]) for s in copies) == [
        "svc:1",
        "svc:2",
    ]
    assert len({ids(s)[1] for s in copies}) == 2  # one producer span per copy
    original = tracing.one("send other")
    assert dict(original.attributes or {})[MESSAGE_ID] == result.message_id
