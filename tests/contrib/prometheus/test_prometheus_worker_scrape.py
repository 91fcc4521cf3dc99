"""The issue's check: scrape ``/metrics`` served by a real ``tta-coord worker --metrics-port``
subprocess against the real Redis, parse it with prometheus_client's parser, and find the
counts of what was sent, acked, nacked and dead-lettered, and the queue depths.

The Redis server is ``TTA_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); each run uses a
namespace of its own and drops it at the end. Without a reachable server the test is skipped,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import anyio.to_thread
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tta_agent_coordination import AgentId, MessageCoordinator, connect
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination_prometheus import PrometheusMetrics

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

REDIS_URL = os.environ.get("TTA_REDIS_URL", "redis://127.0.0.1:6379/0")
AGENT = AgentId("scraped", "w1")
SHARED = AgentId("scraped")
OK, FLAKY, FAIL = 7, 3, 2  # messages of each kind
TOTAL = OK + FLAKY + FAIL

HANDLER = """
    from tta_agent_coordination import PermanentFailureError

    async def handle(delivery):
        action = delivery.message.payload["do"]
        if action == "fail":
            raise PermanentFailureError("refused for the test")
        if action == "flaky" and delivery.attempt == 1:
            raise RuntimeError("fails once, for the test")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the Redis driver runs on asyncio


def _redis_problem() -> str | None:
    parts = urlsplit(REDIS_URL)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 2):
            return None
    except OSError as exc:
        return f"no redis-server at {REDIS_URL} ({exc})"


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    problem = _redis_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the worker scrape test cannot run: {problem}")
        pytest.skip(problem)
    namespace = f"tta-prom-{uuid.uuid4().hex[:12]}"
    url = f"{REDIS_URL}?namespace={namespace}"
    yield url
    async with connect(url) as backend:
        await backend.drop_namespace()


def _command() -> list[str]:
    script = Path(sys.executable).parent / "tta-coord"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from tta_agent_coordination.cli import main; main()"]


class WorkerProcess:
    """``tta-coord worker`` in a subprocess, its stderr in a file."""

    def __init__(self, url: str, directory: Path) -> None:
        self.log = directory / "worker.log"
        (directory / "scrape_handlers.py").write_text(textwrap.dedent(HANDLER))
        args = [
            *_command(),
            "--url",
            url,
            "worker",
            "scrape_handlers:handle",
            "--agent",
            str(AGENT),
            "--concurrency",
            "4",
            "--import-path",
            str(directory),
            "--metrics-port",
            "0",
            "--metrics-interval",
            "0.5",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, stderr=log, stdout=log, env=env)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def metrics_url(self) -> str:
        """The URL the worker logs once it serves (port 0: the OS chose one)."""
        with anyio.fail_after(60):
            while True:
                found = re.search(r"metrics at (http://\S+/metrics)", self.output())
                if found is not None:
                    return found[1]
                if self.process.poll() is not None:
                    pytest.fail(f"the worker exited early:\n{self.output()}")
                await anyio.sleep(0.05)  # polls the log file: the subprocess cannot signal us

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


@pytest.fixture
def worker_process(redis_url: str, tmp_path: Path) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(redis_url, tmp_path)
    try:
        yield worker
    finally:
        worker.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310  # our loopback URL
        return str(response.read().decode())


