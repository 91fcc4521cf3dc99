"""Identities, messages and the records the stores return.

Every model is a frozen pydantic v2 model; invalid input raises the package's
:class:`~tta_agent_coordination.errors.ValidationError` (pydantic's error chained as the cause).
Messages travel as JSON only (``model_dump_json`` / ``model_validate_json``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Generic, Self, TypeVar, cast

import pydantic
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from pydantic import Field, JsonValue, field_validator, model_validator

from ._ids import new_id as _new_message_id
from ._validation import NAME_PATTERN, Model
from .errors import ValidationError

__all__ = [
    "AgentId",
    "AgentInfo",
    "AgentMessage",
    "BreakerDecision",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerTransition",
    "BreakerUpdate",
    "Capability",
    "CapabilityQuery",
    "CircuitBreakerConfig",
    "DeadLetter",
    "DeadLetterReason",
    "Delivery",
    "EnqueueRequest",
    "FailureType",
    "MessagePriority",
    "MessageResult",
    "MessageType",
    "Page",
    "QueueStats",
    "RegistryEvent",
    "RegistryEventKind",
]

T = TypeVar("T")


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


#: An identifier part that ends up in storage keys, checked whole by pydantic-core's regex
#: engine (whose ``$`` is the end of the text: no trailing newline slips through).
NamePart = Annotated[str, pydantic.StringConstraints(pattern=f"^{NAME_PATTERN.pattern}$")]
AwareUTC = Annotated[datetime, pydantic.AfterValidator(_aware)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


# ---------------------------------------------------------------------------------------------
# Identities and messages
# ---------------------------------------------------------------------------------------------


class AgentId(Model):
    """An agent's identity: its type and, optionally, its instance.

    ``AgentId("world_builder")`` names the type's shared queue, from which any instance may
    reserve; ``AgentId("world_builder", "w2")`` names one instance. Both parts match
    ``[A-Za-z0-9][A-Za-z0-9_.-]{0,127}`` whole, so no identity can smuggle ``:``, ``{``,
    ``*``, spaces or newlines into a storage key. ``str()`` gives ``type:instance`` (or
    ``type``) and :meth:`parse` reads it back. Frozen, hashable and ordered.
    """

    type: NamePart
    instance: NamePart | None = None

    def __init__(self, type: str, instance: str | None = None) -> None:  # the contract's name
        super().__init__(type=type, instance=instance)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # only maps positionals

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            type_, sep, instance = data.partition(":")
            return {"type": type_, "instance": instance if sep else None}
        return data

    @classmethod
    def parse(cls, text: str) -> AgentId:
        """Read back what ``str()`` wrote: ``"type"`` or ``"type:instance"``."""
        return cls.model_validate(text)

    @property
    def is_shared(self) -> bool:
        """True for a type's shared queue (no instance)."""
        return self.instance is None

    @property
    def shared(self) -> AgentId:
        """The shared queue of this agent's type."""
        return self if self.instance is None else AgentId(self.type)

    def __str__(self) -> str:
        return self.type if self.instance is None else f"{self.type}:{self.instance}"

    def _key(self) -> tuple[str, str]:
        return (self.type, "" if self.instance is None else self.instance)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, AgentId):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, AgentId):
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, AgentId):
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, AgentId):
            return NotImplemented
        return self._key() >= other._key()


class MessagePriority(IntEnum):
    """Named priorities; any int from 0 to 9 is accepted, higher first."""

    LOW = 1
    NORMAL = 5
    HIGH = 9


class MessageType(StrEnum):
    """The message types the coordinator knows; any other non-empty string is accepted.

    ``AgentMessage.message_type`` is a plain ``str`` (it compares equal to these members).
    """

    REQUEST = "request"
    RESPONSE = "response"
    EVENT = "event"
    COMMAND = "command"


class AgentMessage(Model):
    """A message between agents. Serialised as JSON only.

    ``priority`` orders it in the recipient's queue; ``ttl`` (seconds, from enqueue on the
    backend's clock) bounds how long it may wait before it is dead-lettered as ``expired``.
    ``headers`` carry string metadata such as trace context.
    """

    message_id: Annotated[str, Field(min_length=1, max_length=256)] = Field(
        default_factory=_new_message_id
    )
    sender: AgentId
    recipient: AgentId
    message_type: Annotated[str, Field(min_length=1, max_length=128)] = MessageType.REQUEST
    payload: JsonValue = Field(default_factory=dict)
    priority: Annotated[int, Field(ge=0, le=9, strict=False)] = MessagePriority.NORMAL
    created_at: AwareUTC = Field(default_factory=utcnow)
    correlation_id: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    reply_to: AgentId | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    ttl: PositiveFloat | None = None

    @field_validator("priority", mode="before")
    @classmethod
    def _no_bool_priority(cls, value: Any) -> Any:
        if isinstance(value, bool):
            msg = "priority must be an int from 0 to 9, not a bool"
            raise ValueError(msg)
        return value


