"""A small storytelling agent system, coordinating through one backend.

``python -m tta_agent_coordination.demo [--url memory://] [--seed 7] [--stories 24] [--json]``

- ``input_processor:ip-1`` sends each story prompt as a request to the ``world_builder`` type's
  shared queue and waits for the answer;
- two ``world_builder`` instances share that queue; each builds a world and forwards the
  request to the ``narrative_generator`` found by capability (``narrate >=1,<2``), which will
  answer the input processor directly (``reply_to`` and ``correlation_id`` travel along);
- ``narrative_generator:ng-1`` calls a flaky language model behind a shared circuit breaker;
  failed attempts are retried with backoff, and a story that fails every attempt is
  dead-lettered with the error, while a middleware tells the waiting input processor;
- every agent is registered with its capabilities and heartbeats; the registry's events are
  collected as they happen.

The model's failures are a pure function of ``(seed, story, attempt)``, so the same seed fails
the same attempts of the same stories on every run: which stories are answered and which are
dead-lettered is reproducible. (How often the breaker opens depends on timing too.) At the end
it prints what happened, or with ``--json`` the same summary for machines, and exits 0 when
every request was answered or dead-lettered with a reason.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import anyio
from pydantic import JsonValue
from rich.console import Console
from rich.table import Table

from .breaker import CircuitBreaker
from .coordinator import HandleNext, MessageCoordinator, PassThroughMiddleware
from .errors import CircuitOpenError, PermanentFailureError, RequestTimeoutError
from .metrics import (
    DELIVERIES_ACKED,
    DELIVERIES_DEAD_LETTERED,
    DELIVERIES_NACKED,
    MESSAGES_SENT,
    RecordingMetrics,
)
from .models import (
    AgentId,
    BreakerTransition,
    Capability,
    CapabilityQuery,
    CircuitBreakerConfig,
    Delivery,
)
from .plugins import connect
from .protocols import Backend
from .registry import AgentRegistry
from .retry import RetryPolicy

__all__ = ["DemoSummary", "main", "run"]

INPUT = AgentId("input_processor", "ip-1")
BUILDERS = (AgentId("world_builder", "wb-1"), AgentId("world_builder", "wb-2"))
NARRATOR = AgentId("narrative_generator", "ng-1")
NARRATE = CapabilityQuery("narrate", ">=1,<2")
PROMPTS = (
    "a lighthouse that keeps the wrong time",
    "a market where memories are traded",
    "a city built on a sleeping giant",
    "a library with one missing letter",
    "a forest that migrates each winter",
    "a ship crewed by former kings",
)
MAX_ATTEMPTS = 3
FAILURE_RATE = 0.35


class ModelUnavailableError(RuntimeError):
    """The (simulated) language model failed this call."""


def model_fails(seed: int, story: int, attempt: int) -> bool:
    """Whether the simulated model fails this attempt of this story (a pure function)."""
    digest = hashlib.sha256(f"{seed}:{story}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < FAILURE_RATE


@dataclass
class DemoSummary:
    """What happened in one run."""

    backend: str
    seed: int
    stories: int
    answered: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    timed_out: list[int] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    transitions: list[BreakerTransition] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    metrics: RecordingMetrics = field(default_factory=RecordingMetrics)

    @property
    def ok(self) -> bool:
        """Every request answered, or failed with its message dead-lettered with a reason."""
        dead = {d["story"] for d in self.dead_letters if d["reason"]}
        return (
            not self.timed_out
            and len(self.answered) + len(self.failed) == self.stories
            and set(self.failed) == dead
        )

    def as_dict(self) -> dict[str, Any]:
        """The summary as JSON-compatible data."""
        m = self.metrics
        return {
            "backend": self.backend,
            "seed": self.seed,
            "requests": {
                "sent": self.stories,
                "answered": len(self.answered),
                "failed": len(self.failed),
                "timed_out": len(self.timed_out),
            },
            "messages": {
                "sent": int(m.total(MESSAGES_SENT)),
                "acked": int(m.total(DELIVERIES_ACKED)),
                "retried": int(m.total(DELIVERIES_NACKED)),
                "dead_lettered": int(m.total(DELIVERIES_DEAD_LETTERED)),
            },
            "dead_letters": self.dead_letters,
            "breaker": {
                "transitions": [
                    {"from": t.from_state.value, "to": t.to_state.value} for t in self.transitions
                ],
            },
            "registry_events": dict(sorted(self.events.items())),
            "ok": self.ok,
        }


class TellTheRequester(PassThroughMiddleware):
    """On a story's last failed attempt, answer the waiting requester with the error."""

    def __init__(self, coordinator: MessageCoordinator) -> None:
        self.coordinator = coordinator

    async def on_handle(self, delivery: Delivery, call_next: HandleNext) -> None:
        """Run the handler; if this attempt was the last, send an error response too."""
        try:
            await call_next(delivery)
        except CircuitOpenError:
            raise  # released by serve, not an attempt
        except Exception as exc:
            if delivery.attempt >= MAX_ATTEMPTS and delivery.message.reply_to is not None:
                await self.coordinator.reply(
                    delivery, {"error": f"{type(exc).__name__}: {exc}"}, message_type="error"
                )
            raise


