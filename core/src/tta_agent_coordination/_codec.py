"""The message codec every driver shares: JSON bytes in storage, never pickle.

Drivers call :func:`encode_message` before any write (so an oversized message is refused with
nothing written) and :func:`decode_message` for every delivery (so each consumer gets a fresh
object and nobody can mutate what was sent).
"""

from __future__ import annotations

from .errors import MessageTooLargeError, ValidationError
from .models import AgentMessage

__all__ = ["decode_message", "encode_message"]


def encode_message(message: AgentMessage, max_bytes: int) -> bytes:
    """Serialise ``message`` to UTF-8 JSON, refusing it over ``max_bytes``.

    Args:
        message: The message to store.
        max_bytes: The backend's ``max_message_bytes``.

    Returns:
        The JSON bytes.

    Raises:
        ValidationError: ``message`` is not an ``AgentMessage``.
        MessageTooLargeError: The JSON is longer than ``max_bytes``.
    """
    given: object = message  # callers are not all type-checked: guard at runtime
    if not isinstance(given, AgentMessage):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"expected an AgentMessage, not {type(given).__name__}"
        raise ValidationError(msg)
    data = message.model_dump_json().encode()
    if len(data) > max_bytes:
        raise MessageTooLargeError(len(data), max_bytes)
    return data


def decode_message(data: bytes | str) -> AgentMessage:
    """Read back what :func:`encode_message` wrote: a fresh ``AgentMessage``.

    Raises:
        ValidationError: ``data`` is not a valid serialised message.
    """
    return AgentMessage.model_validate_json(data)
