"""``tta-coord worker`` as a real subprocess against a real Redis: signals and kill -9.

The handler module is written to ``tmp_path`` (the worker's working directory, which it imports
from); each handler run leaves a ``started-N`` file (holding its attempt) and, when it returns,
a ``done-N`` file. The test follows the subprocess through those files and through Redis
(queue stats, the registry), never through sleeps of a guessed length.
"""

from __future__ import annotations

import signal
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from redis_helpers import REDIS_URL
from tta_agent_coordination import AgentId, AgentMessage, Delivery
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.protocols import Backend
from tta_agent_coordination.registry import AgentRegistry

pytestmark = pytest.mark.anyio

AGENT = AgentId("svc", "w1")
SHARED = AgentId("svc")

HANDLER = """
import pathlib

import anyio

OUT = pathlib.Path({out!r})

async def handle(delivery):
    n = delivery.message.payload["n"]
    (OUT / f"started-{{n}}").write_text(str(delivery.attempt))
    await anyio.sleep(delivery.message.payload["seconds"])
    (OUT / f"done-{{n}}").write_text("")
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Run:
    """One worker subprocess, its files and a backend connected to its namespace."""

    def __init__(self, url: str, backend: Backend, tmp_path: Path) -> None:
        self.url = url
        self.backend = backend
        self.cwd = tmp_path
        self.out = tmp_path / "out"
        self.out.mkdir()
        self.module = f"worker_handlers_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{self.module}.py").write_text(
            textwrap.dedent(HANDLER.format(out=str(self.out)))
        )
        self.stderr = tmp_path / "stderr.txt"
        self.process: Process | None = None

    async def send(self, count: int, seconds: float, to: AgentId = AGENT, first: int = 0) -> None:
        for n in range(first, first + count):
            message = AgentMessage(
                sender=AgentId("test"), recipient=to, payload={"n": n, "seconds": seconds}
            )
            await self.backend.queue.enqueue(message)

    async def start(self, *options: str) -> Process:
        command = [
            sys.executable,
            "-c",
            "from tta_agent_coordination.cli import main; main()",
            "--url",
            self.url,
            "worker",
            f"{self.module}:handle",
            "--agent",
            str(AGENT),
            *options,
        ]
        with self.stderr.open("wb") as err:
            self.process = await anyio.open_process(
                command, cwd=self.cwd, stdin=None, stdout=err, stderr=err
            )
        return self.process

    def files(self, kind: str) -> set[int]:
        return {int(p.name.split("-")[1]) for p in self.out.glob(f"{kind}-*")}

    def log(self) -> str:
        return self.stderr.read_text()

    async def exit_code(self, timeout: float) -> int:  # noqa: ASYNC109  # a bound on the child
        assert self.process is not None
        with anyio.fail_after(timeout):
            return await self.process.wait()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:  # noqa: ASYNC109
    """Re-check another process's observable state until ``check()`` holds."""
    deadline = anyio.current_time() + timeout
    while not await check():
        if anyio.current_time() > deadline:
            msg = f"timed out waiting for {what}"
            raise TimeoutError(msg)
        await anyio.sleep(0.02)


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    separator = "&" if "?" in REDIS_URL else "?"
    url = f"{REDIS_URL}{separator}namespace=worker-{uuid.uuid4().hex[:12]}"
    async with connect(url) as backend:
        started = Run(url, backend, tmp_path)
        try:
            yield started
        finally:
            await started.kill()
            await backend.drop_namespace()


async def reserved_again(backend: Backend, count: int, timeout: float = 8) -> list[Delivery]:  # noqa: ASYNC109
    """Reserve until ``count`` deliveries came back (each reserve blocks until one is due)."""
    got: list[Delivery] = []
    with anyio.fail_after(timeout):
        while len(got) < count:
            got += await backend.queue.reserve(
                AGENT, visibility_timeout=30, max_messages=count, wait=1
            )
    return got


