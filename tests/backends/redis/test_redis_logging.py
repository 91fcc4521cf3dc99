"""The Redis driver logs the transient errors it retries (no server needed for these)."""

from __future__ import annotations

import logging

import pytest
import redis as sync_redis

from tta_agent_coordination.errors import BackendUnavailableError
from tta_agent_coordination_redis._errors import boundary

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_each_retried_transient_error_is_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tta_agent_coordination.redis")

    async def down() -> str:
        raise sync_redis.ConnectionError("reset by peer")

    with pytest.raises(BackendUnavailableError, match="after 3 tries"):
        await boundary(down, what="enqueue", tries=3)
    records = [r for r in caplog.records if r.name == "tta_agent_coordination.redis"]
    assert [(r.levelno, r.__dict__["operation"], r.__dict__["try"]) for r in records] == [
        (logging.INFO, "enqueue", 1),
        (logging.INFO, "enqueue", 2),
    ]  # the third failure is not retried: it raises
    assert records[0].getMessage().startswith("redis unreachable for enqueue (try 1 of 3)")
    assert "reset by peer" in records[0].getMessage()
