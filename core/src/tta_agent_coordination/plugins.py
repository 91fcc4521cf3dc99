"""Driver discovery through pluggy and entry points, and :func:`connect`.

Drivers are plugins in the entry-point group ``tta_agent_coordination`` (the memory driver
too, through the core's own entry point). A plugin answers
:meth:`~tta_agent_coordination.hookspecs.BackendSpecs.tta_backend_schemes` with lazy
``"module:factory"`` strings; the driver module is imported only when its scheme is asked for.

Set ``TTA_COORDINATION_BLOCK_PLUGINS`` to a comma-separated list of entry-point names to keep
those plugins from loading.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import threading
import warnings
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

import pluggy

from .errors import (
    BackendNotFoundError,
    PluginLoadError,
    PluginLoadWarning,
    ValidationError,
)
from .hookspecs import PROJECT_NAME, BackendSpecs
from .protocols import Backend
from .settings import BackendOptions

__all__ = [
    "BLOCK_ENV",
    "ENTRY_POINT_GROUP",
    "KNOWN_DRIVERS",
    "BackendFactory",
    "PluginRegistry",
    "backend_from_client",
    "connect",
    "installed_schemes",
    "plugin_registry",
    "resolve_backend",
]

ENTRY_POINT_GROUP = PROJECT_NAME
BLOCK_ENV = "TTA_COORDINATION_BLOCK_PLUGINS"

#: Schemes of drivers we publish, and the pip requirement that installs each.
KNOWN_DRIVERS: Mapping[str, str] = {
    "redis": "tta-agent-coordination[redis]",
    "rediss": "tta-agent-coordination[redis]",
    "redis+cluster": "tta-agent-coordination[redis]",
}

BackendFactory = Callable[[str, BackendOptions], Backend]


def _resolve(reference: str) -> object:
    module_name, sep, attr_path = reference.partition(":")
    if not sep or not module_name or not attr_path:
        msg = f"plugin reference {reference!r} is not of the form 'module:attribute'"
        raise PluginLoadError(msg)
    try:
        obj: object = importlib.import_module(module_name)
        for attr in attr_path.split("."):
            obj = getattr(obj, attr)
    except (ImportError, AttributeError) as exc:
        msg = f"cannot load {reference!r}: {exc}"
        raise PluginLoadError(msg) from exc
    return obj


class PluginRegistry:
    """The plugin manager: entry points loaded once, plus plugins registered in code."""

    def __init__(self) -> None:
        self._pm = pluggy.PluginManager(PROJECT_NAME)
        self._pm.add_hookspecs(BackendSpecs)
        self._lock = threading.Lock()
        self._loaded = False
        self._failed: dict[str, BaseException] = {}

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._loaded:
                return
            blocked = {n.strip() for n in os.environ.get(BLOCK_ENV, "").split(",") if n.strip()}
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in blocked or self._pm.has_plugin(ep.name):
                    continue
                try:
                    self._pm.register(ep.load(), name=ep.name)
                except Exception as exc:  # noqa: BLE001  # any failure of third-party code is reported
                    self._failed[ep.name] = exc
            self._loaded = True

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object in code (it overrides entry points for its schemes)."""
        self._ensure_loaded()
        self._pm.register(plugin, name=name)

    def unregister(self, name: str) -> None:
        """Remove a plugin registered under ``name``."""
        self._pm.unregister(name=name)

    @property
    def failed(self) -> Mapping[str, BaseException]:
        """Entry points that failed to load, by name."""
        self._ensure_loaded()
        return dict(self._failed)

    def schemes(self) -> dict[str, str]:
        """Every installed scheme mapped to its ``"module:factory"`` reference.

        Plugins registered later win a scheme claimed twice. Plugins that failed to load are
        reported with a :class:`PluginLoadWarning`.
        """
        self._ensure_loaded()
        for name, exc in self._failed.items():
            warnings.warn(
                f"tta_agent_coordination plugin {name!r} failed to load: {exc!r}",
                PluginLoadWarning,
                stacklevel=3,
            )
        result: dict[str, str] = {}
        # pluggy calls the most recently registered plugin first.
        for answer in self._pm.hook.tta_backend_schemes():
            for scheme, reference in cast("dict[str, str]", answer).items():
                result.setdefault(scheme.lower(), reference)
        return result

    def cli_commands(self) -> dict[str, object]:
        """The ``tta-coord`` commands plugins add, by name, each loaded now.

        A reference that fails to load is left out with a :class:`PluginLoadWarning`; of a
        name claimed twice, the plugin registered later wins.
        """
        self._ensure_loaded()
        commands: dict[str, object] = {}
        for answer in self._pm.hook.tta_cli_commands():
            for name, reference in cast("dict[str, str]", answer).items():
                if name in commands:
                    continue
                try:
                    commands[name] = _resolve(reference)
                except PluginLoadError as exc:
                    warnings.warn(
                        f"tta-coord command {name!r} failed to load: {exc}",
                        PluginLoadWarning,
                        stacklevel=2,
                    )
        return commands

    def factory(self, scheme: str) -> BackendFactory:
        """The factory for ``scheme``, imported now; raises when there is none."""
        self._ensure_loaded()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", PluginLoadWarning)
            schemes = self.schemes()
        reference = schemes.get(scheme)
        if reference is None:
            base = scheme.split("+", 1)[0]
            for name in (scheme, base):
                if name in self._failed:
                    msg = f"the plugin {name!r} for {scheme}:// failed to load"
                    raise PluginLoadError(msg) from self._failed[name]
            installed = ", ".join(f"{s}://" for s in sorted(schemes)) or "none"
            msg = f"no backend for {scheme}:// is installed (installed: {installed})"
            if scheme in KNOWN_DRIVERS:
                msg += f"; install it with: pip install '{KNOWN_DRIVERS[scheme]}'"
            if self._failed:
                msg += f"; plugins that failed to load: {', '.join(sorted(self._failed))}"
            raise BackendNotFoundError(msg)
        factory = _resolve(reference)
        if not callable(factory):
            msg = f"{reference!r} for {scheme}:// is not callable"
            raise PluginLoadError(msg)
        return cast("BackendFactory", factory)

    def from_client(self, client: Any, namespace: str) -> Backend:
        """Ask the plugins to wrap a driver library's client object into a backend."""
        self._ensure_loaded()
        backend = self._pm.hook.tta_backend_from_client(client=client, namespace=namespace)
        if backend is None:
            installed = ", ".join(sorted(KNOWN_DRIVERS.values()))
            msg = (
                f"no installed plugin knows a client of type {type(client).__qualname__}"
                f" (for a redis-py client: pip install '{installed}')"
            )
            raise BackendNotFoundError(msg)
        return cast("Backend", backend)