class Scrape:
    """One scrape, parsed with prometheus_client's parser."""

    def __init__(self, text: str) -> None:
        self.types = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """Sum over every series of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)


async def scrape(url: str) -> Scrape:
    return Scrape(await anyio.to_thread.run_sync(_get, url))


async def scrape_until(url: str, check: Callable[[Scrape], bool]) -> Scrape:
    """Scrape until ``check(scrape)`` holds (the worker is another process: we poll it)."""
    with anyio.fail_after(60):
        while True:
            got = await scrape(url)
            if check(got):
                return got
            await anyio.sleep(0.1)


async def test_a_worker_scrape_counts_what_was_sent_acked_and_dead_lettered(
    redis_url: str, tmp_path: Path
) -> None:
    sent = CollectorRegistry()
    async with connect(redis_url) as backend:
        await _send_all(backend, PrometheusMetrics(sent))
    assert sent.get_sample_value("tta_messages_sent_total", _labels(AGENT, "event")) == TOTAL - 2
    assert sent.get_sample_value("tta_messages_sent_total", _labels(SHARED, "event")) == 2

    worker = WorkerProcess(redis_url, tmp_path)
    try:
        url = await worker.metrics_url()
        first = await scrape(url)
        if first.get("tta_collector_refreshes_total") == 1:
            # the collector's first read is done before the worker starts serving
            assert first.total("tta_queue_depth", state="ready") == TOTAL

        def settled(got: Scrape) -> bool:
            acked = got.total("tta_deliveries_acked_total", agent_type="scraped")
            dead = got.total("tta_deliveries_dead_lettered_total", agent_type="scraped")
            return acked == OK + FLAKY and dead == FAIL

        done = await scrape_until(url, settled)
    finally:
        code = worker.stop()
    assert code == 0, worker.output()

    # the counters: every message sent was reserved; each kind ended where it should
    inst, shared = _labels(AGENT), _labels(SHARED)
    reserved = done.total("tta_deliveries_reserved_total", agent_type="scraped")
    released = done.total("tta_deliveries_released_total", agent_type="scraped")
    # the serve loop hands back (releases) what it reserved but could not start at once; the
    # rest ran: each message once, a flaky one twice
    assert reserved - released == TOTAL + FLAKY
    handled = done.total("tta_handler_duration_seconds_count", agent_type="scraped")
    assert handled == TOTAL + FLAKY
    shared_runs = done.total("tta_handler_duration_seconds_count", **shared)
    assert shared_runs == 2
    assert (
        done.get("tta_deliveries_acked_total", **inst)
        + done.get("tta_deliveries_acked_total", **shared)
        == OK + FLAKY
    )
    assert done.get("tta_deliveries_nacked_total", **inst) == FLAKY
    dead = done.get("tta_deliveries_dead_lettered_total", reason="handler_error", **inst)
    assert dead == FAIL
    assert done.total("tta_handler_duration_seconds_count", outcome="ok") == OK + FLAKY
    assert done.total("tta_handler_duration_seconds_count", outcome="error") == FLAKY + FAIL
    assert done.get("tta_metrics_sink_errors_total") == 0
    assert done.types["tta_deliveries_acked"] == "counter"
    assert done.types["tta_handler_duration_seconds"] == "histogram"
    assert done.types["tta_queue_depth"] == "gauge"
    # the process collector of the global registry is served too
    assert done.get("process_cpu_seconds_total") > 0


async def test_the_collector_reports_the_dead_letters_after_a_refresh(
    worker_process: WorkerProcess, redis_url: str
) -> None:
    async with connect(redis_url) as backend:
        await _send_all(backend, PrometheusMetrics(CollectorRegistry()))
    url = await worker_process.metrics_url()
    settled = await scrape_until(
        url,
        lambda got: (
            got.total("tta_deliveries_dead_lettered_total", agent_type="scraped") == FAIL
            and got.total("tta_deliveries_acked_total", agent_type="scraped") == OK + FLAKY
        ),
    )
    seen = settled.get("tta_collector_refreshes_total")
    # the worker refreshes every 0.5 s (--metrics-interval): wait for a read made after
    # everything settled
    after = await scrape_until(url, lambda got: got.get("tta_collector_refreshes_total") > seen)
    inst = _labels(AGENT)
    assert after.get("tta_queue_depth", state="dead", **inst) == FAIL
    for state in ("ready", "delayed", "reserved"):
        assert after.get("tta_queue_depth", state=state, **inst) == 0
        assert after.get("tta_queue_depth", state=state, **_labels(SHARED)) == 0
    assert after.get("tta_collector_up") == 1
    assert after.get("tta_collector_truncated", what="queues") == 0
    assert 0 <= after.get("tta_collector_snapshot_age_seconds") < 15
    assert worker_process.stop() == 0


def _labels(queue: AgentId, message_type: str | None = None) -> dict[str, str]:
    name = str(queue)
    labels = {
        "queue": name if queue.instance is None else f"{queue.type}:*",
        "agent_type": queue.type,
    }
    if message_type is not None:
        labels["message_type"] = message_type
    return labels


async def _send_all(backend: Backend, metrics: PrometheusMetrics) -> None:
    coord = MessageCoordinator(backend, metrics=metrics)
    kinds = ["ok"] * OK + ["flaky"] * FLAKY + ["fail"] * FAIL
    for number, kind in enumerate(kinds):
        to = SHARED if number in (0, 1) else AGENT  # two ok ones through the shared queue
        await coord.send(to, {"do": kind})
