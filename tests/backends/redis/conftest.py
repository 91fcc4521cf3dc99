"""Find a real redis-server for the Redis driver's tests, and start private ones.

``TTA_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``) names the shared server. When it cannot
be reached and ``redis-server`` is installed, a throw-away server is started on a free loopback
port for the run (and stopped by its pid at the end). When neither holds the tests are skipped
with the reason, except under ``CI=true``, where the run fails loudly: CI must never turn green
by skipping the driver.

Tests that change a server's configuration, flush its scripts or need a Redis Cluster get
private servers (``private_server``, ``cluster_url``): started from the ``redis-server`` binary
on free loopback ports for the session and stopped by their pids. The shared server's
configuration is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import redis_helpers
from redis_helpers import Servers, reachable

_throwaway: list[Servers] = []


def pytest_configure(config: pytest.Config) -> None:
    """Start a throw-away redis-server when the configured one is unreachable."""
    binary = shutil.which("redis-server")
    if reachable(redis_helpers.REDIS_URL) is None or binary is None:
        return
    started = Servers(binary, Path(tempfile.mkdtemp(prefix="tta-redis-")))
    port = started.start()
    _throwaway.append(started)
    # test modules import REDIS_URL after this (at collection): they get the throw-away one
    redis_helpers.REDIS_URL = f"redis://127.0.0.1:{port}/0"


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the throw-away server, by its pid."""
    while _throwaway:
        started = _throwaway.pop()
        started.stop()
        shutil.rmtree(started.workdir, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    mine = [item for item in items if str(item.path).startswith(here)]
    if not mine:
        return
    problem = reachable(redis_helpers.REDIS_URL)
    if problem is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        msg = (
            f"CI=true and the Redis tests cannot run: {problem}, and redis-server is not installed"
        )
        raise pytest.UsageError(msg)
    for item in mine:
        item.add_marker(pytest.mark.skip(reason=f"{problem}; redis-server is not installed"))


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
