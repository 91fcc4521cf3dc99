"""Shared helpers of the Redis driver's tests (imported by basename, like the core's)."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

#: The shared server the tests use; never reconfigured by them.
REDIS_URL = os.environ.get("TTA_REDIS_URL", "redis://127.0.0.1:6379/0")


def reachable(url: str) -> str | None:
    """``None`` if a TCP connection to the URL's host opens, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"no redis-server at {host}:{port} ({exc}); start one or set TTA_REDIS_URL"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
