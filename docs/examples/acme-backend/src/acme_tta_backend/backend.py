"""The acme backend: a real driver would talk to a server here; this one wraps memory://.

``acme://HOST`` connects to the store called HOST (``acme://`` to ``default``). Every backend
connected to one store shares it, as clients of one server do, each in its own namespace.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self
from urllib.parse import urlsplit, urlunsplit

from tta_agent_coordination import BackendOptions, ValidationError, connect
from tta_agent_coordination.protocols import (
    Backend,
    BreakerStore,
    ClockControl,
    QueueStore,
    RegistryStore,
)

__all__ = ["AcmeBackend", "from_url"]


class AcmeBackend:
    """A :class:`~tta_agent_coordination.protocols.Backend` for ``acme://``."""

    def __init__(self, inner: Backend, url: str) -> None:
        self._inner = inner
        self._url = url

    @property
    def url(self) -> str:
        """The URL it was made from (acme URLs carry no password to mask)."""
        return self._url

    @property
    def options(self) -> BackendOptions:
        """The namespace and queue defaults in force."""
        return self._inner.options

    @property
    def capabilities(self) -> frozenset[str]:
        """acme can move its clock in tests; it has no cluster mode and no TLS."""
        return self._inner.capabilities

    @property
    def queue(self) -> QueueStore:
        """The queue store."""
        return self._inner.queue

    @property
    def registry(self) -> RegistryStore:
        """The registry store."""
        return self._inner.registry

    @property
    def breakers(self) -> BreakerStore:
        """The breaker store."""
        return self._inner.breakers

    @property
    def clock(self) -> ClockControl | None:
        """The clock hook (the ``clock_control`` capability)."""
        return self._inner.clock

    async def drop_namespace(self) -> None:
        """Remove everything this backend wrote in its namespace."""
        await self._inner.drop_namespace()

    async def aclose(self) -> None:
        """Disconnect; idempotent."""
        await self._inner.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


def from_url(url: str, options: BackendOptions) -> AcmeBackend:
    """The factory the plugin names: ``acme://[HOST]``, options already parsed by the core.

    Raises:
        ValidationError: The URL has a path, or options acme does not know.
    """
    parts = urlsplit(url)
    if parts.path not in ("", "/"):
        msg = f"acme URL {url!r} takes a host, not a path: acme://HOST"
        raise ValidationError(msg)
    if options.extra:
        msg = f"unknown acme:// options: {', '.join(sorted(options.extra))}"
        raise ValidationError(msg)
    store = f"acme-{parts.hostname or 'default'}"
    inner_url = urlunsplit(("memory", store, "", "", ""))
    inner = connect(inner_url, **options.model_dump(exclude={"extra"}))
    return AcmeBackend(inner, url)
