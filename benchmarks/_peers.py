"""The peers (``--peers``): each in its own virtualenv, run as a subprocess (placeholder)."""

from __future__ import annotations

from collections.abc import Callable

from ._measure import Summary
from ._server import Placement, RedisServer


def run_all(
    *,
    server: RedisServer,
    placement: Placement,
    n: int,
    reps: int,
    only: set[str],
    log: Callable[[str], None],
) -> dict[str, dict[str, Summary]]:
    return {}
