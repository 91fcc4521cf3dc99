"""The one command: ``python -m benchmarks [-n N] [--reps R] [--quick] [--peers] [--out DIR]``.

Starts a private redis-server on a free loopback port pinned to one core, pins itself (and
the peers) to the other, then warms every measurement up once and runs them all in ``--reps``
rounds (each run after ``FLUSHALL``; rounds put the floors and ours under the same load).
Prints the placement, a table of medians with the min-max spread, the targets of issue 9
with their ratio and PASS or MISS, and writes ``results.json`` (every raw figure),
``results.md`` (the table) and ``results.png`` (the chart, when matplotlib is installed:
``pip install -r benchmarks/requirements.txt``). ``--publish`` puts the JSON and the chart
in ``docs/performance/`` and the table, with the command, the machine and the placement,
into ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.asyncio import Redis
from redis.utils import HIREDIS_AVAILABLE

from . import _peers, floors, hotpaths, ours
from ._measure import PAYLOAD_BYTES, RoundTrips, Summary, summarise
from ._report import chart, markdown_table, print_table, publish, targets
from ._server import RedisServer, pin_client, plan_placement, private_redis

Fn = Callable[[Redis, str, int], Awaitable[dict[str, float]]]
HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"


@dataclass
class Spec:
    """One measurement: its name, what it runs, and its size."""

    name: str
    fn: Fn
    n: int
    warmup: int


@dataclass
class Sizes:
    n: int
    reps: int
    latency: int
    breaker: int
    discover: int
    agents_small: int
    agents_large: int
    memory: int
    memory_driver: int


def sizes(args: argparse.Namespace) -> Sizes:
    if args.quick:
        return Sizes(
            n=args.n or 200,
            reps=args.reps or 2,
            latency=50,
            breaker=500,
            discover=50,
            agents_small=100,
            agents_large=300,
            memory=1000,
            memory_driver=500,
        )
    return Sizes(
        n=args.n or 10_000,
        reps=args.reps or 3,
        latency=1000,
        breaker=10_000,
        discover=1000,
        agents_small=100,
        agents_large=10_000,
        memory=100_000,
        memory_driver=20_000,
    )


def specs(size: Sizes) -> list[Spec]:
    n = size.n
    warm = min(n, 1000)

    async def registry(admin: Redis, url: str, count: int) -> dict[str, float]:
        return await hotpaths.registry(
            admin, url, count, small=size.agents_small, large=size.agents_large
        )

    return [
        Spec("floor.seq", lambda a, u, k: floors.seq(a, k), n, warm),
        Spec("floor.pipe", lambda a, u, k: floors.pipe(a, k), n, warm),
        Spec("floor.lua", lambda a, u, k: floors.lua(a, k), n, warm),
        Spec("ours.single", ours.single, n, warm),
        Spec("ours.batch", ours.batch, n, warm),
        Spec("ours.serve", ours.serve, n, warm),
        Spec("latency.floor", hotpaths.latency_floor, size.latency, min(size.latency, 100)),
        Spec("latency.ours", hotpaths.latency_ours, size.latency, min(size.latency, 100)),
        Spec("breaker", hotpaths.breaker, size.breaker, min(size.breaker, 1000)),
        Spec("registry", registry, size.discover, 10),
        Spec("memory", hotpaths.memory, size.memory, 100),
        Spec("memory_driver", hotpaths.memory_driver, size.memory_driver, 500),
        # Last in each round, the references: run between floor.lua and ours.single,
        # floor.lua_batch slowed ours.single's enqueue by a tenth (old and new code alike,
        # alternating runs), and a reference should not move a target.
        Spec("ours.bare", ours.bare, n, warm),
        Spec("floor.lua_batch", lambda a, u, k: floors.lua_batch(a, k), n, warm),
    ]


def machine(server: RedisServer, placement_text: str) -> dict[str, Any]:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.platform(),
        "python": platform.python_version(),
        "redis_py": redis.__version__,
        "hiredis": HIREDIS_AVAILABLE,
        "redis_server": server.version,
        "placement": placement_text,
        "load_average_start": os.getloadavg(),
    }


def _collect(runs: list[dict[str, float]]) -> dict[str, Summary]:
    return {key: summarise(run[key] for run in runs) for key in runs[0]}


async def measure_all(
    server: RedisServer, size: Sizes, only: set[str] | None, log: Callable[[str], None]
) -> dict[str, dict[str, Summary]]:
    """Warm every measurement up once, then run them all in rounds, ``reps`` rounds.

    Rounds, not one measurement's repetitions back to back: on a shared machine the load moves
    during a run, and interleaving puts the floor's and our repetitions under the same load, so
    the ratios of medians compare like with like.
    """
    RoundTrips.install()
    admin = Redis.from_url(server.url)
    chosen = [
        spec
        for spec in specs(size)
        if not only or any(spec.name.startswith(prefix) for prefix in only)
    ]
    runs: dict[str, list[dict[str, float]]] = {spec.name: [] for spec in chosen}
    try:
        log("  warm-up")
        for spec in chosen:
            await admin.flushall()
            await spec.fn(admin, server.url, spec.warmup)  # connections, scripts, caches
        for round_ in range(1, size.reps + 1):
            for spec in chosen:
                log(f"  round {round_}/{size.reps}: {spec.name} (n={spec.n})")
                started = time.perf_counter()
                await admin.flushall()
                runs[spec.name].append(await spec.fn(admin, server.url, spec.n))
                log(f"    {time.perf_counter() - started:.1f} s")
    finally:
        await admin.aclose()
    return {name: _collect(figures) for name, figures in runs.items()}


def _command(given: list[str]) -> str:
    """The command as the user typed it (``nox -s bench -- ...`` when nox ran it)."""
    session = os.environ.get("NOX_CURRENT_SESSION")
    if session:
        return " ".join(["nox -s", session, *(["--", *given] if given else [])])
    return " ".join(["python -m benchmarks", *given])


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("-n", type=int, default=None, help="messages per run (default 10000)")
    parser.add_argument("--reps", type=int, default=None, help="timed runs per measurement (3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    parser.add_argument("--peers", action="store_true", help="also run the peer queues")
    parser.add_argument("--peer", action="append", default=[], help="only this peer (repeat)")
    parser.add_argument("--only", action="append", default=[], help="only measurements starting so")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    parser.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    parser.add_argument("--no-pin", action="store_true", help="do not pin Redis and the client")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write the JSON and chart to docs/performance/ and the table into docs/performance.md",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    size = sizes(args)
    placement = plan_placement(pin=not args.no_pin)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    with private_redis(placement) as server:
        pin_client(placement)
        meta = machine(server, placement.describe())
        given = argv if argv is not None else sys.argv[1:]
        meta.update(
            {
                "command": _command(given),
                "n": size.n,
                "reps": size.reps,
                "payload_bytes": PAYLOAD_BYTES,
                "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            }
        )
        print(placement.describe(), flush=True)
        log(f"redis-server {server.version} on 127.0.0.1:{server.port} (pid {server.pid})")
        only = set(args.only) or None
        results = asyncio.run(measure_all(server, size, only, log))
        if args.peers or args.peer:
            peer_results, meta["peers"] = _peers.run_all(
                server=server,
                placement=placement,
                n=size.n,
                reps=size.reps,
                only=set(args.peer),
                log=log,
            )
            results.update(peer_results)
        meta["load_average_end"] = os.getloadavg()
    rows = targets(results)
    print_table(meta, results, rows)
    if args.publish:
        args.out = DOCS / "performance"
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {
        "meta": meta,
        "results": {
            name: {key: vars(summary) for key, summary in metrics.items()}
            for name, metrics in results.items()
        },
        "targets": [vars(row) for row in rows],
    }
    (args.out / "results.json").write_text(json.dumps(raw, indent=2) + "\n")
    table = markdown_table(meta, results, rows)
    if args.publish:
        publish(DOCS / "performance.md", table, meta, args.out)
        print(f"published: {DOCS / 'performance.md'}, {args.out / 'results.json'}")
    else:
        (args.out / "results.md").write_text(table)
        print(f"raw figures: {args.out / 'results.json'}; table: {args.out / 'results.md'}")
    if not args.no_chart:
        print(chart(results, meta, args.out / "results.png"))
    return 0