_registry = PluginRegistry()


def plugin_registry() -> PluginRegistry:
    """The process-wide plugin registry."""
    return _registry


def installed_schemes() -> list[str]:
    """The URL schemes the installed plugins serve, sorted (imports no driver)."""
    return sorted(_registry.schemes())


def connect(url: str = "memory://", **options: Any) -> Backend:
    """Return a backend for ``url``; close it with ``async with`` or ``await aclose()``.

    ``memory://`` (the default) is the embedded in-memory driver; other schemes come from
    installed plugins. ``?namespace=app`` (or ``namespace="app"``) prefixes every key the
    backend writes; other options (``max_queue_length``, ``max_attempts``,
    ``max_message_bytes``, ...) come from the query string or keywords, keywords winning.

    Raises:
        ValidationError: The URL or an option is invalid.
        BackendNotFoundError: No installed driver serves the scheme (the message names the
            installed ones, and the pip command for a driver we publish).
        PluginLoadError: The driver for the scheme failed to import.
    """
    if not isinstance(url, str) or "://" not in url:  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"backend URL {url!r} must look like scheme://..., e.g. memory:// or redis://host"
        raise ValidationError(msg)
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        msg = f"backend URL {url!r} has no scheme"
        raise ValidationError(msg)
    backend_options = BackendOptions.from_url(url, options)
    backend = cast("object", _registry.factory(scheme)(url, backend_options))
    if not isinstance(backend, Backend):  # third-party code may return anything
        msg = f"the factory for {scheme}:// returned {type(backend).__qualname__}, not a Backend"
        raise PluginLoadError(msg)
    return backend


def backend_from_client(client: Any, namespace: str) -> Backend:
    """Wrap a driver library's client (e.g. redis-py) into a backend through the plugins."""
    return _registry.from_client(client, namespace)


def resolve_backend(store: Backend | str | object, *, namespace: str) -> tuple[Backend, bool]:
    """Turn what the original API accepts as a store into a backend.

    ``store`` is a backend (used as it is), a URL (connected with ``namespace`` unless the URL
    names one) or a driver library's client (wrapped through the plugins, in ``namespace``).
    Returns the backend and whether the caller made it (and so should close it).
    """
    if isinstance(store, str):
        query = {key for key, _ in parse_qsl(urlsplit(store).query, keep_blank_values=True)}
        options = {} if "namespace" in query else {"namespace": namespace}
        return connect(store, **options), True
    if isinstance(store, Backend):
        return store, False
    return backend_from_client(store, namespace), True
