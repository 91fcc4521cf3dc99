"""Log helpers: every record about a message names it, in ``extra`` and in the text.

The library logs through :mod:`logging` only, on loggers under ``tta_agent_coordination``
(one per module: ``tta_agent_coordination.coordinator``, ``.breaker``, ``.registry``).
A record about a message carries these ``extra`` fields, always all of them (``None`` where
one does not apply), so that a formatter may use ``%(queue)s`` without a ``KeyError``:

* ``message_id``: the message's ``message_id``;
* ``entry_id``: the queue entry's id (``None`` before the enqueue returned one);
* ``queue``: the queue, as ``str(AgentId)``;
* ``attempt``: the delivery's attempt number (``None`` for a send).

The same fields end the message text, ``... [message_id=… entry_id=… queue=… attempt=…]``, so a
plain ``%(message)s`` formatter shows them too. Per-message records are built only when the
level is enabled (``isEnabledFor`` first), so DEBUG records on hot paths cost one check when
DEBUG is off.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from .models import AgentId, AgentMessage, Delivery

__all__ = ["MESSAGE_FIELDS", "delivery_fields", "log_delivery", "log_message", "message_fields"]

#: The ``extra`` keys every record about a message carries.
MESSAGE_FIELDS: Final = ("message_id", "entry_id", "queue", "attempt")

_SUFFIX: Final = " [message_id=%s entry_id=%s queue=%s attempt=%s]"


def message_fields(
    message: AgentMessage | None,
    queue: AgentId | str,
    *,
    entry_id: str | None = None,
    attempt: int | None = None,
) -> dict[str, object]:
    """The ``extra`` fields of a record about ``message`` (``None`` when it is unknown)."""
    return {
        "message_id": None if message is None else message.message_id,
        "entry_id": entry_id,
        "queue": str(queue),
        "attempt": attempt,
    }


def delivery_fields(delivery: Delivery) -> dict[str, object]:
    """The ``extra`` fields of a record about a delivery."""
    return message_fields(
        delivery.message, delivery.queue, entry_id=delivery.entry_id, attempt=delivery.attempt
    )


def _emit(
    logger: logging.Logger,
    level: int,
    fields: dict[str, object],
    text: str,
    args: tuple[object, ...],
    *,
    exc_info: BaseException | None,
    extra: dict[str, object] | None,
) -> None:
    values = ("-" if fields[key] is None else fields[key] for key in MESSAGE_FIELDS)
    logger.log(
        level,
        text + _SUFFIX,
        *args,
        *values,
        exc_info=exc_info,
        extra=fields if extra is None else {**extra, **fields},
        stacklevel=3,
    )


def log_delivery(
    logger: logging.Logger,
    level: int,
    delivery: Delivery,
    text: str,
    *args: object,
    exc_info: BaseException | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    """Log ``text % args`` about ``delivery``, with its fields in ``extra`` and the text."""
    if logger.isEnabledFor(level):
        _emit(logger, level, delivery_fields(delivery), text, args, exc_info=exc_info, extra=extra)


def log_message(
    logger: logging.Logger,
    level: int,
    message: AgentMessage | None,
    queue: AgentId | str,
    text: str,
    *args: object,
    entry_id: str | None = None,
    attempt: int | None = None,
    exc_info: BaseException | None = None,
    extra: dict[str, object] | None = None,
) -> None:
    """Log ``text % args`` about a message that is not (or not yet) a delivery."""
    if logger.isEnabledFor(level):
        fields = message_fields(message, queue, entry_id=entry_id, attempt=attempt)
        _emit(logger, level, fields, text, args, exc_info=exc_info, extra=extra)