class EnqueueRequest(Model):
    """One entry of an ``enqueue_many`` batch: a message and its per-entry options."""

    message: AgentMessage
    delay: NonNegativeFloat | None = None
    dedup_key: Annotated[str, Field(min_length=1, max_length=512)] | None = None
    entry_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    max_attempts: Annotated[int, Field(ge=1)] | None = None


class Delivery(Model):
    """A reserved entry handed to a consumer.

    Settle it with its ``receipt`` (ack, nack, release, dead_letter, extend). ``attempt`` is 1
    on the first delivery and grows with each delivery that ended in a nack or an expired
    reservation.
    """

    queue: AgentId
    entry_id: str
    message: AgentMessage
    attempt: Annotated[int, Field(ge=1)]
    max_attempts: Annotated[int, Field(ge=1)]
    receipt: str
    enqueued_at: AwareUTC
    visible_at: AwareUTC
    last_error: str | None = None

    @property
    def is_last_attempt(self) -> bool:
        """True when a failure of this delivery dead-letters it."""
        return self.attempt >= self.max_attempts


class DeadLetterReason(StrEnum):
    """Why an entry was dead-lettered; drivers and callers may use other strings too."""

    MAX_ATTEMPTS = "max_attempts"
    EXPIRED = "expired"
    HANDLER_ERROR = "handler_error"
    MIGRATED = "migrated"


class DeadLetter(Model):
    """A dead-lettered entry: the message (or its raw body if it cannot be parsed) and why."""

    queue: AgentId
    entry_id: str
    message: AgentMessage | None
    raw: str | None = None
    reason: str
    error: str | None = None
    attempts: Annotated[int, Field(ge=0)]
    enqueued_at: AwareUTC
    dead_at: AwareUTC


class QueueStats(Model):
    """Counts of one queue's entries by state."""

    queue: AgentId
    ready: int = 0
    delayed: int = 0
    reserved: int = 0
    dead: int = 0

    @property
    def live(self) -> int:
        """Entries that count against ``max_queue_length`` (ready, delayed or reserved)."""
        return self.ready + self.delayed + self.reserved


class Page(Model, Generic[T]):
    """One page of a listing; pass ``next_cursor`` back to get the next (None: the end)."""

    items: list[T]
    next_cursor: str | None = None


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def _sorted_tags(value: Any) -> Any:
    if isinstance(value, str):
        msg = "tags must be a collection of strings, not one string"
        raise ValueError(msg)
    if isinstance(value, set | frozenset | list | tuple):
        items = set(cast("Iterable[Any]", value))
        if all(isinstance(item, str) for item in items):
            return tuple(sorted(items))
    return cast("Any", value)  # pydantic rejects what is not a collection of strings


Tags = Annotated[tuple[str, ...], pydantic.BeforeValidator(_sorted_tags)]


class Capability(Model):
    """Something an agent can do: a name, a PEP 440 version and tags."""

    name: NamePart
    version: str = "0"
    tags: Tags = ()

    def __init__(self, name: str, version: str = "0", tags: Any = ()) -> None:
        super().__init__(name=name, version=version, tags=tags)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # only maps positionals

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion as exc:
            msg = f"capability version {value!r} is not a PEP 440 version"
            raise ValueError(msg) from exc
        return value

    @property
    def parsed_version(self) -> Version:
        """The version as a comparable ``packaging`` version."""
        return Version(self.version)


