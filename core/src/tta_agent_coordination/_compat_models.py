"""The original API's queue models: :class:`QueueMessage`, :class:`ReceivedMessage`, subscriptions.

They keep the original's field names (``token``, ``queue_message``, ``delivery_attempts``,
``last_error``) so code written for the original coordinator reads them unchanged. They are
views built from a :class:`~tta_agent_coordination.models.Delivery`; nothing stores them.

``delivery_attempts`` keeps the original meaning: the number of earlier deliveries of the
message that failed (0 on the first delivery), which is ``Delivery.attempt - 1``.
"""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import Field

from ._validation import Model
from .models import AgentId, AgentMessage, Delivery, MessageType

__all__ = ["CompatConfig", "MessageSubscription", "QueueMessage", "ReceivedMessage"]


class QueueMessage(Model):
    """A message as it waits in a queue, with its delivery history (the original's shape).

    Attributes:
        message: The message.
        priority: Its priority (0..9; the original used 1, 5 and 9).
        enqueued_at: When it was enqueued, on the backend's clock.
        delivery_attempts: Earlier deliveries that failed (0 on the first delivery).
        last_error: The error text of the last failure, if any.
    """

    message: AgentMessage
    priority: int = 5
    enqueued_at: datetime | None = None
    delivery_attempts: int = Field(default=0, ge=0)
    last_error: str | None = None


class ReceivedMessage(Model):
    """A reserved message, as the original ``receive`` returned it.

    Settle it with ``coordinator.ack(agent_id, token)`` or
    ``coordinator.nack(agent_id, token, failure, error)``.

    Attributes:
        token: The reservation token to pass to ``ack``/``nack``.
        queue_message: The message and its delivery history.
        visibility_deadline: When the reservation lapses (ISO-8601, backend clock), after
            which the message is delivered again.
        entry_id: The queue entry's id (dead letters and replays use it).
    """

    token: str
    queue_message: QueueMessage
    visibility_deadline: str | None = None
    entry_id: str | None = None

    @property
    def message(self) -> AgentMessage:
        """The message itself."""
        return self.queue_message.message

    @property
    def delivery_attempts(self) -> int:
        """Earlier deliveries of this message that failed (0 on the first delivery)."""
        return self.queue_message.delivery_attempts

    @classmethod
    def from_delivery(cls, delivery: Delivery, token: str) -> ReceivedMessage:
        """Build the original's view of a delivery.

        Args:
            delivery: The delivery the queue handed out.
            token: The token the coordinator hands to the caller for ``ack``/``nack``.
        """
        return cls(
            token=token,
            queue_message=QueueMessage(
                message=delivery.message,
                priority=delivery.message.priority,
                enqueued_at=delivery.enqueued_at,
                delivery_attempts=delivery.attempt - 1,
                last_error=delivery.last_error,
            ),
            visibility_deadline=delivery.visible_at.isoformat(),
            entry_id=delivery.entry_id,
        )


def _subscription_id() -> str:
    return f"sub_{uuid.uuid4().hex[:12]}"


class MessageSubscription(Model):
    """What the original ``subscribe_to_messages`` returned: a record, nothing more.

    Subscriptions are recorded for observability only; nothing filters deliveries by them
    (as in the original).
    """

    subscription_id: str = Field(default_factory=_subscription_id)
    agent_id: AgentId
    message_types: list[MessageType | str] = Field(default_factory=list[MessageType | str])


class CompatConfig(Model):
    """The original API's coordinator settings (``MessageCoordinator.configure``).

    Attributes:
        queue_size: ``send_message`` refuses a message when the queue holds this many.
        retry_attempts: Retries after the first delivery before dead-lettering.
        backoff_base: Seconds before the first retry.
        backoff_factor: Growth of the delay per failed delivery.
        backoff_max: The cap on any delay.
    """

    queue_size: Annotated[int, Field(ge=1, strict=True)] = 10_000
    retry_attempts: Annotated[int, Field(ge=0, strict=True)] = 3
    backoff_base: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    backoff_factor: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 2.0
    backoff_max: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 30.0

    def backoff(self, failed: int) -> float:
        """``min(backoff_base * backoff_factor**(failed-1), backoff_max)``, without jitter."""
        try:
            raw = self.backoff_base * self.backoff_factor ** (failed - 1)
        except OverflowError:
            return self.backoff_max
        return min(raw, self.backoff_max) if math.isfinite(raw) else self.backoff_max
