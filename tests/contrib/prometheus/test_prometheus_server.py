"""``serve_metrics`` and ``metrics_endpoint``: ``/metrics`` over HTTP on a free loopback port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from tta_agent_coordination import AgentId, MessageCoordinator, ValidationError, connect
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination_prometheus import MetricsServer, metrics_endpoint, serve_metrics

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    async with connect("memory://") as b:
        yield b


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # a loopback http URL
        return str(response.read().decode())


async def get(url: str) -> dict[str, Any]:
    text = await anyio.to_thread.run_sync(_get, url)
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, Any], name: str, **labels: str) -> float | None:
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


async def test_serves_a_registry_and_stops(backend: Backend) -> None:
    registry = CollectorRegistry()
    Counter("demo_things", "things", registry=registry).inc(3)
    async with serve_metrics(0, addr="127.0.0.1", registry=registry) as server:
        assert server.port > 0
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        scraped = await get(server.url)
        assert sample(scraped, "demo_things_total") == 3
    with pytest.raises(urllib.error.URLError):
        await anyio.to_thread.run_sync(_get, server.url)  # the socket is closed


async def test_a_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve /metrics on 127.0.0.1:{port}"):
            async with serve_metrics(port, addr="127.0.0.1", registry=CollectorRegistry()):
                pytest.fail("served on a taken port")


@pytest.mark.parametrize("port", [-1, 65536, True, 80.0, "9464"])
async def test_bad_ports(port: Any, backend: Backend) -> None:
    with pytest.raises(ValidationError, match="port must be"):
        async with serve_metrics(port):
            pytest.fail("served")
    with pytest.raises(ValidationError, match="port must be"):
        async with metrics_endpoint(backend, port):
            pytest.fail("served")


def test_urls_for_wildcard_and_ipv6_addresses() -> None:
    assert MetricsServer("0.0.0.0", 9464).url == "http://127.0.0.1:9464/metrics"  # noqa: S104
    assert MetricsServer("::", 9464).url == "http://[::1]:9464/metrics"
    assert MetricsServer("::1", 1).url == "http://[::1]:1/metrics"
    assert MetricsServer("10.1.2.3", 80).url == "http://10.1.2.3:80/metrics"


async def test_endpoint_serves_sink_and_collector(backend: Backend) -> None:
    registry = CollectorRegistry()
    async with metrics_endpoint(
        backend, 0, addr="127.0.0.1", registry=registry, interval=60
    ) as endpoint:
        coord = MessageCoordinator(backend, metrics=endpoint.metrics)
        await coord.send(AgentId("world", "w1"), {"n": 1})
        await coord.send(AgentId("world", "w2"), {"n": 2})
        await endpoint.collector.refresh()
        scraped = await get(endpoint.server.url)
        labels = {"queue": "world:*", "agent_type": "world"}
        assert sample(scraped, "tta_messages_sent_total", message_type="event", **labels) == 2
        assert sample(scraped, "tta_queue_depth", state="ready", **labels) == 2
        assert sample(scraped, "tta_collector_up") == 1
    # unregistered on exit: a second endpoint on the same registry works
    assert list(registry.collect()) == []
    async with metrics_endpoint(backend, 0, addr="127.0.0.1", registry=registry) as again:
        scraped = await get(again.server.url)
        assert sample(scraped, "tta_collector_up") == 1


async def test_two_endpoints_on_one_registry_are_refused(backend: Backend) -> None:
    registry = CollectorRegistry()
    async with metrics_endpoint(backend, 0, addr="127.0.0.1", registry=registry):
        with pytest.raises(ValidationError, match="cannot register the tta metrics"):
            async with metrics_endpoint(backend, 0, addr="127.0.0.1", registry=registry):
                pytest.fail("registered twice")
        # the clash of the collector alone (a sink registered elsewhere) is refused too
        with pytest.raises(ValidationError, match="cannot register the tta collector"):
            async with metrics_endpoint(
                backend, 0, addr="127.0.0.1", registry=_collector_clash(registry)
            ):
                pytest.fail("registered twice")


def _collector_clash(registry: CollectorRegistry) -> CollectorRegistry:
    """A registry that already holds ``tta_collector_up`` (and none of the sink's metrics)."""
    other = CollectorRegistry()
    Counter("tta_collector_up", "taken", registry=other)
    return other


async def test_the_endpoint_stops_on_cancellation(backend: Backend) -> None:
    registry = CollectorRegistry()
    url = ""
    with anyio.CancelScope() as scope:
        async with metrics_endpoint(backend, 0, addr="127.0.0.1", registry=registry) as endpoint:
            url = endpoint.server.url
            await get(url)
            scope.cancel()
            await anyio.sleep_forever()
    with pytest.raises(urllib.error.URLError):
        await anyio.to_thread.run_sync(_get, url)
    assert list(registry.collect()) == []


async def test_an_error_in_the_endpoint_block_comes_out_as_itself(backend: Backend) -> None:
    registry = CollectorRegistry()
    with pytest.raises(KeyError, match="mine"):
        async with metrics_endpoint(backend, 0, addr="127.0.0.1", registry=registry):
            raise KeyError("mine")
    assert list(registry.collect()) == []
