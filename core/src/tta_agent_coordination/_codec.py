"""The message codec every driver shares: JSON bytes in storage, never pickle.

Drivers call :func:`encode_message` before any write (so an oversized message is refused with
nothing written) and :func:`decode_message` for every delivery (so each consumer gets a fresh
object and nobody can mutate what was sent). :func:`trusted_delivery` and :func:`loads` serve
the drivers' reserve paths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, cast

import pydantic
import pydantic_core

from .errors import MessageTooLargeError, ValidationError
from .models import AgentId, AgentMessage, Delivery, _aware

__all__ = ["decode_message", "encode_message", "loads", "trusted_delivery"]

_to_json: Final = AgentMessage.__pydantic_serializer__.to_json


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
    if type(given) is AgentMessage:  # the serializer's bytes: model_dump_json, not decoded
        data = _to_json(message)
    elif isinstance(given, AgentMessage):  # pyright: ignore[reportUnnecessaryIsInstance]  # a subclass may serialise itself differently
        data = message.model_dump_json().encode()
    else:
        msg = f"expected an AgentMessage, not {type(given).__name__}"
        raise ValidationError(msg)
    if len(data) > max_bytes:
        raise MessageTooLargeError(len(data), max_bytes)
    return data


# ---------------------------------------------------------------------------------------------
# Decoding: what encode_message wrote, validated natively
# ---------------------------------------------------------------------------------------------


def _native(schema: Any, swaps: Mapping[object, Callable[[dict[str, Any]], Any]]) -> Any:
    """A copy of a core schema with the known Python validators swapped for native checks.

    ``swaps`` maps a validator function to what replaces its ``function-*`` node (given the
    node). Any other Python function left in the schema raises ``LookupError``.
    """
    if isinstance(schema, list):
        return [_native(item, swaps) for item in cast("list[object]", schema)]
    if not isinstance(schema, dict):
        return schema
    node = cast("dict[str, Any]", schema)
    kind = node.get("type")
    if isinstance(kind, str) and kind.startswith("function-"):
        swap = swaps.get(node["function"]["function"])
        if swap is None:
            msg = f"no native stand-in for {node['function']['function']!r}"
            raise LookupError(msg)
        return _native(swap(node), swaps)
    return {
        key: value if key in ("metadata", "cls", "default_factory") else _native(value, swaps)
        for key, value in node.items()
    }


def _strict_int(node: dict[str, Any]) -> Any:
    return {**node["schema"], "strict": True}


def _aware_datetime(node: dict[str, Any]) -> Any:
    return {**node["schema"], "tz_constraint": "aware"}


def _inner(node: dict[str, Any]) -> Any:
    return node["schema"]


def _stored_validator(
    schema: Any,
    swaps: Mapping[object, Callable[[dict[str, Any]], Any]],
    models: Sequence[type[pydantic.BaseModel]],
) -> pydantic_core.SchemaValidator | None:
    """The validator of :func:`_native`'s copy; ``None`` if a Python function is unknown.

    pydantic-core reuses a complete model's own validator for a ``model`` node, Python
    validators and all, so ``models`` (those the schema builds) are marked incomplete while
    the copy is built, then restored (a moment at import: nothing validates through the
    flag, it only tells schema builders whether a class's validator may be reused).
    """
    try:
        native = _native(schema, swaps)
    except LookupError:  # a validator added to the models without a native stand-in here
        return None
    complete = [model.__pydantic_complete__ for model in models]
    try:
        for model in models:
            model.__pydantic_complete__ = False
        return pydantic_core.SchemaValidator(native)
    finally:
        for model, flag in zip(models, complete, strict=True):
            model.__pydantic_complete__ = flag


#: ``AgentMessage``'s own schema, for JSON input only, with its Python validators swapped for
#: native checks that accept a subset of what they accept (and give the same result on it):
#: an id given as a JSON object (never as a ``"type:instance"`` string), a priority given as a
#: JSON integer (never a bool, a float or a string), an aware ``created_at``. That subset is
#: everything :func:`encode_message` writes; anything else goes to the full validation.
_STORED: Final = _stored_validator(
    AgentMessage.__pydantic_core_schema__,
    {
        cast("object", AgentId._from_string): _inner,
        cast("object", AgentMessage._no_bool_priority): _strict_int,
        _aware: _aware_datetime,
    },
    (AgentMessage, AgentId),
)


def decode_message(data: bytes | str) -> AgentMessage:
    """Read back what :func:`encode_message` wrote: a fresh ``AgentMessage``.

    Raises:
        ValidationError: ``data`` is not a valid serialised message.
    """
    if _STORED is not None:
        try:
            return cast("AgentMessage", _STORED.validate_json(data))
        except pydantic_core.ValidationError:  # not as we write it: the full rules decide
            pass
    return AgentMessage.model_validate_json(data)


def loads(data: bytes | str) -> Any:
    """Parse JSON (pydantic-core's parser: several times faster than ``json.loads``).

    Raises:
        ValueError: ``data`` is not JSON.
    """
    return pydantic_core.from_json(data)


_new: Final = object.__new__
_set: Final = object.__setattr__


def trusted_delivery(
    *,
    queue: AgentId,
    entry_id: str,
    message: AgentMessage,
    attempt: int,
    max_attempts: int,
    receipt: str,
    enqueued_at: datetime,
    visible_at: datetime,
    last_error: str | None,
) -> Delivery:
    """A ``Delivery`` from a driver's own stored data, not validated again.

    The same object as ``Delivery.model_construct`` with every field given, built directly
    (several times faster). Only for values the driver itself wrote and read back (a decoded
    message, its own ids, aware times): nothing is checked.
    """
    delivery = _new(Delivery)
    values = {
        "queue": queue,
        "entry_id": entry_id,
        "message": message,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "receipt": receipt,
        "enqueued_at": enqueued_at,
        "visible_at": visible_at,
        "last_error": last_error,
    }
    _set(delivery, "__dict__", values)
    _set(delivery, "__pydantic_fields_set__", set(values))
    _set(delivery, "__pydantic_extra__", None)
    _set(delivery, "__pydantic_private__", None)
    return delivery
