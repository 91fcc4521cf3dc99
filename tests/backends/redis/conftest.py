"""Find a real redis-server for the Redis driver's tests, and start private ones.

``TTA_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) names the shared server. When it cannot
be reached the tests are skipped with the reason, except under ``CI=true``, where an
unreachable server fails the run loudly: CI must never turn green by skipping the driver.

Tests that change a server's configuration, flush its scripts or need a Redis Cluster get
private servers (``private_server``, ``cluster_url``): started from the ``redis-server`` binary
on free loopback ports for the session and stopped by their pids. The shared server's
configuration is never touched.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from redis_helpers import REDIS_URL, Servers, reachable


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


def _no_server_binary() -> str:
    reason = "redis-server is not installed: cannot start private servers"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Private redis-servers for tests that change server state or need a cluster."""
    binary = shutil.which("redis-server")
    if binary is None:
        _no_server_binary()
    assert binary is not None
    started = Servers(binary, tmp_path_factory.mktemp("redis-servers"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def private_server(servers: Servers) -> str:
    """A standalone redis-server of our own (its configuration may be changed)."""
    return f"redis://127.0.0.1:{servers.start()}/0"


@pytest.fixture(scope="session")
def cluster_url(servers: Servers) -> str:
    """A three-master Redis Cluster of our own, as a ``redis+cluster://`` URL."""
    ports = servers.start_cluster()
    return f"redis+cluster://127.0.0.1:{ports[0]}"