async def run(
    url: str = "memory://", *, seed: int = 7, stories: int = 24, request_timeout: float = 20.0
) -> DemoSummary:
    """Run the demo once against ``url`` and return its summary."""
    summary = DemoSummary(backend=url, seed=seed, stories=stories)
    metrics = summary.metrics
    policy = RetryPolicy(max_attempts=MAX_ATTEMPTS, base=0.02, factor=2.0, max_delay=0.2)
    async with connect(url) as backend:
        await backend.drop_namespace()  # a clean slate for the demo's namespace
        registry = AgentRegistry(backend)
        breaker = CircuitBreaker(
            backend,
            "llm",
            CircuitBreakerConfig(
                failure_threshold=3,
                recovery_timeout=0.2,
                half_open_max_calls=1,
                success_threshold=1,
            ),
            metrics=metrics,
            on_transition=summary.transitions.append,
        )
        stop = anyio.Event()
        async with anyio.create_task_group() as agents:
            await agents.start(_narrator, backend, registry, breaker, (policy, seed, metrics, stop))
            for builder in BUILDERS:
                await agents.start(_builder, backend, registry, builder, metrics, stop)
            await _input_processor(backend, registry, summary, request_timeout)
            stop.set()  # the workers finish what they hold, deregister and return
            await _until_deregistered(registry)
            agents.cancel_scope.cancel()
        summary.dead_letters = await _dead_letters(backend)
        cursor: str | None = "0"
        while cursor is not None:  # the registry's event log, oldest first
            page = await registry.read_events(after=cursor, limit=100)
            summary.events.update(event.kind.value for event in page.items)
            cursor = page.next_cursor if page.items else None
        await backend.drop_namespace()
    return summary


async def _until_deregistered(registry: AgentRegistry) -> None:
    """Wait until every demo agent has left the registry (their serve loops returned)."""
    cursor = (await registry.read_events(limit=1)).next_cursor
    while await registry.list():
        # Woken by the next registry event (a deregistration), not by polling.
        cursor = (await registry.read_events(after=cursor, wait=1.0)).next_cursor


def _payload(delivery: Delivery) -> dict[str, JsonValue]:
    payload = delivery.message.payload
    if not isinstance(payload, dict):
        msg = f"expected a JSON object, got {payload!r}"
        raise PermanentFailureError(msg)  # retrying a malformed message cannot help
    return payload


