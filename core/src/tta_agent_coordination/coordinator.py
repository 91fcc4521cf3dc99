"""The message coordinator: send, request/response, broadcast, capability routing, the worker loop.

One :class:`MessageCoordinator` per process (or per logical client) over any backend::

    async with connect("memory://") as backend, MessageCoordinator(backend) as coord:
        await coord.send(AgentId("world_builder"), {"scene": 3})
        answer = await coord.request(AgentId("narrator", "n1"), {"q": "..."}, timeout=5)
        await coord.serve(AgentId("world_builder", "w1"), handle, concurrency=4)

The new API and the original API's methods live on the same class:

* **New API.** :meth:`~MessageCoordinator.send`, :meth:`~MessageCoordinator.request`,
  :meth:`~MessageCoordinator.reply`, :meth:`~MessageCoordinator.broadcast`,
  :meth:`~MessageCoordinator.route`, :meth:`~MessageCoordinator.serve`, and the queue
  operations on deliveries: :meth:`~MessageCoordinator.reserve` (batch, with ``wait``),
  ``ack(delivery)``, ``nack(delivery)``, :meth:`~MessageCoordinator.release`,
  :meth:`~MessageCoordinator.dead_letter`, :meth:`~MessageCoordinator.extend`.
* **Original API.** :meth:`~MessageCoordinator.send_message`,
  :meth:`~MessageCoordinator.broadcast_message`,
  :meth:`~MessageCoordinator.subscribe_to_messages`, ``receive(agent_id, visibility_timeout)``,
  ``ack(agent_id, token)``, ``nack(agent_id, token, failure, error)``,
  :meth:`~MessageCoordinator.recover_pending`, :meth:`~MessageCoordinator.configure`, with the
  original's signatures and defaults.

The names the two APIs share are resolved by the first argument: ``ack``/``nack`` take a
:class:`~tta_agent_coordination.models.Delivery` (new) or an ``AgentId`` and a token
(original); ``receive`` keeps the original's one-message form and :meth:`reserve` is the new
batch form.

Design decisions (see also ``docs/decisions/``):

* **Reply queue.** Each coordinator has one reply queue, ``AgentId("tta.reply", <uuid hex>)``,
  read by one background task started lazily (on the first :meth:`request`) in the task group
  the coordinator owns inside ``async with``. Requests carry ``reply_to`` and a fresh
  ``correlation_id`` and get ``ttl=timeout``, so an abandoned request expires instead of being
  served. A response nobody waits for any more is acked and counted (``tta_responses_late``).
  The reply queue is dropped when the ``async with`` block ends.
* **Capability routing.** ``send(CapabilityQuery(...))`` asks the registry's ``discover`` for
  the least-loaded live, available match (the load agents report in heartbeats) and sends to
  that agent's own queue; with ``shared=True`` it sends to the shared queue of that agent's
  type instead. No match raises :class:`~tta_agent_coordination.errors.AgentNotFoundError`.
* **Worker loop.** :meth:`serve` runs one reserver task per queue it serves (the agent's own
  queue and, with ``also_shared`` and an instance, its type's shared queue). Each reserver
  blocks in ``reserve(wait=...)`` (woken by enqueues, never polling) asking for at most the
  number of free handler slots, so the two queues share ``concurrency`` slots without holding
  any slot while waiting. In the rare case both reservers return more deliveries than there
  are free slots, the surplus is ``release``d at once (no attempt counted) and that reserver
  waits for a free slot before reserving again. The handlers that finish in one event-loop
  turn are acked together (one ``ack_many`` per queue), and one task per loop keeps the
  reservations of long-running handlers (no task or task group per delivery).
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol, Self, overload, runtime_checkable

import anyio
from pydantic import JsonValue

from . import checks
from ._compat_models import CompatConfig, MessageSubscription, ReceivedMessage
from ._log import log_delivery, log_message
from .errors import (
    AgentNotFoundError,
    BroadcastError,
    CircuitOpenError,
    CoordinationError,
    HandlerTimeoutError,
    PermanentFailureError,
    QueueFullError,
    RequestTimeoutError,
    ValidationError,
)
from .metrics import (
    DELIVERIES_ACKED,
    DELIVERIES_DEAD_LETTERED,
    DELIVERIES_NACKED,
    DELIVERIES_RELEASED,
    DELIVERIES_RESERVED,
    HANDLER_DURATION,
    MESSAGES_SENT,
    NOOP_METRICS,
    REQUEST_DURATION,
    RESPONSES_LATE,
    MetricsSink,
    NoopMetrics,
)
from .models import (
    AgentId,
    AgentInfo,
    AgentMessage,
    BreakerSnapshot,
    BreakerState,
    CapabilityQuery,
    DeadLetterReason,
    Delivery,
    FailureType,
    MessagePriority,
    MessageResult,
    MessageType,
)
from .registry import AgentRegistry
from .retry import RetryPolicy

if TYPE_CHECKING:
    from anyio.abc import TaskGroup, TaskStatus

    from .protocols import Backend

__all__ = [
    "CLIENT_TYPE",
    "REPLY_QUEUE_TTL",
    "REPLY_QUEUE_TYPE",
    "AgentDirectory",
    "BreakerGate",
    "HandleNext",
    "Handler",
    "MessageCoordinator",
    "Middleware",
    "PassThroughMiddleware",
    "SendNext",
]

logger = logging.getLogger(__name__)

#: The agent type of every coordinator's reply queue: ``AgentId("tta.reply", <uuid hex>)``.
REPLY_QUEUE_TYPE: Final = "tta.reply"
#: Seconds a reply queue survives without its reader (which touches it at every reserve).
REPLY_QUEUE_TTL: Final = 300.0
#: The agent type of a coordinator's default sender identity: ``AgentId("tta.client", <hex>)``.
CLIENT_TYPE: Final = "tta.client"

#: How long (real seconds) one blocking reserve waits before the loop re-arms it.
_RESERVE_WAIT: Final = 30.0
#: The reply reader's reservation length and batch size.
_REPLY_VISIBILITY: Final = 30.0
_REPLY_BATCH: Final = 64


# ---------------------------------------------------------------------------------------------
# Errors, handlers, middleware and the small protocols the coordinator needs
# ---------------------------------------------------------------------------------------------


#: A message handler for :meth:`MessageCoordinator.serve`; its return value is ignored.
Handler = Callable[[Delivery], Awaitable[object]]
#: The rest of the send chain: enqueues the message, returns the entry id.
SendNext = Callable[[AgentMessage], Awaitable[str]]
#: The rest of the handling chain: runs the handler (with its timeout).
HandleNext = Callable[[Delivery], Awaitable[None]]


@runtime_checkable
class Middleware(Protocol):
    """A hook around every send and every handled delivery (tracing, metrics, enrichment).

    Middleware runs in onion order: the first in the coordinator's list is the outermost, so
    it sees a send first and its result last. A middleware may pass a changed copy on (for
    example ``message.model_copy(update={"headers": ...})`` to carry trace context), and
    sees the handler's exception (a :class:`~tta_agent_coordination.errors.HandlerTimeoutError`
    for a timeout) raised from ``call_next``. Subclass :class:`PassThroughMiddleware` to
    implement only one of the two hooks.
    """

    async def on_send(self, message: AgentMessage, call_next: SendNext) -> str:
        """Wrap one enqueue (after routing: ``message.recipient`` is the queue)."""
        ...

    async def on_handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """Wrap one handler run in :meth:`MessageCoordinator.serve`."""
        ...


class PassThroughMiddleware:
    """A middleware that does nothing: subclass it and override one hook."""

    async def on_send(self, message: AgentMessage, call_next: SendNext) -> str:
        """Pass the message on unchanged."""
        return await call_next(message)

    async def on_handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """Pass the delivery on unchanged."""
        await call_next(delivery)


@runtime_checkable
class AgentDirectory(Protocol):
    """What the coordinator reads from a registry.

    A backend's registry store or an :class:`~tta_agent_coordination.registry.AgentRegistry`.
    """

    async def discover(
        self, query: CapabilityQuery, *, limit: int | None = None
    ) -> builtins.list[AgentInfo]:
        """Live, available matches, least loaded first."""
        ...

    async def list(
        self, *, type: str | None = None, capability: str | None = None
    ) -> builtins.list[AgentInfo]:
        """Live agents, optionally of one type."""
        ...


@runtime_checkable
class BreakerGate(Protocol):
    """What :meth:`MessageCoordinator.serve` reads from a breaker.

    A :class:`~tta_agent_coordination.breaker.CircuitBreaker` fits.
    """

    async def snapshot(self) -> BreakerSnapshot:
        """The breaker's shared state now."""
        ...


