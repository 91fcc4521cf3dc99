"""The ``tta-coord`` command line against a real Redis, in a namespace of its own per test."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest
from typer.testing import CliRunner, Result

from redis_helpers import REDIS_URL
from tta_agent_coordination import AgentId, AgentMessage, Capability, CircuitBreakerConfig
from tta_agent_coordination.cli import app
from tta_agent_coordination.plugins import connect
from tta_agent_coordination.protocols import Backend

T = TypeVar("T")

WORKER = AgentId("worker", "w1")


class RedisEnv:
    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = CliRunner()

    def run(self, *args: str, stdin: str | None = None) -> Result:
        return self.runner.invoke(app, ["--url", self.url, *args], input=stdin)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def do(self, action: Callable[[Backend], Awaitable[T]]) -> T:
        async def go() -> T:
            async with connect(self.url) as backend:
                return await action(backend)

        return anyio.run(go)


@pytest.fixture
def env() -> Iterator[RedisEnv]:
    separator = "&" if "?" in REDIS_URL else "?"
    url = f"{REDIS_URL}{separator}namespace=cli-{uuid.uuid4().hex[:12]}"
    env = RedisEnv(url)
    yield env
    env.do(lambda backend: backend.drop_namespace())


async def seed(backend: Backend) -> str:
    for n in range(2):
        await backend.queue.enqueue(
            AgentMessage(sender=AgentId("test"), recipient=WORKER, payload={"n": n})
        )
    (delivery,) = await backend.queue.reserve(WORKER, visibility_timeout=30)
    await backend.queue.dead_letter(delivery.receipt, reason="handler_error", error="boom")
    await backend.registry.register(WORKER, capabilities=[Capability("summarise", "1.2")], ttl=60)
    await backend.breakers.record_failure("payments", CircuitBreakerConfig(failure_threshold=1))
    return delivery.entry_id


def test_reads(env: RedisEnv) -> None:
    entry = env.do(seed)
    assert env.json("queues") == [
        {"queue": "worker:w1", "ready": 1, "delayed": 0, "reserved": 0, "dead": 1}
    ]
    assert env.json("stats", "worker:w1")["dead"] == 1
    page = env.json("dlq", "list", "worker:w1")
    assert [(d["entry_id"], d["error"]) for d in page["items"]] == [(entry, "boom")]
    assert env.json("dlq", "show", "worker:w1", entry)["message"]["payload"] == {"n": 0}
    assert [a["agent_id"] for a in env.json("agents", "--capability", "summarise")] == ["worker:w1"]
    assert env.json("breakers")[0]["state"] == "open"
    result = env.run("queues")
    assert result.exit_code == 0
    assert "worker:w1" in result.stdout
    assert "memory://" not in result.stderr


def test_writes(env: RedisEnv) -> None:
    entry = env.do(seed)
    assert env.run("dlq", "replay", "worker:w1", "--id", entry, "--dry-run").exit_code == 0
    assert env.run("dlq", "replay", "worker:w1", "--all", stdin="n\n").exit_code == 1
    assert env.json("stats", "worker:w1")["dead"] == 1
    assert env.run("dlq", "replay", "worker:w1", "--id", entry, "--yes").exit_code == 0
    assert env.json("stats", "worker:w1")["ready"] == 2

    assert env.run("breakers", "reset", "payments", "--yes").exit_code == 0
    assert env.json("breakers")[0]["state"] == "closed"

    sent = env.run("send", "worker", '{"x": 1}', "--delay", "60", "--yes")
    assert sent.exit_code == 0
    assert env.json("stats", "worker")["delayed"] == 1

    env.do(lambda b: b.queue.enqueue(AgentMessage(sender=AgentId("t"), recipient=WORKER)))

    async def kill(backend: Backend) -> None:
        for delivery in await backend.queue.reserve(WORKER, visibility_timeout=30, max_messages=9):
            await backend.queue.dead_letter(delivery.receipt, reason="handler_error")

    env.do(kill)
    assert env.run("dlq", "purge", "worker:w1", "--yes").stdout.strip() == (
        "purged 3 dead letter(s) of worker:w1"
    )


def test_bad_input(env: RedisEnv) -> None:
    unknown = env.run("stats", "nobody")
    assert unknown.exit_code == 1
    assert unknown.stderr.strip() == "tta-coord: error: no queue 'nobody' (see: tta-coord queues)"
    malformed = env.run("send", "worker", "{nope", "--yes")
    assert malformed.exit_code == 2
    assert len(malformed.stderr.strip().splitlines()) == 1
    env.do(seed)
    cursor = env.run("dlq", "list", "worker:w1", "--cursor", "not-a-cursor")
    assert cursor.exit_code == 2, cursor.output
    assert len(cursor.stderr.strip().splitlines()) == 1
