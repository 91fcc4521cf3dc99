"""A private redis-server on a free loopback port, pinned to one core (stopped by its pid).

The client process pins itself to another core, so Redis and the client never compete for
one (on a 2-core machine, sharing or splitting the cores changes the figures by up to 2x).
Every system measured runs under the same placement; ``Placement.describe()`` says what it
was, and says so plainly when ``taskset`` is missing or there are not two cores to split.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

import redis


@dataclass
class Placement:
    """Where Redis and the client run (CPU numbers), and any caveat."""

    server_cpus: list[int] | None
    client_cpus: list[int] | None
    notes: list[str] = field(default_factory=list[str])

    @property
    def taskset(self) -> list[str]:
        """The command prefix that runs a peer process on the client's cores (or nothing)."""
        if self.client_cpus is None or shutil.which("taskset") is None:
            return []
        return ["taskset", "-c", ",".join(map(str, self.client_cpus))]

    def describe(self) -> str:
        server = "unpinned" if self.server_cpus is None else f"CPU {self.server_cpus}"
        client = "unpinned" if self.client_cpus is None else f"CPU {self.client_cpus}"
        text = f"placement: redis-server on {server}, client (and peers) on {client}"
        return "; ".join([text, *self.notes])


def _cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def plan_placement(*, pin: bool = True) -> Placement:
    """Redis on the first available core, the client on the others (when possible)."""
    cpus = _cpus()
    if not pin:
        return Placement(None, None, ["pinning disabled (--no-pin)"])
    if shutil.which("taskset") is None:
        return Placement(None, None, ["taskset not found: Redis and the client share the cores"])
    if len(cpus) < 2:
        return Placement(None, None, [f"only {len(cpus)} core available: nothing to split"])
    return Placement([cpus[0]], cpus[1:])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A running private server."""

    port: int
    pid: int
    version: str

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def private_redis(placement: Placement, binary: str = "redis-server") -> Generator[RedisServer]:
    """Start redis-server on a free loopback port (no persistence), yield it, stop it by pid."""
    path = shutil.which(binary)
    if path is None:
        msg = f"{binary} not found: install Redis (the benchmark starts its own server)"
        raise RuntimeError(msg)
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tta-bench-redis-")
    command = [
        path,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        workdir,
        "--maxmemory-policy",
        "noeviction",
    ]
    if placement.server_cpus is not None:
        command = ["taskset", "-c", ",".join(map(str, placement.server_cpus)), *command]
    log = Path(workdir) / "redis.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603  # our own argv
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                info = client.info("server")
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    msg = f"redis-server did not start: {log.read_text(errors='replace')}"
                    raise RuntimeError(msg) from None
                time.sleep(0.02)
        client.close()
        yield RedisServer(port=port, pid=process.pid, version=str(info["redis_version"]))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def pin_client(placement: Placement) -> None:
    """Pin this process (and the peers it starts) to the client's cores."""
    if placement.client_cpus is not None:
        os.sched_setaffinity(0, placement.client_cpus)
