"""The ``tta-coord`` command line, through typer's runner, against a named memory store.

Every invocation connects anew, so the tests keep one backend connected to the same
``memory://NAME`` for the whole test: the store outlives each invocation.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import pytest
from typer.testing import CliRunner, Result

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    Capability,
    CircuitBreakerConfig,
    DeadLetter,
    connect,
)
from tta_agent_coordination.cli import app, main
from tta_agent_coordination.protocols import Backend

T = TypeVar("T")

WORKER = AgentId("worker", "w1")


class Env:
    def __init__(self, url: str, backend: Backend) -> None:
        self.url = url
        self.backend = backend
        self.runner = CliRunner()

    def run(self, *args: str, stdin: str | None = None, **env: str) -> Result:
        return self.runner.invoke(app, ["--url", self.url, *args], input=stdin, env=env or None)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    def do(self, action: Callable[[Backend], Awaitable[T]]) -> T:
        async def go() -> T:
            return await action(self.backend)

        return anyio.run(go)


@pytest.fixture
def env() -> Iterator[Env]:
    url = f"memory://cli-{uuid.uuid4().hex[:12]}?namespace=cli"
    backend = connect(url)
    yield Env(url, backend)
    anyio.run(backend.aclose)


def message(payload: dict[str, Any] | None = None) -> AgentMessage:
    return AgentMessage(sender=AgentId("test"), recipient=WORKER, payload=payload or {"n": 1})


async def dead(backend: Backend, count: int = 1) -> list[str]:
    """Put ``count`` dead letters into WORKER's queue; return their entry ids."""
    ids: list[str] = []
    for n in range(count):
        await backend.queue.enqueue(message({"n": n}))
        (delivery,) = await backend.queue.reserve(WORKER, visibility_timeout=30)
        await backend.queue.dead_letter(delivery.receipt, reason="handler_error", error="boom")
        ids.append(delivery.entry_id)
    return ids


async def open_breaker(backend: Backend) -> None:
    config = CircuitBreakerConfig(failure_threshold=1)
    await backend.breakers.record_failure("payments", config)


# -- reads --------------------------------------------------------------------------------------


def test_queues_lists_every_queue_with_counts(env: Env) -> None:
    assert env.run("queues").stdout.strip() == "no queues"

    async def seed(backend: Backend) -> None:
        await backend.queue.enqueue(message())
        await backend.queue.enqueue(message(), delay=60)
        await dead(backend)

    env.do(seed)
    (row,) = env.json("queues")
    assert row == {"queue": "worker:w1", "ready": 1, "delayed": 1, "reserved": 0, "dead": 1}
    result = env.run("queues")
    assert result.exit_code == 0
    assert "worker:w1" in result.stdout
    assert "memory:// keeps nothing" in result.stderr


def test_queues_pages_through_the_index(env: Env) -> None:
    async def seed(backend: Backend) -> None:
        for n in range(105):
            await backend.queue.enqueue(
                AgentMessage(sender=AgentId("t"), recipient=AgentId("q", f"i{n:03}"))
            )

    env.do(seed)
    assert len(env.json("queues")) == 105


def test_stats_of_one_queue(env: Env) -> None:
    env.do(lambda b: b.queue.enqueue(message()))
    assert env.json("stats", "worker:w1")["ready"] == 1
    result = env.run("stats", "worker:w1")
    assert result.exit_code == 0
    assert "worker:w1" in result.stdout


def test_an_unknown_queue_is_not_found(env: Env) -> None:
    result = env.run("stats", "nobody")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "tta-coord: error: no queue 'nobody' (see: tta-coord queues)"
    )


def test_dlq_list_pages_and_prints_the_error(env: Env) -> None:
    ids = env.do(lambda b: dead(b, 3))
    page = env.json("dlq", "list", "worker:w1", "--limit", "2")
    assert [d["entry_id"] for d in page["items"]] == ids[:2]
    assert page["items"][0]["reason"] == "handler_error"
    assert page["items"][0]["error"] == "boom"
    assert page["items"][0]["attempts"] == 1
    rest = env.json("dlq", "list", "worker:w1", "--cursor", page["next_cursor"])
    assert [d["entry_id"] for d in rest["items"]] == ids[2:]
    assert rest["next_cursor"] is None

    result = env.run("dlq", "list", "worker:w1", "--limit", "2")
    assert result.exit_code == 0
    assert "boom" in result.stdout
    assert ids[0] in result.stdout
    assert f"--cursor {page['next_cursor']}" in result.stdout


def test_dlq_list_of_a_queue_without_dead_letters(env: Env) -> None:
    env.do(lambda b: b.queue.enqueue(message()))
    result = env.run("dlq", "list", "worker:w1")
    assert result.exit_code == 0
    assert result.stdout.strip() == "no dead letters in worker:w1"


