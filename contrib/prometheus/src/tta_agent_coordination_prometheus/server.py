"""Serve ``/metrics`` from an ``async with`` block.

:func:`serve_metrics` runs the HTTP server alone; :func:`metrics_endpoint` runs it with the
sink and the collector wired to a backend (what ``tta-coord worker --metrics-port`` runs).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

import anyio
import anyio.to_thread
from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.registry import Collector

from tta_agent_coordination import CircuitBreakerConfig
from tta_agent_coordination.errors import ValidationError
from tta_agent_coordination.protocols import Backend

from .collector import CoordinationCollector
from .sink import PrometheusMetrics

__all__ = ["MetricsEndpoint", "MetricsServer", "metrics_endpoint", "serve_metrics"]

_JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class MetricsServer:
    """Where ``/metrics`` is served (``port`` is the bound one, also when 0 was asked for)."""

    addr: str
    port: int

    @property
    def url(self) -> str:
        """The scrape URL (``0.0.0.0`` and ``::`` are shown as the loopback address)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.addr, self.addr)  # noqa: S104  # naming the wildcard, not binding it
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/metrics"


def _check_port(port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int):  # pyright: ignore[reportUnnecessaryIsInstance]  # runtime guard
        msg = f"port must be an int, not {port!r}"
        raise ValidationError(msg)
    if not 0 <= port <= 65535:
        msg = f"port must be 0..65535 (0: any free port), not {port}"
        raise ValidationError(msg)
    return port


def _stop(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(_JOIN_TIMEOUT)


@asynccontextmanager
async def serve_metrics(
    port: int,
    *,
    addr: str = "0.0.0.0",  # noqa: S104  # scrapers are remote: prometheus_client's own default
    registry: Collector | None = None,
) -> AsyncGenerator[MetricsServer]:
    """Serve ``registry`` in Prometheus' text format over HTTP for the ``async with`` block.

    The server (prometheus_client's ``start_http_server``) runs in a daemon thread; it is shut
    down and its socket closed on exit, also on cancellation.

    Args:
        port: The TCP port (0: a free one; read it from the yielded :class:`MetricsServer`).
        addr: The address to bind (all interfaces by default; ``127.0.0.1`` for local only).
        registry: What to serve (prometheus_client's global ``REGISTRY`` when ``None``).

    Raises:
        ValidationError: A bad port.
        OSError: The address cannot be bound (say, the port is in use).
    """
    _check_port(port)
    start = functools.partial(
        start_http_server, port, addr, REGISTRY if registry is None else registry
    )
    try:
        server, thread = await anyio.to_thread.run_sync(start)
    except OSError as exc:
        msg = f"cannot serve /metrics on {addr}:{port}: {exc.strerror or exc}"
        raise OSError(exc.errno, msg) from exc
    try:
        yield MetricsServer(addr, int(server.server_address[1]))
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, server, thread)


@dataclass(frozen=True)
class MetricsEndpoint:
    """What :func:`metrics_endpoint` runs: pass ``metrics`` as ``metrics=`` to the core."""

    metrics: PrometheusMetrics
    collector: CoordinationCollector
    server: MetricsServer


@asynccontextmanager
async def metrics_endpoint(
    backend: Backend,
    port: int,
    *,
    addr: str = "0.0.0.0",  # noqa: S104  # scrapers are remote: prometheus_client's own default
    registry: CollectorRegistry | None = None,
    instance_labels: bool = False,
    interval: float = 15.0,
    max_queues: int = 1000,
    max_breakers: int = 100,
    breaker_config: CircuitBreakerConfig | None = None,
) -> AsyncGenerator[MetricsEndpoint]:
    """Run a sink, a collector of ``backend`` and ``/metrics`` on ``port`` in one block.

    A :class:`PrometheusMetrics` sink, a running :class:`CoordinationCollector` and
    :func:`serve_metrics`::

        async with metrics_endpoint(backend, 9464) as endpoint:
            coordinator = MessageCoordinator(backend, metrics=endpoint.metrics)
            ...

    The sink and the collector are registered in ``registry`` (the global ``REGISTRY``
    when ``None``, so the process and platform collectors and a handler's own metrics are
    served too) and unregistered on exit. The first refresh of the collector is done before
    the block starts. Arguments are those of :class:`PrometheusMetrics`,
    :class:`CoordinationCollector` and :func:`serve_metrics`.

    Raises:
        ValidationError: A bad argument, or ``registry`` already holds these metrics.
        OSError: The address cannot be bound.
    """
    _check_port(port)
    target = REGISTRY if registry is None else registry
    collector = CoordinationCollector(
        backend,
        interval=interval,
        max_queues=max_queues,
        max_breakers=max_breakers,
        instance_labels=instance_labels,
        breaker_config=breaker_config,
    )
    sink = PrometheusMetrics(target, instance_labels=instance_labels)
    try:
        try:
            target.register(collector)
        except ValueError as exc:
            msg = f"cannot register the tta collector in {target!r}: {exc}"
            raise ValidationError(msg) from exc
        try:
            async with (
                collector.running(),
                serve_metrics(port, addr=addr, registry=target) as server,
            ):
                yield MetricsEndpoint(sink, collector, server)
        finally:
            target.unregister(collector)
    finally:
        sink.unregister()
