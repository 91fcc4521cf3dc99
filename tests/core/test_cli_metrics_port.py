"""``tta-coord worker --metrics-port``: Prometheus metrics served while the worker runs.

Through typer's runner, in this process, on a named memory store. The handler scrapes the
endpoint while it runs, then stops the worker with a real SIGTERM (the worker's signal receiver
is open for the whole run). The contrib package is imported only when the option is given.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner, Result

from tta_agent_coordination import AgentId, AgentMessage, connect
from tta_agent_coordination.cli import app
from tta_agent_coordination.protocols import Backend

AGENT = AgentId("probe", "p1")


class Worker:
    def __init__(self, url: str, backend: Backend, directory: Path) -> None:
        self.url = url
        self.backend = backend
        self.directory = directory
        self.runner = CliRunner()
        self.modules: list[str] = []

    def run(self, *args: str) -> Result:
        return self.runner.invoke(
            app, ["--url", self.url, "worker", *args, "--import-path", str(self.directory)]
        )

    def module(self, source: str) -> str:
        name = f"metrics_handlers_{uuid.uuid4().hex[:10]}"
        (self.directory / f"{name}.py").write_text(textwrap.dedent(source))
        self.modules.append(name)
        return name

    def enqueue(self) -> None:
        async def go() -> None:
            await self.backend.queue.enqueue(AgentMessage(sender=AGENT, recipient=AGENT))

        anyio.run(go)


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    url = f"memory://metrics-{uuid.uuid4().hex[:10]}"
    backend = connect(url)
    found = Worker(url, backend, tmp_path)
    yield found
    anyio.run(backend.aclose)
    for name in found.modules:
        sys.modules.pop(name, None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))  # noqa: S104  # where the worker binds
        return int(probe.getsockname()[1])


def error_line(result: Result) -> str:
    assert "Traceback" not in result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("tta-coord: error:")]
    return line


SCRAPING_HANDLER = """
    import os, signal, urllib.request
    import anyio.to_thread

    SCRAPED = []

    def fetch():
        with urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    async def handle(delivery):
        SCRAPED.append(await anyio.to_thread.run_sync(fetch))
        os.kill(os.getpid(), signal.SIGTERM)
"""


def test_serves_metrics_while_the_worker_runs(worker: Worker) -> None:
    port = free_port()
    name = worker.module(SCRAPING_HANDLER.replace("{port}", str(port)))
    worker.enqueue()
    result = worker.run(f"{name}:handle", "--agent", "probe:p1", "--metrics-port", str(port))
    assert result.exit_code == 0, result.output
    assert f"metrics at http://127.0.0.1:{port}/metrics" in result.stderr
    (text,) = sys.modules[name].SCRAPED
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def get(name: str, **labels: str) -> Any:
        return samples.get((name, tuple(sorted(labels.items()))))

    mine = {"queue": "probe:*", "agent_type": "probe"}
    assert get("tta_deliveries_reserved_total", **mine) == 1  # reported by the worker's sink
    assert get("tta_worker_handlers_running", agent="probe:*", agent_type="probe") == 1
    assert get("tta_queue_depth", state="ready", **mine) == 1  # the collector's first read
    assert get("tta_collector_up") == 1


def test_the_port_is_freed_and_unregistered_after_the_run(worker: Worker) -> None:
    # the global registry is used: a second run in one process must not clash with the first
    for _ in range(2):
        port = free_port()
        name = worker.module(SCRAPING_HANDLER.replace("{port}", str(port)))
        worker.enqueue()
        result = worker.run(f"{name}:handle", "--agent", "probe:p1", "--metrics-port", str(port))
        assert result.exit_code == 0, result.output
        with socket.socket() as again:  # nothing listens there any more
            again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
            again.bind(("0.0.0.0", port))  # noqa: S104  # where the worker bound
            again.listen()


def test_a_taken_port_is_one_line_and_exit_1(worker: Worker) -> None:
    name = worker.module("async def handle(delivery): ...\n")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104  # where the worker binds
        taken.listen()
        port = taken.getsockname()[1]
        result = worker.run(f"{name}:handle", "--agent", "probe:p1", "--metrics-port", str(port))
    assert result.exit_code == 1, result.output
    assert f"cannot serve /metrics on 0.0.0.0:{port}" in error_line(result)


def test_a_bad_port_is_a_usage_error(worker: Worker) -> None:
    result = worker.run("m:h", "--agent", "probe", "--metrics-port", "70000")
    assert result.exit_code == 2
    assert "--metrics-port" in result.stderr


def test_without_the_extra_it_says_what_to_install(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tta_agent_coordination_prometheus", None)  # not installed
    name = worker.module("async def handle(delivery): ...\n")
    result = worker.run(f"{name}:handle", "--agent", "probe:p1", "--metrics-port", "9464")
    assert result.exit_code == 2
    assert error_line(result) == (
        "tta-coord: error: --metrics-port needs the Prometheus extra: "
        "pip install 'tta-agent-coordination[prometheus]'"
    )


def test_the_core_does_not_import_the_contrib_without_the_option() -> None:
    code = (
        "import sys, tta_agent_coordination.cli, tta_agent_coordination.worker;"
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('prometheus_client', 'tta_agent_coordination_prom'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
