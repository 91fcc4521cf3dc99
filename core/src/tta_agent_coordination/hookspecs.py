"""The pluggy hooks a driver plugin implements (project name ``tta_agent_coordination``).

A plugin is a module (or object) named by an entry point in the group
``tta_agent_coordination``. It implements :func:`tta_backend_schemes`, returning lazy
``"module:attribute"`` strings, so that listing the installed schemes imports no driver::

    # acme_driver/plugin.py
    from tta_agent_coordination.hookspecs import hookimpl

    @hookimpl
    def tta_backend_schemes() -> dict[str, str]:
        return {"acme": "acme_driver.backend:AcmeBackend.from_url"}

The attribute is a factory ``factory(url: str, options: BackendOptions) -> Backend``.

A plugin may also add commands to ``tta-coord`` with :func:`tta_cli_commands` (the Redis
driver adds ``migrate-original`` that way, so the core's command line never imports it).
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["PROJECT_NAME", "BackendSpecs", "hookimpl", "hookspec"]

#: The pluggy project name, which is also the entry-point group.
PROJECT_NAME = "tta_agent_coordination"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


class BackendSpecs:
    """The hook specifications."""

    @hookspec
    def tta_backend_schemes(self) -> dict[str, str]:  # type: ignore[empty-body]  # a spec
        """Return the URL schemes this plugin serves, each mapped to ``"module:factory"``."""

    @hookspec(firstresult=True)
    def tta_backend_from_client(self, client: Any, namespace: str) -> Any:
        """Wrap a client object of a driver's library (e.g. a redis-py client) into a backend.

        Return ``None`` when the client is not one this plugin knows. Used by the original
        API's ``RedisMessageCoordinator(redis_client)``, so the core never imports a driver.
        """

    @hookspec
    def tta_cli_commands(self) -> dict[str, str]:  # type: ignore[empty-body]  # a spec
        """Return ``tta-coord`` commands this plugin adds: name mapped to ``"module:function"``.

        The function is a typer command (its parameters annotated with ``typer.Option`` and
        ``typer.Argument``); its module is imported when ``tta-coord`` starts, so it should
        import its driver inside the function. A name the core already uses is ignored with a
        :class:`~tta_agent_coordination.errors.PluginLoadWarning`, like a reference that fails
        to load.
        """