async def _narrator(
    backend: Backend,
    registry: AgentRegistry,
    breaker: CircuitBreaker,
    options: tuple[RetryPolicy, int, RecordingMetrics, anyio.Event],
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    policy, seed, metrics, stop = options
    answers = MessageCoordinator(backend, metrics=metrics, agent_id=NARRATOR)
    coordinator = MessageCoordinator(
        backend, metrics=metrics, agent_id=NARRATOR, middleware=[TellTheRequester(answers)]
    )

    async def call_model(story: int, attempt: int, world: str) -> str:
        if model_fails(seed, story, attempt):
            msg = f"the model timed out on story {story}"
            raise ModelUnavailableError(msg)
        return f"Once, in {world}, something stirred."

    async def narrate(delivery: Delivery) -> None:
        payload = _payload(delivery)
        story = int(str(payload["story"]))
        text = await breaker.call(call_model, story, delivery.attempt, str(payload["world"]))
        await coordinator.reply(delivery, {"story": story, "text": text})

    async with registry.registered(
        NARRATOR, capabilities=[Capability("narrate", "1.2", tags={"en"})], ttl=10
    ):
        await coordinator.serve(
            NARRATOR,
            narrate,
            concurrency=2,
            retry_policy=policy,
            breaker=breaker,
            stop=stop,
            grace=5,
            task_status=task_status,
        )


async def _builder(
    backend: Backend,
    registry: AgentRegistry,
    me: AgentId,
    metrics: RecordingMetrics,
    stop: anyio.Event,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    coordinator = MessageCoordinator(backend, metrics=metrics, agent_id=me, registry=registry)

    async def build(delivery: Delivery) -> None:
        request = delivery.message
        payload = _payload(delivery)
        world = f"{payload['prompt']} (built by {me.instance})"
        # Forward to a narrator found by capability; it answers the requester directly.
        await coordinator.send(
            NARRATE,
            {"story": payload["story"], "world": world},
            sender=me,
            message_type="command",
            correlation_id=request.correlation_id,
            reply_to=request.reply_to,
            max_attempts=MAX_ATTEMPTS,
        )

    async with registry.registered(me, capabilities=[Capability("build_world", "1.0")], ttl=10):
        await coordinator.serve(
            me, build, concurrency=4, stop=stop, grace=5, task_status=task_status
        )


async def _input_processor(
    backend: Backend, registry: AgentRegistry, summary: DemoSummary, request_timeout: float
) -> None:
    async with (
        registry.registered(INPUT, capabilities=[Capability("parse", "1.0")], ttl=10),
        MessageCoordinator(backend, metrics=summary.metrics, agent_id=INPUT) as coordinator,
    ):

        async def tell(story: int) -> None:
            prompt = PROMPTS[story % len(PROMPTS)]
            try:
                answer = await coordinator.request(
                    AgentId("world_builder"),
                    {"story": story, "prompt": prompt},
                    timeout=request_timeout,
                )
            except RequestTimeoutError:
                summary.timed_out.append(story)
                return
            payload = answer.payload if isinstance(answer.payload, dict) else {}
            if answer.message_type == "error":
                summary.failed[story] = str(payload["error"])
            else:
                summary.answered.append(story)

        async with anyio.create_task_group() as tg:
            for story in range(summary.stories):
                tg.start_soon(tell, story)


async def _dead_letters(backend: Backend) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for queue in await backend.queue.queues():
        page = await backend.queue.dead_letters(queue, limit=1000)
        for dead in page.items:
            payload = dead.message.payload if dead.message is not None else None
            story = payload.get("story") if isinstance(payload, dict) else None
            out.append(
                {
                    "queue": str(queue),
                    "entry_id": dead.entry_id,
                    "story": story,
                    "reason": dead.reason,
                    "attempts": dead.attempts,
                    "error": dead.error,
                }
            )
    return sorted(out, key=lambda d: (d["story"] is None, d["story"]))


def _print(summary: DemoSummary, console: Console) -> None:
    data = summary.as_dict()
    requests = Table(title="Requests (input_processor -> world_builder -> narrative_generator)")
    for column in ("sent", "answered", "failed", "timed out"):
        requests.add_column(column, justify="right")
    r = data["requests"]
    requests.add_row(*(str(r[k]) for k in ("sent", "answered", "failed", "timed_out")))
    console.print(requests)

    messages = Table(title="Messages")
    for column in ("sent", "acked", "retried", "dead-lettered"):
        messages.add_column(column, justify="right")
    m = data["messages"]
    messages.add_row(*(str(m[k]) for k in ("sent", "acked", "retried", "dead_lettered")))
    console.print(messages)

    dead = Table(title="Dead letters")
    for column in ("story", "queue", "reason", "attempts", "error"):
        dead.add_column(column)
    for d in summary.dead_letters:
        dead.add_row(str(d["story"]), d["queue"], d["reason"], str(d["attempts"]), d["error"])
    console.print(dead)

    breaker = Table(title="Breaker 'llm' transitions")
    breaker.add_column("#", justify="right")
    breaker.add_column("from")
    breaker.add_column("to")
    for i, t in enumerate(summary.transitions, 1):
        breaker.add_row(str(i), t.from_state.value, t.to_state.value)
    console.print(breaker)

    events = Table(title="Registry events")
    events.add_column("kind")
    events.add_column("count", justify="right")
    for kind, count in data["registry_events"].items():
        events.add_row(kind, str(count))
    console.print(events)
    verdict = "every request answered or dead-lettered with a reason" if summary.ok else "FAILED"
    console.print(f"[bold]{verdict}[/bold] (seed {summary.seed}, {summary.backend})")


def main(argv: list[str] | None = None) -> int:
    """Run the demo from the command line; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m tta_agent_coordination.demo")
    parser.add_argument("--url", default="memory://?namespace=demo", help="backend URL")
    parser.add_argument("--seed", type=int, default=7, help="seed of the model's failures")
    parser.add_argument("--stories", type=int, default=24, help="how many requests to send")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    return anyio.run(_main, args)


async def _main(args: argparse.Namespace) -> int:
    summary = await run(args.url, seed=args.seed, stories=args.stories)
    if args.json:
        json.dump(summary.as_dict(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(summary, Console())
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
