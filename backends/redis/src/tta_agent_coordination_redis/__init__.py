"""The Redis driver of tta-agent-coordination (``redis://``, ``rediss://``).

Found by the core through the ``tta_agent_coordination`` entry point; use it through
``tta_agent_coordination.connect("redis://host:6379/0?namespace=app")``. The data layout is
described in ``docs/redis-layout.md``.
"""

from __future__ import annotations

from .backend import Connection, RedisBackend, RedisClock
from .keys import LAYOUT_VERSION, Keys
from .queue import RedisQueueStore

__all__ = ["LAYOUT_VERSION", "Connection", "Keys", "RedisBackend", "RedisClock", "RedisQueueStore"]
