"""Shared helpers of the Redis driver's tests (imported by basename, like the core's)."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import redis

from tta_agent_coordination import connect
from tta_agent_coordination_redis import RedisBackend

#: The shared server the tests use; never reconfigured by them.
REDIS_URL = os.environ.get("TTA_REDIS_URL", "redis://127.0.0.1:6379/0")


@asynccontextmanager
async def fresh(url: str | None = None, **options: Any) -> AsyncGenerator[RedisBackend]:
    """A Redis backend in a namespace of its own (on ``REDIS_URL`` unless given), dropped after."""
    namespace = f"t{uuid.uuid4().hex[:16]}"
    # REDIS_URL is read now, not at import: conftest may point it at a throw-away server.
    async with connect(url or REDIS_URL, namespace=namespace, **options) as backend:
        assert isinstance(backend, RedisBackend)
        try:
            yield backend
        finally:
            await backend.drop_namespace()


def reachable(url: str) -> str | None:
    """``None`` if a TCP connection to the URL's host opens, else why not."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"no redis-server at {host}:{port} ({exc}); start one or set TTA_REDIS_URL"


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, bus: bool = False) -> int:
    """A TCP port on the loopback interface that nothing listens on right now.

    With ``bus``, the port 10000 above it (a cluster node's bus port) is free too.
    """
    if not bus:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 50000)  # a port, not a secret
        if _free(port) and _free(port + 10000):
            return port
    msg = "no free port pair for a cluster node"
    raise RuntimeError(msg)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Call ``check`` until it is true; raise ``RuntimeError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            msg = f"timed out waiting for {what}"
            raise RuntimeError(msg)
        time.sleep(0.05)


class Servers:
    """redis-server processes started by the tests, each stopped by its pid."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ports: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, *extra: str, bus: bool = False, port: int | None = None) -> int:
        """Start one server on a free loopback port (or ``port``); return it once it answers."""
        port = free_port(bus=bus) if port is None else port
        home = self.workdir / f"{port}-{len(self.procs)}"
        home.mkdir(parents=True)
        args = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(home), *extra]
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )  # our own binary
        self.procs.append(proc)
        self.ports[port] = proc

        def answers() -> bool:
            if proc.poll() is not None:
                msg = f"redis-server on port {port} exited with {proc.returncode}"
                raise RuntimeError(msg)
            try:
                with redis.Redis(port=port, socket_connect_timeout=0.2) as client:
                    return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, f"redis-server on port {port}")
        return port

    def start_tls(self, *tls_args: str, ca_file: Path) -> int:
        """Start a server that speaks only TLS (``tls_args`` name its files); return its port."""
        port = free_port()
        home = self.workdir / f"tls-{port}"
        home.mkdir(parents=True)
        args = [self.binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(home), *tls_args]
        # our own binary, fixed arguments
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.ports[port] = proc

        def listens() -> bool:
            if proc.poll() is not None:
                msg = f"the TLS redis-server on port {port} exited with {proc.returncode}"
                raise RuntimeError(msg)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return True
            except OSError:
                return False

        wait_until(listens, f"the TLS redis-server on port {port}")
        return port

    def start_cluster(self, nodes: int = 3) -> list[int]:
        """Start a Redis Cluster of ``nodes`` masters (no replicas); return their ports."""
        ports = [self.start("--cluster-enabled", "yes", bus=True) for _ in range(nodes)]
        per = 16384 // nodes
        for index, port in enumerate(ports):
            low = index * per
            high = 16383 if index == nodes - 1 else low + per - 1
            with redis.Redis(port=port) as client:
                client.execute_command("CLUSTER ADDSLOTSRANGE", low, high)
        with redis.Redis(port=ports[0]) as first:
            for port in ports[1:]:
                first.execute_command("CLUSTER MEET", "127.0.0.1", port)

        def ready() -> bool:
            for port in ports:
                with redis.Redis(port=port) as client:
                    info = cast("dict[str, object]", client.cluster("INFO"))
                    if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(
                        nodes
                    ):
                        return False
            return True

        wait_until(ready, "the cluster to form")
        return ports

    def stop_one(self, port: int) -> None:
        """Stop the server on ``port`` (by its pid) and wait until it has exited."""
        proc = self.ports.pop(port)
        proc.terminate()
        proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop every server started here, by pid."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.ports.clear()


def command_calls(server: str | redis.Redis) -> dict[str, int]:
    """The server's calls per command so far (``INFO commandstats``, scripts' inner calls too),
    from a URL or a client."""
    if isinstance(server, str):
        with redis.Redis.from_url(server) as client:
            return command_calls(client)
    stats = cast("dict[str, dict[str, Any]]", server.info("commandstats"))
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def pop_scripts(calls: dict[str, int]) -> int:
    """Take the script calls out of ``INFO commandstats`` counts: ``EVALSHA`` and ``FCALL``
    (the queue scripts run as library functions on a server that has them)."""
    return calls.pop("evalsha", 0) + calls.pop("fcall", 0)
