"""tta-agent-coordination: reliable coordination for independent agents.

A message queue between agents, a registry of live agents and their capabilities, and circuit
breakers whose state every process shares, on pluggable backends (``memory://`` by default).
"""

from __future__ import annotations

from importlib.metadata import version as _version

from ._compat_models import CompatConfig, MessageSubscription, QueueMessage, ReceivedMessage
from .breaker import BreakerGuard, CircuitBreaker
from .compat import RedisAgentRegistry, RedisMessageCoordinator
from .coordinator import Handler, MessageCoordinator, Middleware, PassThroughMiddleware
from .errors import (
    AgentConflictError,
    AgentNotFoundError,
    BackendConfigWarning,
    BackendError,
    BackendNotFoundError,
    BackendUnavailableError,
    BroadcastError,
    CircuitBreakerOpenError,
    CircuitOpenError,
    CoordinationError,
    CoordinationWarning,
    EventsGapError,
    HandlerTimeoutError,
    InvalidReceiptError,
    MessageTooLargeError,
    PermanentFailureError,
    PluginLoadError,
    PluginLoadWarning,
    QueueFullError,
    RequestTimeoutError,
    RetryError,
    ValidationError,
)
from .models import (
    AgentId,
    AgentInfo,
    AgentMessage,
    BreakerDecision,
    BreakerSnapshot,
    BreakerState,
    BreakerTransition,
    BreakerUpdate,
    Capability,
    CapabilityQuery,
    CircuitBreakerConfig,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    EnqueueRequest,
    FailureType,
    MessagePriority,
    MessageResult,
    MessageType,
    Page,
    QueueStats,
    RegistryEvent,
    RegistryEventKind,
)
from .plugins import connect, installed_schemes
from .protocols import Backend, BreakerStore, ClockControl, QueueStore, RegistryStore
from .registry import AgentRegistry, Registration
from .retry import Attempt, Retrying, RetryPolicy, retry
from .settings import BackendOptions

#: The installed distribution's version (its one source is ``core/pyproject.toml``).
__version__: str = _version("tta-agent-coordination")

__all__ = [
    "AgentConflictError",
    "AgentId",
    "AgentInfo",
    "AgentMessage",
    "AgentNotFoundError",
    "AgentRegistry",
    "Attempt",
    "Backend",
    "BackendConfigWarning",
    "BackendError",
    "BackendNotFoundError",
    "BackendOptions",
    "BackendUnavailableError",
    "BreakerDecision",
    "BreakerGuard",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "BreakerTransition",
    "BreakerUpdate",
    "BroadcastError",
    "Capability",
    "CapabilityQuery",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerOpenError",
    "CircuitOpenError",
    "ClockControl",
    "CompatConfig",
    "CoordinationError",
    "CoordinationWarning",
    "DeadLetter",
    "DeadLetterReason",
    "Delivery",
    "EnqueueRequest",
    "EventsGapError",
    "FailureType",
    "Handler",
    "HandlerTimeoutError",
    "InvalidReceiptError",
    "MessageCoordinator",
    "MessagePriority",
    "MessageResult",
    "MessageSubscription",
    "MessageTooLargeError",
    "MessageType",
    "Middleware",
    "Page",
    "PassThroughMiddleware",
    "PermanentFailureError",
    "PluginLoadError",
    "PluginLoadWarning",
    "QueueFullError",
    "QueueMessage",
    "QueueStats",
    "QueueStore",
    "ReceivedMessage",
    "RedisAgentRegistry",
    "RedisMessageCoordinator",
    "Registration",
    "RegistryEvent",
    "RegistryEventKind",
    "RegistryStore",
    "RequestTimeoutError",
    "RetryError",
    "RetryPolicy",
    "Retrying",
    "ValidationError",
    "__version__",
    "connect",
    "installed_schemes",
    "retry",
]
