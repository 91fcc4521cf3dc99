"""What every measurement shares: the payload, the round-trip counter, INFO commandstats."""

from __future__ import annotations

import asyncio
import functools
import json
import resource
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

#: About 200 bytes of JSON, the same for every system measured.
TEXT = "lorem ipsum dolor sit amet " * 6


def payload(i: int) -> dict[str, Any]:
    """The message payload: ``{"i": i, "kind": "bench", "text": ...}``, ~200 bytes as JSON."""
    return {"i": i, "kind": "bench", "text": TEXT}


PAYLOAD_BYTES = len(json.dumps(payload(0)))


class RoundTrips:
    """Counts the round trips this process's asyncio Redis clients make.

    One write to a socket (``asyncio.StreamWriter.write`` or ``writelines``) is one round
    trip: a single command, a script call or a whole pipeline. redis-py writes each with
    ``writelines``; our driver's script calls write their packed bytes with ``write``. Counted
    on the client, as the issue asks.
    """

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        write, writelines = asyncio.StreamWriter.write, asyncio.StreamWriter.writelines

        @functools.wraps(write)
        def counted_write(self: asyncio.StreamWriter, data: Any) -> None:
            cls.count += 1
            write(self, data)

        @functools.wraps(writelines)
        def counted_writelines(self: asyncio.StreamWriter, data: Any) -> None:
            cls.count += 1
            writelines(self, data)

        asyncio.StreamWriter.write = counted_write  # type: ignore[method-assign]
        asyncio.StreamWriter.writelines = counted_writelines  # type: ignore[method-assign]
        cls._installed = True


async def command_calls(client: Redis) -> int:
    """All commands the server has run (``INFO commandstats``), scripts' inner ones included."""
    stats: dict[str, Any] = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


async def server_cpu(client: Redis) -> float:
    """Seconds of CPU the server has used (``INFO cpu``: user and system)."""
    info: dict[str, Any] = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def client_cpu() -> float:
    """Seconds of CPU this process has used (user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Counters:
    """Round trips, server commands and CPU over one timed section (from ``start()`` on).

    The CPU split says where a cycle's time goes: ``client_s`` (this process, user and
    system) and ``server_s`` (``INFO cpu``); the rest of the wall time is waiting.
    """

    client: Redis
    trips0: int = 0
    calls0: int = 0
    client0: float = 0.0
    server0: float = 0.0
    client_s: float = 0.0
    server_s: float = 0.0

    async def start(self) -> None:
        self.calls0 = await command_calls(self.client)
        self.server0 = await server_cpu(self.client)
        self.trips0 = RoundTrips.count
        self.client0 = client_cpu()

    async def stop(self) -> tuple[int, int]:
        """(round trips, server commands) since ``start``, minus the INFO calls; sets the CPU."""
        self.client_s = client_cpu() - self.client0
        trips = RoundTrips.count - self.trips0
        self.server_s = await server_cpu(self.client) - self.server0
        calls = await command_calls(self.client) - self.calls0
        return trips, calls - 3  # the INFO calls in between: two at start, one at stop

    async def cycle(
        self, n: int, start: float, enqueued: float, drained: float
    ) -> dict[str, float]:
        """Stop counting; a cycle's figures: enqueue and reserve + ack rates (``start`` to
        ``enqueued`` to ``drained``), round trips and commands per message, CPU per message."""
        trips, calls = await self.stop()
        return {
            "enqueue": n / (enqueued - start),
            "reserve_ack": n / (drained - enqueued),
            "round_trips": trips / n,
            "commands": calls / n,
            **self.cpu(n),
        }

    def cpu(self, n: int) -> dict[str, float]:
        """Client and server CPU per message, in microseconds."""
        return {"client_cpu_us": self.client_s / n * 1e6, "server_cpu_us": self.server_s / n * 1e6}


async def timed(fn: Callable[[], Awaitable[object]]) -> float:
    """Seconds ``fn()`` takes."""
    start = time.perf_counter()
    await fn()
    return time.perf_counter() - start


@dataclass
class Summary:
    median: float
    low: float
    high: float
    values: list[float]


def summarise(values: Iterable[float]) -> Summary:
    items = list(values)
    return Summary(statistics.median(items), min(items), max(items), items)


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))
    return ordered[index]
