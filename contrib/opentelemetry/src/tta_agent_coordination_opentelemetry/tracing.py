"""``TracingMiddleware``: OpenTelemetry spans around every send and every handled message.

The coordinator's :class:`~tta_agent_coordination.coordinator.Middleware` hook is all it needs:

* ``on_send`` (every ``send``, ``request``, ``reply``, ``broadcast`` copy and
  ``send_message``) opens a ``PRODUCER`` span ``send <destination>`` and injects its context
  into the outgoing message's ``headers`` (W3C ``traceparent``/``tracestate``, and ``baggage``
  with the default propagator): that span is the message's *creation context*.
* ``on_handle`` (every handler run in ``serve``) extracts the creation context from the
  delivered message's headers and opens a ``CONSUMER`` span ``process <destination>``, a
  child of the producer span and linked to it, current while the handler runs. A ``reply``
  sent from the handler is therefore a child of the consumer span, so one trace runs from the
  request's producer through the consumer to the response's producer. Each delivery of a
  retried message is its own consumer span under the same producer span.

Attributes follow OpenTelemetry's messaging semantic conventions (``messaging.system``,
``messaging.destination.name``, ``messaging.operation.type``/``.name``,
``messaging.message.id``, ``messaging.message.conversation_id``,
``messaging.consumer.group.name``, ``error.type``); what only this system has lives under
``messaging.tta.*`` (entry id, attempt, message type). ``{destination}`` in span names is the
destination template: the queue's agent type for a shared queue, ``type:*`` for an instance
queue (span names stay low-cardinality; the full queue is ``messaging.destination.name``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Link, SpanKind

from tta_agent_coordination.coordinator import REPLY_QUEUE_TYPE

from ._version import __version__

if TYPE_CHECKING:
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import TracerProvider
    from opentelemetry.util.types import AttributeValue

    from tta_agent_coordination.coordinator import HandleNext, SendNext
    from tta_agent_coordination.models import AgentId, AgentMessage, Delivery

__all__ = [
    "ATTEMPT",
    "CLIENT_ID",
    "CONSUMER_GROUP_NAME",
    "CONVERSATION_ID",
    "DESTINATION_ANONYMOUS",
    "DESTINATION_NAME",
    "DESTINATION_TEMPLATE",
    "DESTINATION_TEMPORARY",
    "ENTRY_ID",
    "ERROR_TYPE",
    "MESSAGE_ID",
    "MESSAGE_TYPE",
    "OPERATION_NAME",
    "OPERATION_TYPE",
    "SYSTEM",
    "TracingMiddleware",
    "destination_template",
]

# The semantic conventions' attribute names (messaging: development status; error.type: stable).
SYSTEM: Final = "messaging.system"
DESTINATION_NAME: Final = "messaging.destination.name"
DESTINATION_TEMPLATE: Final = "messaging.destination.template"
DESTINATION_TEMPORARY: Final = "messaging.destination.temporary"
DESTINATION_ANONYMOUS: Final = "messaging.destination.anonymous"
OPERATION_TYPE: Final = "messaging.operation.type"
OPERATION_NAME: Final = "messaging.operation.name"
MESSAGE_ID: Final = "messaging.message.id"
CONVERSATION_ID: Final = "messaging.message.conversation_id"
CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
CLIENT_ID: Final = "messaging.client.id"
ERROR_TYPE: Final = "error.type"
# This system's own attributes, in the messaging.{system} namespace the conventions reserve.
ENTRY_ID: Final = "messaging.tta.entry_id"
ATTEMPT: Final = "messaging.tta.delivery.attempt"
MESSAGE_TYPE: Final = "messaging.tta.message.type"

_TRACER_NAME: Final = "tta_agent_coordination_opentelemetry"


def destination_template(queue: AgentId) -> str:
    """The low-cardinality name of a queue: ``type`` (shared queue) or ``type:*`` (instance)."""
    return queue.type if queue.instance is None else f"{queue.type}:*"


def _error_type(exc: BaseException) -> str:
    """``error.type``: the exception class's fully qualified name (bare for builtins)."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class _HeaderSetter(Setter[dict[str, str]]):
    """Writes propagation fields into a copy of a message's headers."""

    def set(self, carrier: dict[str, str], key: str, value: str) -> None:
        carrier[key] = value