def test_dlq_show(env: Env) -> None:
    (entry,) = env.do(dead)
    shown = env.json("dlq", "show", "worker:w1", entry)
    assert shown["entry_id"] == entry
    assert shown["message"]["payload"] == {"n": 0}
    result = env.run("dlq", "show", "worker:w1", entry)
    assert result.exit_code == 0
    assert "boom" in result.stdout

    missing = env.run("dlq", "show", "worker:w1", "nope")
    assert missing.exit_code == 1
    assert "no dead letter 'nope' in worker:w1" in missing.stderr


def test_dlq_show_a_raw_dead_letter(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    (entry,) = env.do(dead)
    raw = env.do(lambda b: b.queue.get_dead_letter(WORKER, entry))
    assert raw is not None

    async def get(queue: AgentId, entry_id: str) -> DeadLetter:
        return raw.model_copy(update={"message": None, "raw": "not json {"})

    monkeypatch.setattr(env.backend.queue, "get_dead_letter", get)
    result = env.run("dlq", "show", "worker:w1", entry)
    assert result.exit_code == 0
    assert "not json {" in result.stdout


def test_agents_with_filters(env: Env) -> None:
    assert env.run("agents").stdout.strip() == "no live agents"

    async def seed(backend: Backend) -> None:
        await backend.registry.register(
            WORKER, capabilities=[Capability(name="summarise", version="1.2")], ttl=60
        )
        await backend.registry.register(AgentId("other", "o1"), ttl=60, load=0.5)

    env.do(seed)
    listed = env.json("agents")
    assert [a["agent_id"] for a in listed] == ["other:o1", "worker:w1"]
    assert [a["agent_id"] for a in env.json("agents", "--type", "worker")] == ["worker:w1"]
    assert [a["agent_id"] for a in env.json("agents", "--capability", "summarise")] == ["worker:w1"]
    result = env.run("agents")
    assert result.exit_code == 0
    assert "summarise 1.2" in result.stdout


def test_breakers(env: Env) -> None:
    assert env.run("breakers").stdout.strip() == "no breakers"
    env.do(open_breaker)
    (snap,) = env.json("breakers")
    assert snap["name"] == "payments"
    assert snap["state"] == "open"
    assert 0 < snap["retry_after"] <= 60
    short = env.json("breakers", "--recovery-timeout", "5")
    assert short[0]["retry_after"] <= 5
    result = env.run("breakers")
    assert result.exit_code == 0
    assert "payments" in result.stdout
    assert "open" in result.stdout


# -- writes -------------------------------------------------------------------------------------


def test_dlq_replay_by_id(env: Env) -> None:
    ids = env.do(lambda b: dead(b, 2))
    dry = env.run("dlq", "replay", "worker:w1", "--id", ids[0], "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.strip() == f"would replay 1 dead letter(s) of worker:w1: {ids[0]}"
    declined = env.run("dlq", "replay", "worker:w1", "--id", ids[0], stdin="n\n")
    assert declined.exit_code == 1
    assert "nothing changed" in declined.stderr
    assert env.json("stats", "worker:w1")["dead"] == 2

    done = env.run("dlq", "replay", "worker:w1", "--id", ids[0], stdin="y\n")
    assert done.exit_code == 0
    assert "replayed 1 dead letter(s) of worker:w1" in done.stdout
    assert env.json("stats", "worker:w1") | {"queue": ""} == {
        "queue": "",
        "ready": 1,
        "delayed": 0,
        "reserved": 0,
        "dead": 1,
    }


def test_dlq_replay_names_unknown_ids(env: Env) -> None:
    ids = env.do(dead)
    result = env.run("dlq", "replay", "worker:w1", "--id", ids[0], "--id", "nope", "--yes")
    assert result.exit_code == 1
    assert "replayed 1" in result.stdout
    assert "no dead letter nope in worker:w1" in result.stderr


def test_dlq_replay_all(env: Env) -> None:
    env.do(lambda b: dead(b, 3))
    dry = env.run("dlq", "replay", "worker:w1", "--all", "--dry-run")
    assert dry.stdout.strip() == "would replay 3 dead letter(s) of worker:w1"
    assert env.json("stats", "worker:w1")["dead"] == 3
    assert env.run("dlq", "replay", "worker:w1", "--all", "--yes").exit_code == 0
    assert env.json("stats", "worker:w1")["ready"] == 3


@pytest.mark.parametrize("args", [(), ("--all", "--id", "x")])
def test_dlq_replay_needs_ids_or_all(env: Env, args: tuple[str, ...]) -> None:
    result = env.run("dlq", "replay", "worker:w1", *args)
    assert result.exit_code == 2
    assert result.stderr.strip() == "tta-coord: error: give either --id ID (one or more) or --all"


def test_dlq_purge(env: Env) -> None:
    env.do(lambda b: dead(b, 2))
    dry = env.run("dlq", "purge", "worker:w1", "--dry-run")
    assert dry.stdout.strip() == "would purge 2 dead letter(s) of worker:w1"
    assert env.run("dlq", "purge", "worker:w1", stdin="n\n").exit_code == 1
    assert env.json("stats", "worker:w1")["dead"] == 2
    done = env.run("dlq", "purge", "worker:w1", "-y")
    assert done.stdout.strip() == "purged 2 dead letter(s) of worker:w1"
    assert env.json("stats", "worker:w1")["dead"] == 0


def test_breakers_reset(env: Env) -> None:
    env.do(open_breaker)
    assert env.run("breakers", "reset", "payments", "--dry-run").stdout.strip() == (
        "would reset breaker payments"
    )
    assert env.run("breakers", "reset", "payments", stdin="n\n").exit_code == 1
    assert env.json("breakers")[0]["state"] == "open"
    done = env.run("breakers", "reset", "payments", "--yes")
    assert done.exit_code == 0
    assert done.stdout.strip() == "reset breaker payments: closed"
    assert env.json("breakers")[0]["state"] == "closed"

    missing = env.run("breakers", "reset", "nope", "--yes")
    assert missing.exit_code == 1
    assert "no breaker 'nope'" in missing.stderr


def test_send_from_the_argument(env: Env) -> None:
    dry = env.run("send", "worker:w1", '{"a": 1}', "--priority", "9", "--delay", "30", "--dry-run")
    assert dry.exit_code == 0
    assert dry.stdout.strip() == (
        'would send a message of type event (priority 9, delay 30s) to worker:w1: {"a": 1}'
    )
    assert env.json("queues") == []
    assert env.run("send", "worker:w1", '{"a": 1}', stdin="n\n").exit_code == 1
    assert env.json("queues") == []

    done = env.run("send", "worker:w1", '{"a": 1}', "--type", "command", "--yes")
    assert done.exit_code == 0
    entry_id = done.stdout.strip()

    async def reserve(backend: Backend) -> AgentMessage:
        (delivery,) = await backend.queue.reserve(WORKER, visibility_timeout=30)
        assert delivery.entry_id == entry_id
        return delivery.message

    sent = env.do(reserve)
    assert sent.payload == {"a": 1}
    assert sent.message_type == "command"


def test_send_with_delay_and_from_stdin(env: Env) -> None:
    done = env.run("send", "worker", "-", "--delay", "60", "--yes", stdin='["x"]')
    assert done.exit_code == 0
    assert env.json("stats", "worker")["delayed"] == 1
    asked = env.run("send", "worker", "-", stdin='["x"]')
    assert asked.exit_code == 2
    assert "needs --yes" in asked.stderr


def test_watch_once(env: Env) -> None:
    env.do(open_breaker)
    env.do(lambda b: b.queue.enqueue(message()))
    result = env.run("watch", "--count", "2", "--interval", "0.1")
    assert result.exit_code == 0
    assert "worker:w1" in result.stdout
    assert "payments" in result.stdout


def test_watch_stops_on_ctrl_c(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("tta_agent_coordination.cli.anyio.run", interrupt)
    result = env.run("watch")
    assert result.exit_code == 0
    assert result.stderr.strip().splitlines()[-1] == "stopped"


# -- bad input and the backend ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (("stats", "a b"), "'a b' is not a queue name: use TYPE or TYPE:INSTANCE"),
        (("send", "worker", "{"), "the payload is not JSON: Expecting property name"),
        (("--url", "foo://x", "queues"), "no backend for foo:// is installed"),
        (("--url", "nonsense", "queues"), "backend URL 'nonsense' must look like scheme://"),
        (("dlq", "list", "worker:w1", "--cursor", "%%%"), ""),
    ],
)
def test_bad_input_is_one_line_and_exit_2(env: Env, args: tuple[str, ...], line: str) -> None:
    if args[0] == "dlq":
        env.do(dead)
    result = env.run(*args)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("tta-coord: error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"tta-coord: error: {line}")
    assert "Traceback" not in result.output


def test_an_unreachable_backend_is_exit_3(env: Env) -> None:
    result = env.runner.invoke(app, ["--url", "redis://127.0.0.1:1/0", "queues"])
    assert result.exit_code == 3
    (line,) = result.stderr.splitlines()
    assert line.startswith("tta-coord: error: ")
    assert "memory://" not in result.stderr


def test_the_url_comes_from_the_environment(env: Env) -> None:
    env.do(lambda b: b.queue.enqueue(message()))
    result = env.runner.invoke(app, ["queues", "--json"], env={"TTA_COORDINATION_URL": env.url})
    assert json.loads(result.stdout)[0]["queue"] == "worker:w1"


def test_other_coordination_errors_are_exit_1(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from tta_agent_coordination import QueueFullError  # noqa: PLC0415

    async def full(*args: object, **kwargs: object) -> str:
        raise QueueFullError("worker:w1", 1)

    monkeypatch.setattr(env.backend.queue, "enqueue", full)
    result = env.run("send", "worker:w1", "--yes")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        "tta-coord: error: queue 'worker:w1' is full (1 entries ready, delayed or reserved)"
    )


def test_help_names_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "Exit codes" in result.stdout


def test_main_runs_the_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["tta-coord", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0


def test_a_usage_error_is_exit_2_and_changes_nothing(env: Env) -> None:
    result = env.run("send", "worker:w1", "--priority", "12", "--yes")
    assert result.exit_code == 2
    assert "--priority" in result.stderr
    assert env.json("queues") == []