async def test_sigterm_lets_running_handlers_finish_and_loses_nothing(run: Run) -> None:
    await run.send(2, seconds=1.0, to=AGENT)
    await run.send(6, seconds=1.0, to=SHARED, first=2)
    await run.start("--concurrency", "3", "--grace", "10")

    async def three_running() -> bool:
        return len(run.files("started")) >= 3

    await until(three_running, "three handlers running")
    begun = time.monotonic()
    assert run.process is not None
    run.process.send_signal(signal.SIGTERM)
    assert await run.exit_code(timeout=10) == 0, run.log()
    started, done = run.files("started"), run.files("done")
    assert started == done  # every handler that began was let finish
    assert time.monotonic() - begun < 10  # it did not wait for the grace period
    own, shared = await run.backend.queue.stats(AGENT), await run.backend.queue.stats(SHARED)
    assert (own.reserved, shared.reserved) == (0, 0)  # nothing left reserved
    assert (own.dead, shared.dead) == (0, 0)
    assert own.ready + shared.ready == 8 - len(done)  # nothing lost
    assert await AgentRegistry(run.backend).get(AGENT) is None  # deregistered
    log = run.log()
    assert "ready: serving svc:w1 and svc with concurrency 3" in log
    assert "stopping on SIGTERM" in log
    assert f"stopped (stopped): {len(done)} handled, {len(done)} succeeded" in log


async def test_sigterm_past_the_grace_period_releases_the_message(run: Run) -> None:
    await run.send(1, seconds=60)
    await run.start("--grace", "0.5")

    async def running() -> bool:
        return bool(run.files("started"))

    await until(running, "the handler running")
    assert run.process is not None
    run.process.send_signal(signal.SIGTERM)
    assert await run.exit_code(timeout=8) == 0, run.log()
    stats = await run.backend.queue.stats(AGENT)
    assert (stats.ready, stats.reserved) == (1, 0)  # handed back at once
    (again,) = await run.backend.queue.reserve(AGENT, visibility_timeout=30)
    assert again.attempt == 1  # a release counts no attempt
    assert "1 cancelled" in run.log()


async def test_a_second_sigint_stops_at_once_and_the_messages_come_back(run: Run) -> None:
    await run.send(2, seconds=60)
    await run.start("--concurrency", "2", "--grace", "60", "--visibility-timeout", "2")
    registry = AgentRegistry(run.backend)

    async def both_running() -> bool:
        return len(run.files("started")) == 2

    await until(both_running, "two handlers running")
    assert run.process is not None
    run.process.send_signal(signal.SIGINT)

    async def stopping() -> bool:  # the worker marks itself unavailable when it starts stopping
        info = await registry.get(AGENT)
        return info is not None and not info.available

    await until(stopping, "the first SIGINT handled")
    begun = time.monotonic()
    run.process.send_signal(signal.SIGINT)
    assert await run.exit_code(timeout=8) == 130, run.log()
    assert time.monotonic() - begun < 5  # not the 60 s grace period
    assert run.files("done") == set()
    stats = await run.backend.queue.stats(AGENT)
    assert (stats.ready, stats.reserved) == (0, 2)  # held, not released
    assert "stopping at once on a second SIGINT" in run.log()
    again = await reserved_again(run.backend, 2)  # due when their visibility ends
    payloads: list[Any] = [d.message.payload for d in again]
    assert sorted(p["n"] for p in payloads) == [0, 1]
    assert [d.attempt for d in again] == [2, 2]


async def test_kill_9_loses_nothing_and_counts_the_attempt(run: Run) -> None:
    await run.send(1, seconds=60)
    await run.start("--visibility-timeout", "2")

    async def running() -> bool:
        return bool(run.files("started"))

    await until(running, "the handler running")
    await run.kill()
    assert run.process is not None
    assert run.process.returncode == -signal.SIGKILL
    assert (await run.backend.queue.stats(AGENT)).reserved == 1
    (again,) = await reserved_again(run.backend, 1)
    payload: Any = again.message.payload
    assert payload["n"] == 0
    assert again.attempt == 2  # the expired reservation counted
    assert (run.out / "started-0").read_text() == "1"