_SETTER: Final = _HeaderSetter()


class TracingMiddleware:
    """Producer and consumer spans, with trace context carried in message headers.

    Give it to the coordinator: ``MessageCoordinator(backend, middleware=[TracingMiddleware()])``.
    Put it first in the list when other middleware should run inside its spans.

    Args:
        tracer_provider: Where spans go (the global tracer provider when ``None``).
        propagator: How context is written to and read from headers (the global text-map
            propagator when ``None``, looked up at each message: by default W3C trace context
            and baggage).
        system: The ``messaging.system`` attribute.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
        system: str = "tta",
    ) -> None:
        self._tracer = trace.get_tracer(_TRACER_NAME, __version__, tracer_provider=tracer_provider)
        self._propagator = propagator
        self._system = system

    @property
    def propagator(self) -> TextMapPropagator:
        """The propagator in use now."""
        return propagate.get_global_textmap() if self._propagator is None else self._propagator

    async def on_send(self, message: AgentMessage, call_next: SendNext) -> str:
        """A ``PRODUCER`` span around the enqueue; its context goes into ``headers``."""
        propagator = self.propagator
        attributes = self._common(message, message.recipient, "send")
        attributes[CLIENT_ID] = str(message.sender)
        # A message that already carries a context (a received message sent on) gets a new one,
        # the old context kept as a link.
        previous = trace.get_current_span(propagator.extract(message.headers)).get_span_context()
        links = [Link(previous)] if previous.is_valid else []
        with self._tracer.start_as_current_span(
            f"send {destination_template(message.recipient)}",
            kind=SpanKind.PRODUCER,
            attributes=attributes,
            links=links,
        ) as span:
            headers = {k: v for k, v in message.headers.items() if k not in propagator.fields}
            propagator.inject(headers, setter=_SETTER)
            try:
                entry_id = await call_next(message.model_copy(update={"headers": headers}))
            except BaseException as exc:
                span.set_attribute(ERROR_TYPE, _error_type(exc))
                raise
            span.set_attribute(ENTRY_ID, entry_id)
            return entry_id

    async def on_handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """A ``CONSUMER`` span around the handler, child of and linked to the producer span."""
        message = delivery.message
        creation = self.propagator.extract(message.headers)
        producer = trace.get_current_span(creation).get_span_context()
        attributes = self._common(message, delivery.queue, "process")
        attributes[ENTRY_ID] = delivery.entry_id
        attributes[ATTEMPT] = delivery.attempt
        if delivery.queue.instance is None:  # a shared queue: its type's instances compete
            attributes[CONSUMER_GROUP_NAME] = delivery.queue.type
        # The message's context (span and baggage) is current while the handler runs; one sent
        # without trace context is processed in whatever context is current here.
        token = otel_context.attach(creation) if producer.is_valid else None
        try:
            with self._tracer.start_as_current_span(
                f"process {destination_template(delivery.queue)}",
                kind=SpanKind.CONSUMER,
                attributes=attributes,
                links=[Link(producer)] if producer.is_valid else [],
            ) as span:
                try:
                    await call_next(delivery)
                except BaseException as exc:
                    span.set_attribute(ERROR_TYPE, _error_type(exc))
                    raise
        finally:
            if token is not None:
                otel_context.detach(token)

    def _common(
        self, message: AgentMessage, queue: AgentId, operation: str
    ) -> dict[str, AttributeValue]:
        attributes: dict[str, AttributeValue] = {
            SYSTEM: self._system,
            OPERATION_TYPE: operation,
            OPERATION_NAME: operation,
            DESTINATION_NAME: str(queue),
            DESTINATION_TEMPLATE: destination_template(queue),
            MESSAGE_ID: message.message_id,
            MESSAGE_TYPE: message.message_type,
        }
        if queue.type == REPLY_QUEUE_TYPE:  # one per coordinator, named by a fresh uuid
            attributes[DESTINATION_TEMPORARY] = True
            attributes[DESTINATION_ANONYMOUS] = True
        if message.correlation_id is not None:
            attributes[CONVERSATION_ID] = message.correlation_id
        return attributes