class CapabilityQuery(Model):
    """What a caller asks for: a capability name, a version range, tags, a load ceiling.

    ``CapabilityQuery("summarise", ">=1.2,<2", tags={"en"}, max_load=0.8)`` matches a live,
    available agent holding ``summarise`` at a version in the range, with every tag, whose
    load is at most 0.8.
    """

    name: NamePart
    version: str | None = None
    tags: Tags = ()
    max_load: NonNegativeFloat | None = None

    def __init__(
        self,
        name: str,
        version: str | None = None,
        *,
        tags: Any = (),
        max_load: float | None = None,
    ) -> None:
        super().__init__(name=name, version=version, tags=tags, max_load=max_load)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # only maps positionals

    @field_validator("version")
    @classmethod
    def _check_spec(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            SpecifierSet(value)
        except InvalidSpecifier as exc:
            msg = f"version range {value!r} is not a PEP 440 specifier (e.g. '>=1.2,<2')"
            raise ValueError(msg) from exc
        return value

    def matches(self, capability: Capability) -> bool:
        """True if ``capability`` satisfies the name, version range and tags."""
        if capability.name != self.name:
            return False
        if self.version is not None and not SpecifierSet(self.version).contains(
            capability.parsed_version, prereleases=True
        ):
            return False
        return set(self.tags).issubset(capability.tags)


class AgentInfo(Model):
    """A registered agent as the registry sees it (times on the backend's clock)."""

    agent_id: AgentId
    capabilities: tuple[Capability, ...] = ()
    metadata: dict[str, JsonValue] = Field(default_factory=dict)
    load: NonNegativeFloat = 0.0
    available: bool = True
    ttl: PositiveFloat
    registered_at: AwareUTC
    last_heartbeat: AwareUTC
    expires_at: AwareUTC

    def holds(self, query: CapabilityQuery) -> bool:
        """True if the agent is available, under the load ceiling and holds a match."""
        if not self.available:
            return False
        if query.max_load is not None and self.load > query.max_load:
            return False
        return any(query.matches(c) for c in self.capabilities)


class RegistryEventKind(StrEnum):
    """What happened to an agent."""

    REGISTERED = "registered"
    DEREGISTERED = "deregistered"
    EXPIRED = "expired"
    UPDATED = "updated"


class RegistryEvent(Model):
    """One registry event; resume a stream after it with its ``cursor``."""

    cursor: str
    kind: RegistryEventKind
    agent_id: AgentId
    at: AwareUTC
    agent: AgentInfo | None = None


# ---------------------------------------------------------------------------------------------
# Circuit breakers
# ---------------------------------------------------------------------------------------------


class BreakerState(StrEnum):
    """A circuit breaker's state."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreakerConfig(Model):
    """How a breaker trips and recovers.

    ``failure_threshold`` failures within ``window`` seconds (``None``: consecutive failures,
    reset by a success) open it; after ``recovery_timeout`` seconds (the original API's
    ``timeout_seconds``) the first caller moves it to half-open, where at most
    ``half_open_max_calls`` probes run at once across all processes, each permit lapsing after
    ``probe_timeout``; ``success_threshold`` probe successes close it, any probe failure
    re-opens it.
    """

    failure_threshold: Annotated[int, Field(ge=1)] = 5
    window: PositiveFloat | None = None
    recovery_timeout: PositiveFloat = 60.0
    half_open_max_calls: Annotated[int, Field(ge=1)] = 3
    success_threshold: Annotated[int, Field(ge=1)] = 2
    probe_timeout: PositiveFloat = 30.0

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        window: float | None = None,
        recovery_timeout: float | None = None,
        timeout_seconds: float | None = None,
        half_open_max_calls: int = 3,
        success_threshold: int = 2,
        probe_timeout: float = 30.0,
    ) -> None:
        if recovery_timeout is not None and timeout_seconds is not None:
            msg = "give recovery_timeout or its original name timeout_seconds, not both"
            raise ValidationError(msg)
        timeout = recovery_timeout if recovery_timeout is not None else timeout_seconds
        super().__init__(
            failure_threshold=failure_threshold,
            window=window,
            recovery_timeout=60.0 if timeout is None else timeout,
            half_open_max_calls=half_open_max_calls,
            success_threshold=success_threshold,
            probe_timeout=probe_timeout,
        )

    @property
    def timeout_seconds(self) -> float:
        """The original API's name for ``recovery_timeout``."""
        return self.recovery_timeout


class BreakerSnapshot(Model):
    """A breaker's shared state at one moment (times on the backend's clock)."""

    name: str
    state: BreakerState = BreakerState.CLOSED
    failures: Annotated[int, Field(ge=0)] = 0
    successes: Annotated[int, Field(ge=0)] = 0
    permits_in_use: Annotated[int, Field(ge=0)] = 0
    opened_at: AwareUTC | None = None
    changed_at: AwareUTC | None = None
    retry_after: NonNegativeFloat | None = None


class BreakerTransition(Model):
    """A state change, reported once by the process whose call caused it."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    at: AwareUTC


class BreakerUpdate(Model):
    """The result of recording an outcome or resetting: the new state and any transition."""

    snapshot: BreakerSnapshot
    transition: BreakerTransition | None = None


class BreakerDecision(Model):
    """The answer to "may I call?": allowed or not, and the probe permit when half-open."""

    allowed: bool
    permit: str | None = None
    snapshot: BreakerSnapshot
    transition: BreakerTransition | None = None


# ---------------------------------------------------------------------------------------------
# The original API's result types
# ---------------------------------------------------------------------------------------------


class FailureType(StrEnum):
    """How a handler failed, for the original API's ``nack``."""

    TRANSIENT = "transient"
    PERMANENT = "permanent"
    TIMEOUT = "timeout"


class MessageResult(Model):
    """The original ``send_message`` result: delivered or not, never an exception."""

    message_id: str
    delivered: bool
    error: str | None = None
    entry_id: str | None = None

    @classmethod
    def ok(cls, message_id: str, entry_id: str) -> Self:
        """A delivered result."""
        return cls(message_id=message_id, delivered=True, entry_id=entry_id)
