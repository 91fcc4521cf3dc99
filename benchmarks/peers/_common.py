"""Shared by the peer runners (each runs in its peer's own virtualenv, as a subprocess).

A runner calls :func:`main` with one function that does a whole repetition: enqueue ``n``
messages one call at a time, then drain them with the peer's own worker, and returns the
figures it timed. :func:`main` warms up once, then for each repetition flushes the server,
reads ``INFO commandstats`` around the run (commands per message, scripts' inner commands
included) and prints everything as one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Any

import redis

#: The same payload as the main benchmark (about 200 bytes of JSON).
TEXT = "lorem ipsum dolor sit amet " * 6


def payload(i: int) -> dict[str, Any]:
    return {"i": i, "kind": "bench", "text": TEXT}


class Done:
    """Counts handled messages; ``event`` is set once ``target`` have been handled."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.hook: Callable[[], None] | None = None

    def hit(self) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.target:
                self.event.set()
                if self.hook is not None:
                    self.hook()


def _calls(client: redis.Redis) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith("cmdstat_"))


def main(
    run: Callable[[str, int], dict[str, float]], packages: list[str], *, commands: bool = True
) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    client = redis.Redis.from_url(args.url)
    client.flushall()
    run(args.url, min(args.n, 1000))  # warm-up
    runs: list[dict[str, float]] = []
    for _ in range(args.reps):
        client.flushall()
        before = _calls(client)
        figures = run(args.url, args.n)
        if commands:
            figures["commands"] = (_calls(client) - before - 1) / args.n
        runs.append(figures)
    versions = {name: metadata.version(name) for name in packages}
    json.dump({"runs": runs, "versions": versions}, sys.stdout)
    sys.stdout.write("\n")
