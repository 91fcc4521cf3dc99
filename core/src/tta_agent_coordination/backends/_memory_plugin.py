"""The memory driver's plugin: registered through the core's own entry point, like any driver.

Kept tiny so that listing schemes imports nothing else.
"""

from __future__ import annotations

from ..hookspecs import hookimpl

__all__ = ["tta_backend_schemes"]


@hookimpl
def tta_backend_schemes() -> dict[str, str]:
    """The memory driver serves ``memory://``."""
    return {"memory": "tta_agent_coordination.backends.memory:MemoryBackend.from_url"}
