"""The rq job: rq refuses functions of ``__main__``, so it lives in a module of its own."""

from __future__ import annotations

from typing import Any


def handler(body: dict[str, Any]) -> None:
    """The no-op job."""
