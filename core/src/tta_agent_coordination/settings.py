"""Backend options: the namespace and the queue defaults, from a URL's query and keywords."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import pydantic
from pydantic import Field, field_validator

from ._validation import Model, check_name
from .errors import ValidationError

__all__ = ["DEFAULT_NAMESPACE", "BackendOptions"]

DEFAULT_NAMESPACE = "tta"


class BackendOptions(Model):
    """What every backend honours; a driver's own options travel in ``extra``.

    Every key a backend writes starts with ``namespace``. The queue defaults apply to every
    queue of the backend; ``max_attempts`` can be set per entry at enqueue.
    """

    model_config: ClassVar[pydantic.ConfigDict] = pydantic.ConfigDict(frozen=True, extra="forbid")

    namespace: str = DEFAULT_NAMESPACE
    max_queue_length: Annotated[int, Field(ge=1)] = 10_000
    max_attempts: Annotated[int, Field(ge=1)] = 5
    max_message_bytes: Annotated[int, Field(ge=64)] = 1024 * 1024
    dedup_window: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    dead_letter_max_age: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    dead_letter_max_length: Annotated[int, Field(ge=1)] | None = None
    entry_id_retention: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 3600.0
    events_max_length: Annotated[int, Field(ge=1)] = 10_000
    extra: dict[str, str] = Field(default_factory=dict)

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str) -> str:
        return check_name(value, "namespace")

    @classmethod
    def from_url(cls, url: str, overrides: Mapping[str, Any] | None = None) -> BackendOptions:
        """Read options from the URL's query string, then apply keyword ``overrides``.

        Query parameters that are not core options are kept in ``extra`` for the driver to
        check. A parameter given twice is an error.
        """
        query = urlsplit(url).query
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
        seen: dict[str, str] = {}
        for key, value in pairs:
            if key in seen:
                msg = f"URL query parameter {key!r} is given twice"
                raise ValidationError(msg)
            seen[key] = value
        known = set(cls.model_fields) - {"extra"}
        values: dict[str, Any] = {k: v for k, v in seen.items() if k in known}
        extra: dict[str, str] = {k: v for k, v in seen.items() if k not in known}
        for key, value in (overrides or {}).items():
            if key in known:
                values[key] = value
            else:
                extra[key] = str(value)
        for key in ("dead_letter_max_age", "dead_letter_max_length"):
            if values.get(key) in ("", "none", "None"):
                values[key] = None
        return cls(**values, extra=extra)
