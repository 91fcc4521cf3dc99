"""Argument checks every store and service applies before it writes anything.

Each check returns the value (converted where that is lossless) or raises the package's
:class:`~tta_agent_coordination.errors.ValidationError` naming the argument. Drivers use these so
that every backend rejects bad input the same way, with the same words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar, cast

from .errors import ValidationError
from .models import AgentId

__all__ = [
    "agent_id",
    "duration",
    "entry_ids",
    "instance",
    "integer",
    "one_queue_batch",
    "optional_text",
    "text",
]

T = TypeVar("T")


def duration(value: object, what: str, *, positive: bool = False) -> float:
    """A finite number of seconds, ``> 0`` when ``positive`` else ``>= 0``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{what} must be a number of seconds, not {type(value).__name__}"
        raise ValidationError(msg)
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        bound = "> 0" if positive else ">= 0"
        msg = f"{what} must be finite and {bound}, not {value!r}"
        raise ValidationError(msg)
    return seconds


def integer(value: object, what: str, low: int, high: int | None = None) -> int:
    """An int (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        msg = f"{what} must be an int, not {type(value).__name__}"
        raise ValidationError(msg)
    if value < low or (high is not None and value > high):
        top = "" if high is None else f" and <= {high}"
        msg = f"{what} must be >= {low}{top}, not {value}"
        raise ValidationError(msg)
    return value


def text(value: object, what: str, limit: int) -> str:
    """A string of 1 to ``limit`` characters."""
    if not isinstance(value, str) or not 1 <= len(value) <= limit:
        msg = f"{what} must be a string of 1 to {limit} characters, not {value!r}"
        raise ValidationError(msg)
    return value


def optional_text(value: object, what: str) -> str | None:
    """A string or ``None``."""
    if value is not None and not isinstance(value, str):
        msg = f"{what} must be a string or None, not {type(value).__name__}"
        raise ValidationError(msg)
    return value


def instance(value: object, kind: type[T], what: str) -> T:
    """``value`` if it is a ``kind`` (a runtime guard for untyped callers)."""
    if not isinstance(value, kind):
        msg = f"{what} must be a {kind.__name__}, not {type(value).__name__}"
        raise ValidationError(msg)
    return value


def agent_id(value: object, what: str = "queue") -> AgentId:
    """An :class:`~tta_agent_coordination.models.AgentId`."""
    return instance(value, AgentId, what)


def entry_ids(value: Sequence[str] | None, limit: int) -> list[str] | None:
    """``None`` (meaning all) or a sequence of entry-id strings (not one string)."""
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = "entry_ids must be a sequence of entry id strings (or None for all)"
        raise ValidationError(msg)
    return [text(e, "entry id", limit) for e in value]


def one_queue_batch(requests: object) -> AgentId | None:
    """Check an ``enqueue_many`` batch: a sequence of ``EnqueueRequest`` for one queue.

    Returns the queue (the shared recipient), or ``None`` for an empty batch.
    """
    from .models import EnqueueRequest  # noqa: PLC0415  # models import nothing from here

    if isinstance(requests, str | bytes) or not isinstance(requests, Sequence):
        msg = "enqueue_many takes a sequence of EnqueueRequest"
        raise ValidationError(msg)
    recipient: AgentId | None = None
    for request in cast("Sequence[object]", requests):
        if not isinstance(request, EnqueueRequest):
            msg = f"expected an EnqueueRequest, not {type(request).__name__}"
            raise ValidationError(msg)
        other = request.message.recipient
        if recipient is None:
            recipient = other
        elif other is not recipient and other != recipient:  # the same object: no model __eq__
            msg = f"enqueue_many takes requests for one queue: {recipient} and {other} differ"
            raise ValidationError(msg)
    return recipient
