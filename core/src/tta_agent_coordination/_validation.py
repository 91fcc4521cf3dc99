"""Translate pydantic's validation errors into the package's own ``ValidationError``."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Self

import pydantic

from .errors import ValidationError

__all__ = ["NAME_PATTERN", "Model", "check_name", "require_name"]

#: The pattern every identifier part that ends up in a storage key must match, whole.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a valid identifier part, else raise ``ValueError``."""
    if NAME_PATTERN.fullmatch(value) is None:
        msg = (
            f"{what} {value!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,127}}"
            " (letters, digits, '_', '.', '-'; 1 to 128 characters)"
        )
        raise ValueError(msg)
    return value


class Model(pydantic.BaseModel):
    """Base of the package's models: frozen, strict about unknown fields, typed errors."""

    model_config: ClassVar[pydantic.ConfigDict] = pydantic.ConfigDict(
        frozen=True, extra="forbid", validate_default=False
    )

    def __init__(self, /, **data: Any) -> None:
        try:  # what BaseModel.__init__ does, one call less (models are built on hot paths)
            self.__pydantic_validator__.validate_python(data, self_instance=self)
        except pydantic.ValidationError as exc:
            raise ValidationError(str(exc)) from exc

    # Nested models are validated by pydantic-core without calling the Python __init__ above
    # (it only translates errors, which the outermost call does): twice as fast to decode.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # pydantic's documented flag

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Self:
        """Validate ``obj``; raises the package's ``ValidationError``."""
        try:
            return super().model_validate(obj, **kwargs)
        except pydantic.ValidationError as exc:
            raise ValidationError(str(exc)) from exc

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Self:
        """Validate JSON; raises the package's ``ValidationError``."""
        try:
            return super().model_validate_json(json_data, **kwargs)
        except pydantic.ValidationError as exc:
            raise ValidationError(str(exc)) from exc


def require_name(value: str, what: str) -> str:
    """Like :func:`check_name`, raising the package's ``ValidationError``."""
    try:
        return check_name(value, what)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
