"""The Redis driver of tta-agent-coordination (``redis://``, ``rediss://``).

Found by the core through the ``tta_agent_coordination`` entry point; use it through
``tta_agent_coordination.connect("redis://host:6379/0?namespace=app")``. The data layout is
described in ``docs/redis-layout.md``.

The names below are imported on first use (PEP 562), so that loading the plugin module (to
list schemes or command-line commands) imports neither redis nor the driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .backend import Connection, RedisBackend, RedisClock
    from .keys import LAYOUT_VERSION, Keys
    from .queue import RedisQueueStore

__all__ = ["LAYOUT_VERSION", "Connection", "Keys", "RedisBackend", "RedisClock", "RedisQueueStore"]

_WHERE = {
    "LAYOUT_VERSION": "keys",
    "Keys": "keys",
    "Connection": "backend",
    "RedisBackend": "backend",
    "RedisClock": "backend",
    "RedisQueueStore": "queue",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        msg = f"module {__name__!r} has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
