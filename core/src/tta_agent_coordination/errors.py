"""The one error tree of tta-agent-coordination.

Every failure a caller can cause, and every failure of a backend, is a subclass of
:class:`CoordinationError`. Where a builtin exception fits, the class subclasses it too,
so ``except ValueError`` and ``except ConnectionError`` keep working::

    CoordinationError
    ├── ValidationError (ValueError)          bad input: nothing was written
    │   ├── MessageTooLargeError              the serialised message exceeds max_message_bytes
    │   └── InvalidReceiptError               a receipt this backend never issued
    ├── QueueFullError                        the queue is at max_queue_length: nothing was written
    ├── BackendError                          the storage side
    │   ├── BackendNotFoundError (LookupError)        no installed driver for the URL's scheme
    │   ├── PluginLoadError (ImportError)             a driver's plugin failed to import
    │   └── BackendUnavailableError (ConnectionError) unreachable after the retry policy gave up
    ├── AgentConflictError                    the agent id is live under another session
    ├── AgentNotFoundError (LookupError)      no such registered agent (or no match for a route)
    ├── EventsGapError                        the events cursor was trimmed away
    ├── CircuitOpenError                      a breaker refused the call (has retry_after);
    │                                         CircuitBreakerOpenError is the original API's name
    ├── RequestTimeoutError (TimeoutError)    no response to a request in time
    ├── HandlerTimeoutError (TimeoutError)    a handler ran past handler_timeout
    ├── PermanentFailureError                 raised by a handler: dead-letter it, no retry
    ├── BroadcastError                        some copies of a broadcast were not enqueued
    └── RetryError                            a retried call failed for good (cause chained)

    CoordinationWarning (UserWarning)
    ├── PluginLoadWarning                     a plugin failed to load while listing schemes
    └── BackendConfigWarning                  a backend setting that can lose data (eviction)

A stale receipt is not an error: ``ack``/``nack``/``release``/``extend``/``dead_letter``
return ``False`` for it, as the contract says.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .models import AgentId

__all__ = [
    "AgentConflictError",
    "AgentNotFoundError",
    "BackendConfigWarning",
    "BackendError",
    "BackendNotFoundError",
    "BackendUnavailableError",
    "BroadcastError",
    "CircuitBreakerOpenError",
    "CircuitOpenError",
    "CoordinationError",
    "CoordinationWarning",
    "EventsGapError",
    "HandlerTimeoutError",
    "InvalidReceiptError",
    "MessageTooLargeError",
    "PermanentFailureError",
    "PluginLoadError",
    "PluginLoadWarning",
    "QueueFullError",
    "RequestTimeoutError",
    "RetryError",
    "ValidationError",
]


class CoordinationError(Exception):
    """The root of every error this package raises."""


class ValidationError(CoordinationError, ValueError):
    """Input was rejected before anything was written.

    Pydantic's own ``ValidationError`` is translated to this class and chained as the cause.
    """


class MessageTooLargeError(ValidationError):
    """A message's JSON is larger than the backend's ``max_message_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message is {size} bytes serialised, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class InvalidReceiptError(ValidationError):
    """A receipt that no backend of this kind could have issued (malformed, or foreign)."""


class QueueFullError(CoordinationError):
    """The queue holds ``max_queue_length`` live entries; the enqueue wrote nothing."""

    def __init__(self, queue: str, limit: int) -> None:
        super().__init__(f"queue {queue!r} is full ({limit} entries ready, delayed or reserved)")
        self.queue = queue
        self.limit = limit


class BackendError(CoordinationError):
    """A failure on the storage side."""


class BackendNotFoundError(BackendError, LookupError):
    """No installed driver handles the URL's scheme."""


class PluginLoadError(BackendError, ImportError):
    """An installed driver plugin failed to import or to answer its hooks."""


class BackendUnavailableError(BackendError, ConnectionError):
    """The backend could not be reached; transient errors were retried first.

    A write that raised this may or may not have happened; retrying it with the same
    ``entry_id`` or receipt is safe.
    """


class AgentConflictError(CoordinationError):
    """The agent id is live under another session (or this session was replaced)."""


class AgentNotFoundError(CoordinationError, LookupError):
    """No such registered agent, or no live agent matches a capability route."""


class EventsGapError(CoordinationError):
    """The registry's event log no longer holds the events after this cursor."""

    def __init__(self, cursor: str) -> None:
        super().__init__(f"registry events after cursor {cursor!r} were trimmed away")
        self.cursor = cursor


class CircuitOpenError(CoordinationError):
    """A circuit breaker refused the call.

    Attributes:
        name: The breaker's name.
        retry_after: Seconds until the breaker lets a probe through (0 when half-open and
            all probe permits are taken: retry soon).
    """

    def __init__(self, name: str, retry_after: float) -> None:
        super().__init__(f"circuit {name!r} is open; retry after {retry_after:.3f}s")
        self.name = name
        self.retry_after = retry_after


#: The original API's name for :class:`CircuitOpenError` (the same class).
CircuitBreakerOpenError = CircuitOpenError


class RequestTimeoutError(CoordinationError, TimeoutError):
    """No response with the request's ``correlation_id`` arrived in time."""


class HandlerTimeoutError(CoordinationError, TimeoutError):
    """A handler ran past ``handler_timeout`` and was cancelled."""


class PermanentFailureError(CoordinationError):
    """Raise from a handler to dead-letter the message at once (reason ``handler_error``).

    Retrying cannot help (a malformed payload, a request the agent can never serve): the
    message goes to the queue's dead letters with the error text, without further attempts.
    """


class BroadcastError(CoordinationError):
    """Some copies of a broadcast could not be enqueued; the others were.

    Attributes:
        sent: The recipients that got their copy, with the entry ids.
        failed: The recipients whose enqueue failed, with the error.
    """

    def __init__(
        self, sent: Mapping[AgentId, str], failed: Mapping[AgentId, CoordinationError]
    ) -> None:
        names = ", ".join(f"{agent} ({error})" for agent, error in failed.items())
        super().__init__(
            f"broadcast failed for {len(failed)} of {len(sent) + len(failed)}: {names}"
        )
        self.sent = dict(sent)
        self.failed = dict(failed)


class RetryError(CoordinationError):
    """A call retried by a :class:`~tta_agent_coordination.retry.RetryPolicy` failed for good.

    The last exception is chained as ``__cause__``.
    """

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class CoordinationWarning(UserWarning):
    """The root of the package's warnings."""


class PluginLoadWarning(CoordinationWarning):
    """An installed plugin failed to load while the installed schemes were listed."""


class BackendConfigWarning(CoordinationWarning):
    """A backend's server setting can lose data (for example an eviction policy)."""
