"""``tta-coord migrate-original`` (added by the Redis driver's plugin) against a real Redis."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import anyio
import pytest
import redis
from typer.testing import CliRunner, Result

from redis_helpers import REDIS_URL
from test_migrate import WB, original
from tta_agent_coordination import AgentId, connect
from tta_agent_coordination.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_UNREACHABLE, app


@pytest.fixture
def source() -> Iterator[str]:
    """The original's data under a fresh prefix: ready, delayed, reserved, two dead letters."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"ao{uuid.uuid4().hex[:10]}"
    now_us = time.time() * 1e6
    dup = original("dup")
    client.rpush(f"{prefix}:queue:{WB}:default", dup, dup, original("late"))
    client.zadd(f"{prefix}:sched:{WB}:default:prio:5", {dup: now_us - 5e6})
    client.zadd(f"{prefix}:sched:{WB}:default:prio:9", {original("late", prio=9): now_us + 3600e6})
    held = original("held", inst="w2", delivery_attempts=2, last_error=None)
    client.hset(f"{prefix}:reserved:{WB}:w2", "res_0123456789abcdef", held)
    client.rpush(
        f"{prefix}:dlq:{WB}:default",
        original("dead", delivery_attempts=3, last_error="boom"),
        "not json {",
    )
    client.set(f"{prefix}:cb:state:llm", json.dumps({"state": "open", "failure_count": 5}))
    try:
        yield prefix
    finally:
        keys: list[bytes] = list(cast("Iterator[bytes]", client.scan_iter(match=f"{prefix}:*")))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
def target() -> Iterator[str]:
    url = f"{REDIS_URL}?namespace=mc{uuid.uuid4().hex[:12]}"
    yield url

    async def drop() -> None:
        async with connect(url) as backend:
            await backend.drop_namespace()

    anyio.run(drop)


def migrate(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["migrate-original", *args], input=stdin)


def report(result: Result) -> dict[str, Any]:
    assert result.exit_code == 0, result.output
    value: dict[str, Any] = json.loads(result.stdout)
    return value


def test_listed_in_help() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert "migrate-original" in result.stdout


def test_moves_everything_once_and_prints_it_per_queue(source: str, target: str) -> None:
    base = ["--source", REDIS_URL, "--prefix", source, "--target", target]
    dry = report(migrate(*base, "--dry-run", "--json"))
    assert dry["dry_run"] is True
    assert dry["total_moved"] == 5  # identical JSON is one member of the sorted set

    async def empty() -> int:
        async with connect(target) as backend:
            return len(await backend.queue.queues())

    assert anyio.run(empty) == 0  # the dry run wrote nothing

    first = migrate(*base, "--yes")
    assert first.exit_code == 0, first.output
    assert f"{WB}:w2" in first.stdout
    assert "moved 5 entries in 2 queues" in first.stdout
    assert "breaker llm: opened" in first.stdout

    again = report(migrate(*base, "--yes", "--json"))
    assert again["total_moved"] == 0
    by_queue = {q["queue"]: q for q in again["queues"]}
    assert by_queue[WB]["present"]["dead"] == 2

    async def counts() -> tuple[int, int, int, int, int]:
        async with connect(target) as backend:
            shared = await backend.queue.stats(AgentId(WB))
            held = await backend.queue.stats(AgentId(WB, "w2"))
            return shared.ready, shared.delayed, shared.dead, held.ready, shared.reserved

    assert anyio.run(counts) == (1, 1, 2, 1, 0)


def test_declined_writes_nothing(source: str, target: str) -> None:
    result = migrate("--source", REDIS_URL, "--prefix", source, "--target", target, stdin="n\n")
    assert result.exit_code == EXIT_FAILED
    assert "nothing changed" in result.stderr


def test_bad_input_is_one_line(source: str, target: str) -> None:
    bad_prefix = migrate("--source", REDIS_URL, "--prefix", "a*", "--target", target, "--yes")
    assert bad_prefix.exit_code == EXIT_BAD_INPUT
    assert bad_prefix.stderr.count("\n") == 1
    bad_target = migrate("--source", REDIS_URL, "--prefix", source, "--target", "nope", "--yes")
    assert bad_target.exit_code == EXIT_BAD_INPUT
    assert "scheme://" in bad_target.stderr
    assert "Traceback" not in bad_target.output


def test_unreachable_source_is_exit_3(target: str) -> None:
    result = migrate("--source", "redis://127.0.0.1:1/0", "--target", target, "--yes")
    assert result.exit_code == EXIT_UNREACHABLE
    assert result.stderr.startswith("tta-coord: error: ")
    assert result.stderr.count("\n") == 1


def test_the_command_line_starts_without_importing_redis() -> None:
    """The plugin names its command lazily: redis loads only when a Redis command runs."""
    code = (
        "import sys, tta_agent_coordination.cli as cli, tta_agent_coordination_redis as r\n"
        "assert 'migrate-original' in [c.name for c in cli.app.registered_commands]\n"
        "assert 'redis' not in sys.modules, 'redis was imported'\n"
        "assert 'RedisBackend' in dir(r)\n"
        "try:\n    r.Nope\nexcept AttributeError as e:\n    print(e)\n"
        "print(r.RedisBackend.__name__, 'redis' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "module 'tta_agent_coordination_redis' has no attribute 'Nope'",
        "RedisBackend True",
    ]


def test_unreachable_target_is_exit_3(source: str) -> None:
    result = migrate(
        "--source", REDIS_URL, "--prefix", source, "--target", "redis://127.0.0.1:1/0", "--yes"
    )
    assert result.exit_code == EXIT_UNREACHABLE, result.output
    assert result.stderr.startswith("tta-coord: error: the target: ")


def test_into_a_memory_target(source: str) -> None:
    """Any backend is a target: a named memory store lives while a backend holds it open."""
    target = f"memory://migrated-{uuid.uuid4().hex[:8]}"
    keeper = connect(target)  # holds the named store between the command's connections
    try:
        moved = report(
            migrate("--source", REDIS_URL, "--prefix", source, "--target", target, "-y", "--json")
        )
        assert moved["total_moved"] == 5

        async def dead() -> int:
            async with connect(target) as backend:
                return (await backend.queue.stats(AgentId(WB))).dead

        assert anyio.run(dead) == 2
    finally:
        anyio.run(keeper.aclose)
