"""Find a real redis-server for the Redis driver's tests.

``TTA_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) names it. When it cannot be reached
the tests are skipped with the reason, except under ``CI=true``, where an unreachable server
fails the run loudly: CI must never turn green by skipping the driver.
"""

from __future__ import annotations

import os

import pytest

from redis_helpers import REDIS_URL, reachable


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.path).startswith(here)]
    if not mine:
        return
    problem = reachable(REDIS_URL)
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        raise pytest.UsageError(f"CI=true and the Redis tests cannot run: {problem}")
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=problem))