class _Unset(enum.Enum):
    UNSET = enum.auto()


_UNSET: Final = _Unset.UNSET


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _compat_token(delivery: Delivery) -> str:
    """The original API's token: the receipt with the attempt number appended."""
    return f"{delivery.receipt}#{delivery.attempt}"


def _parse_compat_token(token: str) -> tuple[str, int | None]:
    receipt, sep, attempt = token.rpartition("#")
    if sep and attempt.isdigit() and receipt:
        return receipt, int(attempt)
    return token, None


@dataclass
class _Waiter:
    """One pending request: set when its response arrives."""

    event: anyio.Event = field(default_factory=anyio.Event)
    response: AgentMessage | None = None


# ---------------------------------------------------------------------------------------------
# The coordinator
# ---------------------------------------------------------------------------------------------


class MessageCoordinator:
    """Messaging between agents over a backend: the new API and the original one.

    Use it as ``async with MessageCoordinator(backend) as coord:`` to make requests (the
    coordinator owns the task group of its reply reader and drops its reply queue on exit).
    Everything else, the original API included, also works without ``async with``.

    Args:
        backend: The connected backend (``connect(url)``).
        retry_policy: Delays for ``nack`` and when to dead-letter (``RetryPolicy()`` when
            ``None``); :meth:`serve` may override it.
        metrics: Where sends, reservations, settlements and durations are reported.
        middleware: Hooks around sends and handler runs, outermost first.
        registry: Where broadcasts and capability routes find live agents: an
            ``AgentRegistry`` or any :class:`AgentDirectory` (an ``AgentRegistry`` of the
            backend, built when first needed, when ``None``).
        agent_id: The default sender of this coordinator's messages
            (``AgentId("tta.client", <uuid hex>)`` when ``None``).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        retry_policy: RetryPolicy | None = None,
        metrics: MetricsSink = NOOP_METRICS,
        middleware: Sequence[Middleware] = (),
        registry: AgentDirectory | None = None,
        agent_id: AgentId | None = None,
    ) -> None:
        self._backend = backend
        self._queue = backend.queue
        self._policy = RetryPolicy() if retry_policy is None else retry_policy
        self._metrics = metrics
        # The default sink does nothing: the hot paths then skip building its labels.
        self._counting = type(metrics) is not NoopMetrics
        self._middleware = tuple(middleware)
        self._registry: AgentDirectory | None = registry
        uid = uuid.uuid4().hex
        self._agent_id = AgentId(CLIENT_TYPE, uid) if agent_id is None else agent_id
        self._reply_queue = AgentId(REPLY_QUEUE_TYPE, uid)
        self._tg: TaskGroup | None = None
        self._reader_started = False
        self._waiters: dict[str, _Waiter] = {}
        self._compat = CompatConfig()
        self._subscriptions: dict[AgentId, set[str]] = {}

    # -- properties -------------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """The backend the coordinator works on."""
        return self._backend

    @property
    def agent_id(self) -> AgentId:
        """The default sender of this coordinator's messages."""
        return self._agent_id

    @property
    def reply_queue(self) -> AgentId:
        """This coordinator's reply queue (``reply_to`` of its requests)."""
        return self._reply_queue

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy for ``nack`` delays and dead-lettering."""
        return self._policy

    @property
    def metrics(self) -> MetricsSink:
        """The metrics sink."""
        return self._metrics

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The middleware, outermost first."""
        return self._middleware

    @property
    def registry(self) -> AgentDirectory:
        """Where live agents are looked up (an ``AgentRegistry`` of the backend by default)."""
        if self._registry is None:
            self._registry = AgentRegistry(self._backend, metrics=self._metrics)
        return self._registry

    @property
    def compat_config(self) -> CompatConfig:
        """The original API's settings, as :meth:`configure` left them."""
        return self._compat

    # -- lifecycle --------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._tg is not None:
            msg = "this MessageCoordinator is already in use in an async with block"
            raise RuntimeError(msg)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg = self._tg
        if tg is None:  # pragma: no cover  # only when __aexit__ is called without __aenter__
            return None
        self._tg = None
        tg.cancel_scope.cancel()
        try:
            if self._reader_started:
                with anyio.CancelScope(shield=True):
                    try:
                        await self._queue.drop_queue(self._reply_queue)
                    except CoordinationError as error:
                        logger.warning(
                            "could not drop reply queue %s: %s", self._reply_queue, error
                        )
        finally:
            self._reader_started = False
            # The body's own exception is not handed to the task group, so it propagates
            # unchanged (not wrapped in an exception group); only a crash of the reader would.
            await tg.__aexit__(None, None, None)
        return None

    # -- sending ----------------------------------------------------------------------------

    async def route(self, to: AgentId | CapabilityQuery, *, shared: bool = False) -> AgentId:
        """Resolve where a message to ``to`` goes.

        Args:
            to: An agent id (returned as is) or a capability query (resolved to the least
                loaded live, available agent holding a match).
            shared: Send to the shared queue of the agent's type instead of its own queue.

        Raises:
            AgentNotFoundError: No live agent matches the query.
        """
        if isinstance(to, AgentId):
            return to.shared if shared else to
        matches = await self.registry.discover(to, limit=1)
        if not matches:
            msg = f"no live, available agent holds a capability matching {to!r}"
            raise AgentNotFoundError(msg)
        agent = matches[0].agent_id
        return agent.shared if shared else agent

    @overload
    async def send(
        self,
        to: AgentMessage,
        /,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str: ...

    @overload
    async def send(
        self,
        to: AgentId | CapabilityQuery,
        payload: JsonValue = ...,
        /,
        *,
        sender: AgentId | None = None,
        message_type: str = MessageType.EVENT,
        priority: int = MessagePriority.NORMAL,
        delay: float | None = None,
        ttl: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: AgentId | None = None,
        shared: bool = False,
    ) -> str: ...

    async def send(
        self,
        to: AgentMessage | AgentId | CapabilityQuery,
        payload: JsonValue | _Unset = _UNSET,
        /,
        *,
        sender: AgentId | None = None,
        message_type: str = MessageType.EVENT,
        priority: int = MessagePriority.NORMAL,
        delay: float | None = None,
        ttl: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str | None = None,
        reply_to: AgentId | None = None,
        shared: bool = False,
    ) -> str:
        """Enqueue a message; return its entry id.

        Either ``send(message)`` with a ready :class:`AgentMessage` (sent to its
        ``recipient``), or ``send(to, payload, ...)`` which builds the message: ``to`` is an
        agent id or a :class:`CapabilityQuery` (see :meth:`route`).

        Args:
            to: The message, or where it goes.
            payload: The JSON payload (``{}`` when left out).
            sender: The sender (this coordinator's :attr:`agent_id` when ``None``).
            message_type: ``"event"`` by default; any string.
            priority: 0..9, higher first.
            delay: Seconds before it becomes due.
            ttl: Seconds it may wait before it is dead-lettered as expired.
            dedup_key: Collapses sends with the same key (see the contract).
            entry_id: A client-chosen entry id (a repeated one writes nothing).
            max_attempts: Deliveries before it is dead-lettered (the backend's default).
            headers: String metadata, e.g. trace context.
            correlation_id: Correlates a response with its request.
            reply_to: Where a response should go.
            shared: With a capability query or agent id, use the type's shared queue.

        Raises:
            AgentNotFoundError: No live agent matches a capability query.
            QueueFullError: The queue is full (nothing written).
            MessageTooLargeError: The message is over the backend's size limit.
            ValidationError: Bad arguments.
        """
        if isinstance(to, AgentMessage):
            if not isinstance(payload, _Unset):
                msg = "send(message) takes no payload: the message carries its own"
                raise ValidationError(msg)
            message = to
        else:
            if isinstance(to, AgentId):  # no await: route() has nothing to look up
                recipient = to.shared if shared else to
            else:
                recipient = await self.route(to, shared=shared)
            fields: dict[str, Any] = {
                "sender": self._agent_id if sender is None else sender,
                "recipient": recipient,
                "message_type": message_type,
                "payload": {} if isinstance(payload, _Unset) else payload,
            }
            # Only what differs from the model's defaults is given (each given field is
            # validated: about a fifth of building a message, more on a cold path).
            normal = priority is MessagePriority.NORMAL or (
                type(priority) is int and priority == MessagePriority.NORMAL
            )
            if not normal:  # (a bool, a float or a string is given: the model decides)
                fields["priority"] = priority
            if ttl is not None:
                fields["ttl"] = ttl
            if headers:
                fields["headers"] = dict(headers)
            if correlation_id is not None:
                fields["correlation_id"] = correlation_id
            if reply_to is not None:
                fields["reply_to"] = reply_to
            message = AgentMessage(**fields)
        return await self._send(
            message, delay=delay, dedup_key=dedup_key, entry_id=entry_id, max_attempts=max_attempts
        )

    async def _send(
        self,
        message: AgentMessage,
        *,
        delay: float | None = None,
        dedup_key: str | None = None,
        entry_id: str | None = None,
        max_attempts: int | None = None,
    ) -> str:
        if not self._middleware:  # the common case: no chain to build
            return await self._enqueue(message, delay, dedup_key, entry_id, max_attempts)

        async def enqueue(final: AgentMessage) -> str:
            return await self._enqueue(final, delay, dedup_key, entry_id, max_attempts)

        call: SendNext = enqueue
        for middleware in reversed(self._middleware):
            call = _wrap_send(middleware, call)
        return await call(message)

    async def _enqueue(
        self,
        message: AgentMessage,
        delay: float | None,
        dedup_key: str | None,
        entry_id: str | None,
        max_attempts: int | None,
    ) -> str:
        entry = await self._queue.enqueue(
            message,
            delay=delay,
            dedup_key=dedup_key,
            entry_id=entry_id,
            max_attempts=max_attempts,
        )
        if self._counting:
            self._metrics.increment(
                MESSAGES_SENT,
                labels={"queue": str(message.recipient), "message_type": str(message.message_type)},
            )
        if logger.isEnabledFor(logging.DEBUG):
            log_message(
                logger,
                logging.DEBUG,
                message,
                message.recipient,
                "sent a %s message",
                message.message_type,
                entry_id=entry,
            )
        return entry

    async def broadcast(
        self,
        agent_type: str,
        payload: JsonValue = None,
        *,
        sender: AgentId | None = None,
        message_type: str = MessageType.EVENT,
        priority: int = MessagePriority.NORMAL,
        delay: float | None = None,
        ttl: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Send one copy to every live instance of ``agent_type``; return the entry ids.

        The instances come from the registry (live ones only), in id order; each copy is its
        own entry (the copies share one ``message_id``). No live instance: nothing is sent
        and the list is empty.

        Args:
            agent_type: The agent type.
            payload: The JSON payload (``None`` sends ``{}``).
            sender: The sender (this coordinator's :attr:`agent_id` when ``None``).
            message_type: ``"event"`` by default.
            priority: 0..9.
            delay: Seconds before the copies become due.
            ttl: Seconds the copies may wait.
            headers: String metadata.

        Raises:
            BroadcastError: Some copies could not be enqueued (the others were); it lists both.
            ValidationError: Bad arguments.
        """
        template = AgentMessage(
            sender=self._agent_id if sender is None else sender,
            recipient=AgentId(agent_type),
            message_type=message_type,
            payload={} if payload is None else payload,
            priority=priority,
            ttl=ttl,
            headers=dict(headers or {}),
        )
        agents = await self.registry.list(type=agent_type)
        sent: dict[AgentId, str] = {}
        failed: dict[AgentId, CoordinationError] = {}
        for agent in sorted(dict.fromkeys(info.agent_id for info in agents)):
            try:
                sent[agent] = await self._send(
                    template.model_copy(update={"recipient": agent}), delay=delay
                )
            except CoordinationError as exc:
                failed[agent] = exc
        if failed:
            raise BroadcastError(sent, failed)
        return list(sent.values())

    # -- request / response -----------------------------------------------------------------

    async def request(
        self,
        to: AgentId | CapabilityQuery | AgentMessage,
        payload: JsonValue = None,
        *,
        timeout: float = 30.0,  # noqa: ASYNC109  # the contract's request(..., timeout)
        sender: AgentId | None = None,
        message_type: str = MessageType.REQUEST,
        priority: int = MessagePriority.NORMAL,
        headers: Mapping[str, str] | None = None,
        shared: bool = False,
    ) -> AgentMessage:
        """Send a request and wait for its response.

        The request carries this coordinator's :attr:`reply_queue` as ``reply_to``, a fresh
        ``correlation_id`` and ``ttl=timeout`` (an abandoned request expires unserved). The
        response is the first message on the reply queue with that correlation id.

        Args:
            to: Where it goes (see :meth:`route`), or a ready message (its ``reply_to``,
                ``correlation_id`` and ``ttl`` are replaced).
            payload: The JSON payload (``None`` sends ``{}``; ignored for a message).
            timeout: Seconds to wait for the response.
            sender: The sender (this coordinator's :attr:`agent_id` when ``None``).
            message_type: ``"request"`` by default.
            priority: 0..9.
            headers: String metadata.
            shared: With a capability query or agent id, use the type's shared queue.

        Returns:
            The response message.

        Raises:
            RequestTimeoutError: No response within ``timeout``.
            RuntimeError: The coordinator is not inside ``async with``.
            AgentNotFoundError, QueueFullError, ValidationError: As :meth:`send`.
        """
        tg = self._tg
        if tg is None:
            msg = "request() needs the coordinator's task group: use `async with` on it first"
            raise RuntimeError(msg)
        checks.duration(timeout, "timeout", positive=True)
        if not self._reader_started:
            self._reader_started = True
            try:
                # Abandoned reply queues (a crashed coordinator) disappear on their own.
                await self._queue.set_queue_ttl(self._reply_queue, REPLY_QUEUE_TTL)
            except BaseException:
                self._reader_started = False
                raise
            tg.start_soon(self._read_replies, name=f"tta reply reader {self._reply_queue}")
        correlation_id = uuid.uuid4().hex
        waiter = _Waiter()
        self._waiters[correlation_id] = waiter
        started = anyio.current_time()
        outcome = "error"
        try:
            if isinstance(to, AgentMessage):
                message = to.model_copy(
                    update={
                        "reply_to": self._reply_queue,
                        "correlation_id": correlation_id,
                        "ttl": timeout,
                    }
                )
                await self._send(message)
            else:
                await self.send(
                    to,
                    {} if payload is None else payload,
                    sender=sender,
                    message_type=message_type,
                    priority=priority,
                    ttl=timeout,
                    headers=headers,
                    correlation_id=correlation_id,
                    reply_to=self._reply_queue,
                    shared=shared,
                )
            with anyio.move_on_after(timeout - (anyio.current_time() - started)):
                await waiter.event.wait()
            if waiter.response is None:
                outcome = "timeout"
                msg = f"no response to the request to {to} within {timeout}s"
                raise RequestTimeoutError(msg)
            outcome = "ok"
            return waiter.response
        finally:
            del self._waiters[correlation_id]
            self._metrics.observe(
                REQUEST_DURATION, anyio.current_time() - started, {"outcome": outcome}
            )

    async def reply(
        self,
        request: Delivery | AgentMessage,
        payload: JsonValue = None,
        *,
        sender: AgentId | None = None,
        message_type: str = MessageType.RESPONSE,
        priority: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> str:
        """Answer a request: send ``payload`` to its ``reply_to`` with its correlation id.

        Args:
            request: The request's delivery (or message).
            payload: The JSON payload of the response (``None`` sends ``{}``).
            sender: The responder (the request's recipient when ``None``).
            message_type: ``"response"`` by default.
            priority: The request's priority when ``None``.
            headers: String metadata.

        Returns:
            The response's entry id.

        Raises:
            ValidationError: The message has no ``reply_to`` or ``correlation_id``.
        """
        message = request.message if isinstance(request, Delivery) else request
        if message.reply_to is None or message.correlation_id is None:
            msg = f"message {message.message_id} has no reply_to and correlation_id to answer"
            raise ValidationError(msg)
        response = AgentMessage(
            sender=message.recipient if sender is None else sender,
            recipient=message.reply_to,
            message_type=message_type,
            payload={} if payload is None else payload,
            priority=message.priority if priority is None else priority,
            correlation_id=message.correlation_id,
            headers=dict(headers or {}),
        )
        return await self._send(response)

    async def _read_replies(self) -> None:
        """The one reply reader: hands each response to its waiting request."""
        failures = 0
        label = {"queue": str(self._reply_queue)}
        while True:
            try:
                deliveries = await self.reserve(
                    self._reply_queue,
                    visibility_timeout=_REPLY_VISIBILITY,
                    max_messages=_REPLY_BATCH,
                    wait=_RESERVE_WAIT,
                )
                for delivery in deliveries:
                    correlation_id = delivery.message.correlation_id
                    waiter = None if correlation_id is None else self._waiters.get(correlation_id)
                    if waiter is not None and waiter.response is None:
                        waiter.response = delivery.message
                        waiter.event.set()
                    else:
                        self._metrics.increment(RESPONSES_LATE, labels=label)
                        log_delivery(
                            logger,
                            logging.INFO,
                            delivery,
                            "a response arrived after its request gave up waiting"
                            " (correlation_id=%s); acked and dropped",
                            correlation_id,
                        )
                if deliveries:
                    acked = await self._queue.ack_many([d.receipt for d in deliveries])
                    self._metrics.increment(DELIVERIES_ACKED, float(sum(acked)), label)
            except CoordinationError as exc:
                failures += 1
                logger.warning(
                    "reply reader for %s failed, retrying: %s",
                    self._reply_queue,
                    exc,
                    extra={"queue": str(self._reply_queue)},
                )
                await anyio.sleep(self._policy.delay(min(failures, 64)))
            else:
                failures = 0

    # -- queue operations (new API, and the original's shared names) -------------------------

    async def reserve(
        self,
        queue: AgentId,
        *,
        visibility_timeout: float = 30.0,
        max_messages: int = 1,
        wait: float | None = None,
    ) -> list[Delivery]:
        """Reserve up to ``max_messages`` deliveries from ``queue``.

        Args:
            queue: The queue (an agent id; no instance for a type's shared queue).
            visibility_timeout: Seconds the deliveries stay reserved.
            max_messages: The most to take at once.
            wait: Seconds to block until something is due (``None``: do not block).
        """
        deliveries = await self._queue.reserve(
            queue, visibility_timeout=visibility_timeout, max_messages=max_messages, wait=wait
        )
        if deliveries:
            if self._counting:
                self._metrics.increment(
                    DELIVERIES_RESERVED, float(len(deliveries)), {"queue": str(queue)}
                )
            if logger.isEnabledFor(logging.DEBUG):
                for delivery in deliveries:
                    log_delivery(logger, logging.DEBUG, delivery, "reserved")
        return deliveries

    async def receive(
        self, agent_id: AgentId, visibility_timeout: float = 5, *, wait: float | None = None
    ) -> ReceivedMessage | None:
        """Reserve the next message of ``agent_id``'s queue (the original API).

        Args:
            agent_id: The queue; ``AgentId(type)`` is the type's shared queue.
            visibility_timeout: Seconds it stays reserved (the original's default: 5).
            wait: Seconds to block until one is due (``None``: do not block).

        Returns:
            The message with its token for ``ack``/``nack``, or ``None`` when none is due.
        """
        deliveries = await self.reserve(
            agent_id, visibility_timeout=visibility_timeout, max_messages=1, wait=wait
        )
        if not deliveries:
            return None
        delivery = deliveries[0]
        return ReceivedMessage.from_delivery(delivery, _compat_token(delivery))

    @overload
    async def ack(self, agent_id: Delivery, /) -> bool: ...

    @overload
    async def ack(self, agent_id: AgentId, token: str) -> bool: ...

    async def ack(self, agent_id: Delivery | AgentId, token: str | None = None) -> bool:
        """Remove a delivered message for good.

        ``ack(delivery)``, or the original's ``ack(agent_id, token)`` with the token of a
        :class:`ReceivedMessage`.

        Returns:
            ``True`` if the reservation was current, ``False`` for a stale one.
        """
        receipt, queue, attempt = self._target(agent_id, token)
        done = await self._queue.ack(receipt)
        if done and self._counting:
            self._metrics.increment(DELIVERIES_ACKED, labels={"queue": str(queue)})
        self._log_settled(agent_id, queue, attempt, done, "acked")
        return done

    async def _ack_many(self, queue: AgentId, deliveries: Sequence[Delivery]) -> list[bool]:
        """Ack deliveries of one queue in one round trip (the worker loop's acks)."""
        results = await self._queue.ack_many([delivery.receipt for delivery in deliveries])
        acked = sum(results)
        if acked and self._counting:
            self._metrics.increment(DELIVERIES_ACKED, float(acked), {"queue": str(queue)})
        debug = logger.isEnabledFor(logging.DEBUG)
        for delivery, done in zip(deliveries, results, strict=True):
            if debug or not done:
                self._log_settled(delivery, queue, delivery.attempt, done, "acked")
        return results

    @overload
    async def nack(
        self,
        agent_id: Delivery,
        /,
        *,
        failure: FailureType = FailureType.TRANSIENT,
        error: str | None = None,
        delay: float | None = None,
    ) -> bool: ...

    @overload
    async def nack(
        self,
        agent_id: AgentId,
        token: str,
        failure: FailureType = FailureType.TRANSIENT,
        error: str | None = None,
    ) -> bool: ...

    async def nack(
        self,
        agent_id: Delivery | AgentId,
        token: str | None = None,
        failure: FailureType = FailureType.TRANSIENT,
        error: str | None = None,
        *,
        delay: float | None = None,
    ) -> bool:
        """Hand a failed delivery back for a later retry, or dead-letter it.

        ``nack(delivery, error=..., delay=None)`` follows the coordinator's
        :class:`RetryPolicy`: due again after ``retry_policy.delay(attempt)`` (or ``delay``),
        dead-lettered with reason ``max_attempts`` once ``attempt`` reaches the smaller of the
        policy's and the entry's ``max_attempts``.

        The original's ``nack(agent_id, token, failure, error)`` follows :meth:`configure`:
        due again after ``min(backoff_base * backoff_factor**(n-1), backoff_max)`` seconds
        (no jitter) for the n-th failed delivery, dead-lettered once the message has been
        delivered ``retry_attempts + 1`` times.

        In both forms ``FailureType.PERMANENT`` dead-letters at once (reason
        ``handler_error``).

        Returns:
            ``True`` if the reservation was current, ``False`` for a stale one.
        """
        receipt, queue, attempt = self._target(agent_id, token)
        about = agent_id if isinstance(agent_id, Delivery) else None
        if failure == FailureType.PERMANENT:
            return await self._dead_letter(
                receipt, queue, DeadLetterReason.HANDLER_ERROR, error, about=about, attempt=attempt
            )
        if isinstance(agent_id, Delivery):
            limit = min(self._policy.max_attempts, agent_id.max_attempts)
            if agent_id.attempt >= limit:
                return await self._dead_letter(
                    receipt,
                    queue,
                    DeadLetterReason.MAX_ATTEMPTS,
                    error,
                    about=about,
                    attempt=attempt,
                )
            wait = self._policy.delay(agent_id.attempt) if delay is None else delay
        else:
            failed = 1 if attempt is None else attempt
            if failed >= self._compat.retry_attempts + 1:
                return await self._dead_letter(
                    receipt,
                    queue,
                    DeadLetterReason.MAX_ATTEMPTS,
                    error,
                    about=about,
                    attempt=attempt,
                )
            wait = self._compat.backoff(failed)
        done = await self._queue.nack(receipt, delay=wait, error=error)
        if done:
            self._metrics.increment(DELIVERIES_NACKED, labels={"queue": str(queue)})
        self._log_settled(agent_id, queue, attempt, done, "nacked, due again in %.3fs", wait)
        return done

    async def release(self, delivery: Delivery) -> bool:
        """Make a delivery due again at once without counting an attempt.

        Returns:
            ``True`` if the reservation was current, ``False`` for a stale one.
        """
        done = await self._queue.release(delivery.receipt)
        if done:
            self._metrics.increment(DELIVERIES_RELEASED, labels={"queue": str(delivery.queue)})
        self._log_settled(delivery, delivery.queue, delivery.attempt, done, "released")
        return done

    async def dead_letter(
        self,
        delivery: Delivery,
        reason: str = DeadLetterReason.HANDLER_ERROR,
        error: str | None = None,
    ) -> bool:
        """Move a delivery to its queue's dead letters.

        Returns:
            ``True`` if the reservation was current, ``False`` for a stale one.
        """
        return await self._dead_letter(
            delivery.receipt,
            delivery.queue,
            reason,
            error,
            about=delivery,
            attempt=delivery.attempt,
        )

    async def extend(self, delivery: Delivery, visibility_timeout: float) -> bool:
        """Keep a delivery reserved for ``visibility_timeout`` more seconds.

        Returns:
            ``True`` if the reservation was current, ``False`` for a stale one.
        """
        return await self._queue.extend(delivery.receipt, visibility_timeout=visibility_timeout)

    async def _dead_letter(
        self,
        receipt: str,
        queue: AgentId,
        reason: str,
        error: str | None,
        *,
        about: Delivery | None,
        attempt: int | None,
    ) -> bool:
        done = await self._queue.dead_letter(receipt, reason=reason, error=error)
        if done:
            self._metrics.increment(
                DELIVERIES_DEAD_LETTERED, labels={"queue": str(queue), "reason": str(reason)}
            )
            log_message(
                logger,
                logging.WARNING,
                None if about is None else about.message,
                queue,
                "dead-lettered (reason=%s): %s",
                reason,
                error,
                entry_id=None if about is None else about.entry_id,
                attempt=attempt,
                extra={"reason": str(reason)},
            )
        else:
            self._log_settled(about, queue, attempt, done, "dead-lettered")
        return done

    @staticmethod
    def _log_settled(
        about: Delivery | AgentId | None,
        queue: AgentId,
        attempt: int | None,
        done: bool,  # private
        verb: str,
        *args: object,
    ) -> None:
        """DEBUG when a settlement went through; a stale receipt (nothing changed) is louder.

        A stale ``ack`` is a WARNING: the message will be delivered again, its work repeated.
        Any other stale settlement is INFO.
        """
        if done and not logger.isEnabledFor(logging.DEBUG):
            return  # the common case: nothing to build
        delivery = about if isinstance(about, Delivery) else None
        if done:
            level, text = logging.DEBUG, verb
        else:
            level = logging.WARNING if verb == "acked" else logging.INFO
            text = "not %s: the receipt was stale (reservation expired or settled)"
            args = (verb.split(",", 1)[0],)
        log_message(
            logger,
            level,
            None if delivery is None else delivery.message,
            queue,
            text,
            *args,
            entry_id=None if delivery is None else delivery.entry_id,
            attempt=attempt,
        )

    @staticmethod
    def _target(agent_id: Delivery | AgentId, token: str | None) -> tuple[str, AgentId, int | None]:
        """``(receipt, queue, attempt)`` from a delivery or an original-API (agent, token)."""
        if isinstance(agent_id, Delivery):
            if token is not None:
                msg = "pass a Delivery alone, or an AgentId with a token"
                raise ValidationError(msg)
            return agent_id.receipt, agent_id.queue, agent_id.attempt
        if token is None:
            msg = f"a token is needed with the agent id {agent_id}"
            raise ValidationError(msg)
        receipt, attempt = _parse_compat_token(token)
        return receipt, agent_id, attempt

    # -- the original API -------------------------------------------------------------------

    async def send_message(
        self, sender: AgentId, recipient: AgentId, message: AgentMessage
    ) -> MessageResult:
        """Enqueue ``message`` for ``recipient`` (the original API); never raises for a full queue.

        The message is sent with ``sender`` and ``recipient`` set from the arguments (a copy is
        made when they differ) and may be delivered ``retry_attempts + 1`` times.

        Returns:
            ``delivered=True`` with the entry id, or ``delivered=False`` with the error text
            (a full queue, a message over the size limit, an unreachable backend).
        """
        if message.sender != sender or message.recipient != recipient:
            message = message.model_copy(update={"sender": sender, "recipient": recipient})
        try:
            limit = self._compat.queue_size
            if limit < self._backend.options.max_queue_length:
                stats = await self._queue.stats(recipient)
                if stats.live >= limit:
                    raise QueueFullError(str(recipient), limit)
            entry = await self._send(message, max_attempts=self._compat.retry_attempts + 1)
        except CoordinationError as exc:
            return MessageResult(message_id=message.message_id, delivered=False, error=str(exc))
        return MessageResult.ok(message.message_id, entry)

    async def broadcast_message(
        self,
        sender: AgentId,
        message: AgentMessage,
        recipients: Sequence[AgentId] | None = None,
    ) -> list[MessageResult]:
        """Send ``message`` to each recipient (the original API); one result per recipient.

        Args:
            sender: The sender.
            message: The message (its recipient is replaced for each copy).
            recipients: Who gets a copy. ``None`` (an extension of the original, which
                required the list) means every live instance of ``message.recipient.type``,
                from the registry.
        """
        if recipients is None:
            agents = await self.registry.list(type=message.recipient.type)
            recipients = sorted(dict.fromkeys(info.agent_id for info in agents))
        return [await self.send_message(sender, recipient, message) for recipient in recipients]

    def subscribe_to_messages(
        self, agent_id: AgentId, message_types: Sequence[MessageType | str]
    ) -> MessageSubscription:
        """Record that ``agent_id`` is interested in ``message_types`` (the original API).

        As in the original, subscriptions are recorded only (see :meth:`subscriptions`);
        nothing filters deliveries by them. Synchronous, like the original.
        """
        self._subscriptions.setdefault(agent_id, set()).update(str(t) for t in message_types)
        return MessageSubscription(agent_id=agent_id, message_types=list(message_types))

    def subscriptions(self, agent_id: AgentId) -> frozenset[str]:
        """The message types ``agent_id`` subscribed to through this coordinator."""
        return frozenset(self._subscriptions.get(agent_id, ()))

    async def recover_pending(self, agent_id: AgentId | None = None) -> int:
        """Reclaim expired reservations (the original API).

        Reservations whose visibility timeout passed are reclaimed by the store itself on
        every ``reserve`` (no sweeper is needed); this reclaims them at once, in the queue of
        ``agent_id`` or in every queue when it is ``None``, and returns how many it reclaimed
        (requeued, or dead-lettered at their last attempt).
        """
        queues = [agent_id] if agent_id is not None else await self._queue.queues()
        reclaimed = 0
        for queue in queues:
            reclaimed += await self._queue.reclaim(queue)
        return reclaimed

    async def configure(
        self,
        *,
        queue_size: int | None = None,
        retry_attempts: int | None = None,
        backoff_base: float | None = None,
        backoff_factor: float | None = None,
        backoff_max: float | None = None,
    ) -> None:
        """Change the original API's settings; ``None`` keeps a setting as it is.

        The settings start at the original's defaults: ``queue_size=10000``,
        ``retry_attempts=3``, ``backoff_base=1.0``, ``backoff_factor=2.0``,
        ``backoff_max=30.0``. ``queue_size`` below the backend's ``max_queue_length`` makes
        ``send_message`` refuse at that length (a check before the write; the backend's own
        cap is atomic).

        Raises:
            ValidationError: A value out of range.
        """
        changes = {
            "queue_size": queue_size,
            "retry_attempts": retry_attempts,
            "backoff_base": backoff_base,
            "backoff_factor": backoff_factor,
            "backoff_max": backoff_max,
        }
        current = self._compat.model_dump()
        current.update({k: v for k, v in changes.items() if v is not None})
        self._compat = CompatConfig(**current)

    # -- the worker loop --------------------------------------------------------------------

    async def serve(
        self,
        agent_id: AgentId,
        handler: Handler,
        *,
        concurrency: int = 1,
        handler_timeout: float | None = None,
        visibility_timeout: float = 30.0,
        retry_policy: RetryPolicy | None = None,
        breaker: BreakerGate | None = None,
        grace: float = 10.0,
        also_shared: bool = True,
        stop: anyio.Event | None = None,
        abort: anyio.Event | None = None,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``agent_id``'s queue with ``handler`` until cancelled, ``stop`` or ``abort``.

        Runs ``handler(delivery)`` with at most ``concurrency`` at once; acks on success; on
        an exception nacks with ``retry_policy.delay(attempt)`` while ``attempt`` is below the
        smaller of the policy's and the entry's ``max_attempts``, else dead-letters it (reason
        ``max_attempts``) with the error text (``Type: message``). A
        :class:`PermanentFailureError` dead-letters at once (reason ``handler_error``). A
        :class:`~tta_agent_coordination.errors.CircuitOpenError` from the handler releases
        the message (no attempt counted) and pauses reserving for its ``retry_after``.

        A handler that runs long has its reservation extended every ``visibility_timeout/3``
        seconds; one that passes ``handler_timeout`` is cancelled and counts as failed with a
        :class:`~tta_agent_coordination.errors.HandlerTimeoutError`.

        On ``stop`` or cancellation the loop stops reserving, lets running handlers finish
        within ``grace`` seconds (shielded from the cancellation), then cancels the rest and
        releases their messages; a reservation not yet started is released.

        ``abort`` (set at any time, also during the grace period) stops at once: running
        handlers are cancelled without waiting for the grace period, and nothing the loop holds
        is settled or released (no further backend call for it), so those messages become due
        again when their visibility timeout ends, with the attempt counted.

        With ``breaker``, reserving pauses while the breaker is open (for its snapshot's
        ``retry_after``, then checked again), so messages wait instead of burning attempts.

        Use ``await task_group.start(coord.serve, agent_id, handler)`` to wait until the loop
        runs. Registering the agent is separate (``AgentRegistry.registered``).

        Args:
            agent_id: The agent served: its own queue and, with ``also_shared`` and an
                instance, its type's shared queue.
            handler: ``async def handler(delivery) -> object`` (the result is ignored; answer
                requests with :meth:`reply`).
            concurrency: Handlers running at once, across both queues.
            handler_timeout: Seconds before a handler is cancelled (``None``: no limit).
            visibility_timeout: Seconds each reservation lasts (extended while running).
            retry_policy: Overrides the coordinator's policy for this loop.
            breaker: A circuit breaker (anything with ``await snapshot()``).
            grace: Seconds running handlers get to finish on shutdown.
            also_shared: Also serve the type's shared queue.
            stop: Set it to end the loop gracefully.
            abort: Set it to end the loop at once (see above).
            task_status: For ``TaskGroup.start``.

        Raises:
            ValidationError: A bad argument.
        """
        if isinstance(concurrency, bool) or concurrency < 1:
            msg = f"concurrency must be an int of at least 1, not {concurrency!r}"
            raise ValidationError(msg)
        checks.duration(visibility_timeout, "visibility_timeout", positive=True)
        if handler_timeout is not None:
            checks.duration(handler_timeout, "handler_timeout", positive=True)
        if not grace >= 0:
            msg = f"grace must be a number of seconds >= 0, not {grace!r}"
            raise ValidationError(msg)
        worker = _Worker(
            coordinator=self,
            agent_id=agent_id,
            handler=handler,
            slots=_Slots(concurrency),
            handler_timeout=handler_timeout,
            visibility_timeout=visibility_timeout,
            policy=self._policy if retry_policy is None else retry_policy,
            breaker=breaker,
            grace=grace,
        )
        queues = [agent_id]
        if also_shared and agent_id.instance is not None:
            queues.append(agent_id.shared)
        await worker.run(queues, stop, abort, task_status)


def _wrap_send(middleware: Middleware, call_next: SendNext) -> SendNext:
    async def call(message: AgentMessage) -> str:
        return await middleware.on_send(message, call_next)

    return call


def _wrap_handle(middleware: Middleware, call_next: HandleNext) -> HandleNext:
    async def call(delivery: Delivery) -> None:
        await middleware.on_handle(delivery, call_next)

    return call


# ---------------------------------------------------------------------------------------------
# The worker loop's parts
# ---------------------------------------------------------------------------------------------


async def _first_of(*waits: Callable[[], Awaitable[object]] | None) -> None:
    """Return when the first of ``waits`` (those not ``None``) returns; never if none given."""
    async with anyio.create_task_group() as tg:

        async def wait_then_cancel(wait: Callable[[], Awaitable[object]]) -> None:
            await wait()
            tg.cancel_scope.cancel()

        for wait in waits:
            if wait is not None:
                tg.start_soon(wait_then_cancel, wait)
        if all(wait is None for wait in waits):
            await anyio.sleep_forever()


class _Slots:
    """Handler slots shared by the reservers of one :meth:`MessageCoordinator.serve`.

    Counting only (no ``await`` between a check and a change), so it is atomic on one loop.
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self.free = total
        self._changed: anyio.Event | None = None  # made only while someone waits

    def take(self, wanted: int) -> int:
        got = min(wanted, self.free)
        self.free -= got
        return got

    def give(self) -> None:
        self.free += 1
        changed = self._changed
        if changed is not None:
            self._changed = None
            changed.set()

    async def _wait_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    async def wait_free(self) -> None:
        while self.free == 0:
            await self._wait_change()

    async def wait_idle(self) -> None:
        while self.free < self.total:
            await self._wait_change()


@dataclass(eq=False, slots=True)
class _Held:
    """A delivery whose handler runs, and when its reservation is extended next."""

    delivery: Delivery
    due: float
    live: bool = True  # False once its handler finished or its reservation was lost


@dataclass
class _Worker:
    """One running :meth:`MessageCoordinator.serve` loop."""

    coordinator: MessageCoordinator
    agent_id: AgentId
    handler: Handler
    slots: _Slots
    handler_timeout: float | None
    visibility_timeout: float
    policy: RetryPolicy
    breaker: BreakerGate | None
    grace: float
    stopping: bool = False
    aborted: bool = False
    pause_until: float = 0.0
    # Running handlers in start order, for the one task that keeps their reservations.
    held: deque[_Held] = field(default_factory=deque[_Held])
    keeper_wake: anyio.Event | None = None  # set by _hold when the keeper waits for work
    # The acks of one event-loop turn, per queue, sent as one ack_many.
    acks: dict[AgentId, list[Delivery]] = field(default_factory=dict[AgentId, list[Delivery]])
    labels: dict[AgentId, dict[str, str]] = field(default_factory=dict[AgentId, dict[str, str]])
    # On asyncio the handlers run as plain asyncio tasks: anyio's start_soon costs about 12 µs
    # more per task, a third of a message's client time in a busy loop. They belong to the
    # handlers' group all the same: _host_handlers cancels and awaits them where the group
    # ends, and one that raises ends the loop with its error, as a group's task does.
    loop: asyncio.AbstractEventLoop | None = None
    running: set[asyncio.Task[None]] = field(default_factory=set[asyncio.Task[None]])
    handlers_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # the group's
    reservers_scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    failure: BaseException | None = None
    # anyio's clock: on asyncio the loop's own (anyio.current_time asks which library runs
    # first, twice per message).
    now: Callable[[], float] = anyio.current_time

    async def run(
        self,
        queues: list[AgentId],
        stop: anyio.Event | None,
        abort: anyio.Event | None,
        task_status: TaskStatus[None],
    ) -> None:
        aborted = abort.wait if abort is not None else None
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): the handlers run as anyio's tasks
            self.loop = None
        else:
            self.now = self.loop.time  # what anyio.current_time() gives on asyncio
        async with anyio.create_task_group() as root:
            handlers: TaskGroup = await root.start(self._host_handlers)
            try:
                async with anyio.create_task_group() as reservers:
                    self.reservers_scope = reservers.cancel_scope
                    for queue in queues:
                        reservers.start_soon(self._reserve_loop, queue, handlers)
                    task_status.started()
                    await _first_of(stop.wait if stop is not None else None, aborted)
                    reservers.cancel_scope.cancel()
            finally:
                self.stopping = True
                with anyio.CancelScope(shield=True):
                    with anyio.move_on_after(self.grace):
                        await _first_of(self.slots.wait_idle, aborted)
                    self.aborted = abort is not None and abort.is_set()
                    # The handlers still running, the visibility keeper and the host.
                    handlers.cancel_scope.cancel()

    async def _host_handlers(self, *, task_status: TaskStatus[TaskGroup]) -> None:
        """Hold the handlers' task group until :meth:`run` cancels it.

        The group is shielded, so a cancelled ``serve`` does not reach the handlers (they get
        the grace period); one shield for all of them instead of a cancel scope per delivery.
        """
        async with anyio.create_task_group() as handlers:
            handlers.cancel_scope.shield = True
            self.handlers_scope = handlers.cancel_scope
            handlers.start_soon(self._keep_visible)
            task_status.started(handlers)
            try:
                await anyio.sleep_forever()
            finally:
                # The group ends (cancelled by run, or a handler task failed): so do the
                # handlers running as plain asyncio tasks; they wind down (release) first.
                while self.running:  # (one started meanwhile is cancelled in the next round)
                    running = set(self.running)
                    for task in running:
                        task.cancel()
                    with anyio.CancelScope(shield=True):
                        await asyncio.wait(running)
        if self.failure is not None:  # the group was cancelled for it: end the loop with it
            raise self.failure

    def _start(self, handlers: TaskGroup, delivery: Delivery) -> None:
        """Run ``_handle(delivery)`` in the handlers' group (a plain task on asyncio)."""
        loop = self.loop
        if loop is None:
            handlers.start_soon(self._handle, delivery)
            return
        self._track(loop.create_task(self._handle(delivery)))

    def _track(self, task: asyncio.Task[None]) -> None:
        """Count a plain asyncio task as one of the handlers' group's (see _host_handlers)."""
        self.running.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A plain handler task ended: one that raised ends the loop (see _host_handlers)."""
        self.running.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.failure is None:
            self.failure = error
            self.reservers_scope.cancel()  # no more deliveries: the loop ends with the error
            self.handlers_scope.cancel()

    async def _reserve_loop(self, queue: AgentId, handlers: TaskGroup) -> None:
        failures = 0
        while True:
            await self.slots.wait_free()
            await self._gate()
            # At least one: if the other reserver took the free slots while this one was at
            # the gate, the surplus below hands the delivery back and the loop waits for a slot.
            free = max(self.slots.free, 1)
            try:
                if self.loop is not None:
                    await self._hand_back(await self._reserve_in_handler(queue, free, handlers))
                    failures = 0
                    continue
                deliveries = await self._reserve(queue, free)
            except CoordinationError as exc:
                failures += 1
                logger.warning(
                    "reserving from %s failed, retrying: %s",
                    queue,
                    exc,
                    extra={"queue": str(queue)},
                )
                await anyio.sleep(self.policy.delay(min(failures, 64)))
                continue
            failures = 0
            started = self.slots.take(len(deliveries))
            for delivery in deliveries[:started]:
                self._start(handlers, delivery)
            if started:
                # Let the handlers start before the next reserve: its call runs on this task
                # until the driver waits for the reply, which delayed their start by that much
                # (trio shuffles ready tasks, so there it is likely).
                await anyio.lowlevel.checkpoint()
            await self._hand_back(deliveries[started:])

    async def _reserve(self, queue: AgentId, free: int) -> list[Delivery]:
        """The loop's reserve: up to ``free`` deliveries, waiting for the first."""
        return await self.coordinator.reserve(
            queue, visibility_timeout=self.visibility_timeout, max_messages=free, wait=_RESERVE_WAIT
        )

    async def _hand_back(self, surplus: list[Delivery]) -> None:
        """Release deliveries no slot was free for (shielded: a reservation is never left)."""
        with anyio.CancelScope(shield=True):
            for delivery in surplus:
                await self._settle(self.coordinator.release, delivery)

    async def _reserve_in_handler(
        self, queue: AgentId, free: int, handlers: TaskGroup
    ) -> list[Delivery]:
        """(asyncio) Reserve in a new task that goes on to run the first delivery's handler.

        A delivery that reaches an idle loop then starts its handler at once, in the task
        whose reserve returned it, instead of in a task started for it, which runs after
        whatever the event loop had queued meanwhile (the producer's own reply, in a process
        that sends and serves: 30 µs of the enqueue-to-handler latency). The task is a handler
        task from then on (``_Worker.running``). Returns the surplus (no slot was free for it),
        for the caller to hand back; a failed reserve raises here. Cancelled while the task
        still waits for deliveries, the task is cancelled (its reserve leaves nothing behind)
        and awaited; cancelled once it has them, the surplus is handed back.
        """
        assert self.loop is not None  # noqa: S101  # only called on asyncio
        got: asyncio.Future[list[Delivery]] = self.loop.create_future()
        reserver = self.loop.create_task(self._reserve_then_handle(queue, free, handlers, got))
        try:
            return await asyncio.shield(got)  # cancelling this wait must not cancel `got`
        except anyio.get_cancelled_exc_class():
            if not got.done():
                reserver.cancel()
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([reserver])
            await self._hand_back(
                got.result() if got.done() and not got.cancelled() and not got.exception() else []
            )
            raise

    async def _reserve_then_handle(
        self,
        queue: AgentId,
        free: int,
        handlers: TaskGroup,
        got: asyncio.Future[list[Delivery]],
    ) -> None:
        """The task of :meth:`_reserve_in_handler`: reserve, start the others, run the first."""
        try:
            deliveries = await self._reserve(queue, free)
        except Exception as exc:  # noqa: BLE001  # the loop reports it (or ends with it)
            got.set_exception(exc)
            return
        except BaseException:  # cancelled by the loop: its reserve left nothing reserved
            got.cancel()
            raise
        # No await from here to the handler: the loop sees either no deliveries or all of them
        # started (or in the surplus it hands back).
        started = self.slots.take(len(deliveries))
        for delivery in deliveries[1:started]:  # started before the loop reserves again
            self._start(handlers, delivery)
        got.set_result(deliveries[started:])
        if started:
            task = asyncio.current_task()
            assert task is not None  # noqa: S101  # this runs in a task
            self._track(task)
            await self._handle(deliveries[0])

    async def _gate(self) -> None:
        """Wait while a handler reported an open circuit or the breaker is open."""
        while True:
            pause = self.pause_until - self.now()
            if pause > 0:
                await anyio.sleep(pause)
                continue
            if self.breaker is None:
                return
            try:
                snapshot = await self.breaker.snapshot()
            except CoordinationError as exc:  # fail open: the handler's own calls will tell
                logger.warning("reading the breaker failed, reserving anyway: %s", exc)
                return
            if snapshot.state != BreakerState.OPEN or not snapshot.retry_after:
                return
            await anyio.sleep(snapshot.retry_after)

    async def _handle(self, delivery: Delivery) -> None:
        # Runs in the shielded handlers' group (see _host_handlers).
        handed = False  # its slot went to another handler's ack batch (see _ack)
        try:
            if not self.stopping:
                handed = await self._process(delivery)
            elif not self.aborted:  # an abort leaves it reserved until visibility ends
                log_delivery(logger, logging.INFO, delivery, "not started: released")
                await self._settle(self.coordinator.release, delivery)
            else:
                log_delivery(logger, logging.INFO, delivery, "not started: left reserved")
        finally:
            if not handed:
                self.slots.give()

    async def _process(self, delivery: Delivery) -> bool:
        """Run the handler and settle the delivery; whether its slot went to an ack batch."""
        started = self.now()
        labels = self.labels.get(delivery.queue)
        if labels is None:
            labels = self.labels[delivery.queue] = {"queue": str(delivery.queue)}
        held = _Held(delivery, started + self.visibility_timeout / 3)
        self._hold(held)
        failure: Exception | None = None
        try:
            try:
                await self._chain(delivery)
            except Exception as exc:  # noqa: BLE001  # any handler failure is settled below
                failure = exc
            finally:
                held.live = False
        except anyio.get_cancelled_exc_class():
            # The grace period ran out: hand the message back untouched (an abort leaves
            # it reserved, due again when its visibility timeout ends).
            self._observe(started, labels, "aborted" if self.aborted else "cancelled")
            log_delivery(
                logger,
                logging.WARNING,
                delivery,
                "handler cancelled at shutdown (%s): %s",
                "aborted" if self.aborted else f"past the {self.grace}s grace period",
                "left reserved" if self.aborted else "released",
            )
            if not self.aborted:
                with anyio.CancelScope(shield=True):
                    await self._settle(self.coordinator.release, delivery)
            raise
        if failure is None:
            duration = self._observe(started, labels, "ok")
            log_delivery(logger, logging.DEBUG, delivery, "handled in %.3fs", duration)
            return await self._ack(delivery)
        if isinstance(failure, CircuitOpenError):
            self._observe(started, labels, "circuit_open")
            wait = failure.retry_after or self.policy.delay(1)
            self.pause_until = max(self.pause_until, self.now() + wait)
            log_delivery(
                logger,
                logging.INFO,
                delivery,
                "the handler reported an open circuit (%s): released, reserving pauses %.3fs",
                failure,
                wait,
            )
            await self._settle(self.coordinator.release, delivery)
            return False
        timed_out = isinstance(failure, HandlerTimeoutError)
        self._observe(started, labels, "timeout" if timed_out else "error")
        text = _error_text(failure)
        permanent = isinstance(failure, PermanentFailureError)
        last = delivery.attempt >= min(self.policy.max_attempts, delivery.max_attempts)
        log_delivery(
            logger,
            logging.WARNING,
            delivery,
            "handler %s, %s: %s",
            "timed out" if timed_out else "failed",
            "dead-lettering" if permanent or last else "retrying",
            text,
            exc_info=None if timed_out else failure,  # a timeout's traceback says nothing
        )
        try:
            if permanent:
                await self.coordinator.dead_letter(delivery, DeadLetterReason.HANDLER_ERROR, text)
            elif last:
                await self.coordinator.dead_letter(delivery, DeadLetterReason.MAX_ATTEMPTS, text)
            else:
                await self.coordinator.nack(
                    delivery, error=text, delay=self.policy.delay(delivery.attempt)
                )
        except CoordinationError as exc:
            log_delivery(
                logger, logging.WARNING, delivery, "settling a failed delivery failed: %s", exc
            )
        return False

    async def _settle(
        self, operation: Callable[[Delivery], Awaitable[bool]], delivery: Delivery
    ) -> None:
        try:
            await operation(delivery)
        except CoordinationError as exc:
            log_delivery(
                logger,
                logging.WARNING,
                delivery,
                "settling a delivery (%s) failed: %s",
                getattr(operation, "__name__", "?"),
                exc,
            )

    def _observe(self, started: float, labels: dict[str, str], outcome: str) -> float:
        """Report the handler's duration (seconds since ``started``) and return it."""
        duration = self.now() - started
        self.coordinator.metrics.observe(HANDLER_DURATION, duration, {**labels, "outcome": outcome})
        return duration

    async def _chain(self, delivery: Delivery) -> None:
        call: HandleNext = self._call_handler
        for middleware in reversed(self.coordinator.middleware):
            call = _wrap_handle(middleware, call)
        await call(delivery)

    async def _call_handler(self, delivery: Delivery) -> None:
        if self.handler_timeout is None:
            await self.handler(delivery)
            return
        with anyio.move_on_after(self.handler_timeout) as scope:
            await self.handler(delivery)
        if scope.cancelled_caught:
            limit = self.handler_timeout
            msg = f"the handler for {delivery.queue} ran past handler_timeout={limit}s"
            raise HandlerTimeoutError(msg)

    async def _ack(self, delivery: Delivery) -> bool:
        """Ack with the other handlers of this event-loop turn: one ``ack_many`` per queue.

        The first handler to finish opens the batch and lets the others that finish in the
        same turn join it (one checkpoint), then acks them all in its handler's shielded
        scope. A joiner returns at once (True: its slot is the batch's now, no wait and
        wake-up per handler); the owner gives the joiners' slots back when the batch closes,
        so the next reserve overlaps the ack, and keeps its own until the ack is answered, so
        a shutdown's grace period (which waits for every slot) still waits for the ack.
        """
        batch = self.acks.get(delivery.queue)
        if batch is not None:
            batch.append(delivery)
            return True
        batch = self.acks[delivery.queue] = [delivery]
        try:
            try:
                await anyio.lowlevel.checkpoint()  # the handlers finishing in this turn join
            finally:
                del self.acks[delivery.queue]  # closed: later ones start the next batch
                for _ in batch[1:]:  # the joiners' slots: free for the next reserve
                    self.slots.give()
            await self.coordinator._ack_many(delivery.queue, batch)
        except CoordinationError as exc:
            for each in batch:
                log_delivery(
                    logger, logging.WARNING, each, "settling a delivery (ack) failed: %s", exc
                )
        return False

    def _hold(self, held: _Held) -> None:
        """Add a running handler's delivery to those whose reservations are kept."""
        queue = self.held
        while queue and not queue[0].live:
            queue.popleft()
        queue.append(held)
        wake = self.keeper_wake
        if wake is not None:
            self.keeper_wake = None
            wake.set()

    async def _keep_visible(self) -> None:
        """Extend the reservations of handlers that run long: one task for the whole loop.

        Every reservation is extended ``visibility_timeout/3`` after its handler started (or
        after its last extension), so the deliveries in ``held`` are in the order they are due.
        It runs through the grace period (in the shielded handlers' group) and ends with it.
        Extensions are sent one at a time (they are rare: only handlers running past the
        interval).
        """
        interval = self.visibility_timeout / 3
        while True:
            queue = self.held
            while queue and not queue[0].live:
                queue.popleft()
            if not queue:
                self.keeper_wake = wake = anyio.Event()
                await wake.wait()
                continue
            first = queue[0]
            wait = first.due - self.now()
            if wait > 0:
                await anyio.sleep(wait)
                continue
            queue.popleft()
            await self._extend(first, interval)

    async def _extend(self, held: _Held, interval: float) -> None:
        delivery = held.delivery
        try:
            current = await self.coordinator.extend(delivery, self.visibility_timeout)
        except CoordinationError as exc:
            log_delivery(
                logger, logging.WARNING, delivery, "extending the reservation failed: %s", exc
            )
            current = True  # try again after the interval
        if not held.live:
            return  # the handler finished meanwhile: its delivery was settled
        if not current:
            held.live = False
            log_delivery(
                logger,
                logging.WARNING,
                delivery,
                "lost the reservation while the handler runs: it may be delivered again",
            )
            return
        held.due = self.now() + interval
        self._hold(held)
