"""The driver's plugin: named by the ``tta_agent_coordination`` entry point.

Kept tiny so that listing the installed schemes imports neither redis nor the driver.
"""

from __future__ import annotations

from typing import Any

from tta_agent_coordination.hookspecs import hookimpl

__all__ = ["tta_backend_from_client", "tta_backend_schemes", "tta_cli_commands"]

_FACTORY = "tta_agent_coordination_redis.backend:from_url"


@hookimpl
def tta_backend_schemes() -> dict[str, str]:
    """``redis://``, ``rediss://`` and ``redis+cluster://``, imported only when asked for."""
    return {"redis": _FACTORY, "rediss": _FACTORY, "redis+cluster": _FACTORY}


@hookimpl
def tta_cli_commands() -> dict[str, str]:
    """``tta-coord migrate-original``: move the original code's Redis data into any backend."""
    return {"migrate-original": "tta_agent_coordination_redis.cli:migrate_original_command"}


@hookimpl
def tta_backend_from_client(client: Any, namespace: str) -> Any:
    """Wrap a ``redis.asyncio.Redis`` client into a backend; ``None`` for other objects.

    The backend does not close a client it did not make. The client must not decode
    responses (``decode_responses=False``, redis-py's default).
    """
    module = type(client).__module__
    if not module.startswith("redis."):  # anything else: not ours, and import nothing
        return None
    from redis.asyncio import Redis  # noqa: PLC0415  # imported only for a redis client

    if not isinstance(client, Redis):
        return None
    from tta_agent_coordination.settings import BackendOptions  # noqa: PLC0415

    from .backend import RedisBackend  # noqa: PLC0415  # the driver loads only when used

    return RedisBackend(client, BackendOptions(namespace=namespace))
