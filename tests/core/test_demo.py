from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from rich.console import Console

from tta_agent_coordination import (
    AgentId,
    AgentMessage,
    CircuitOpenError,
    Delivery,
    PermanentFailureError,
    demo,
)
from tta_agent_coordination.demo import MAX_ATTEMPTS, model_fails, run
from tta_agent_coordination.models import BreakerState, BreakerTransition

OPEN, HALF_OPEN = BreakerState.OPEN, BreakerState.HALF_OPEN

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def expected_failures(seed: int, stories: int) -> set[int]:
    """The stories whose every attempt fails: a pure function of the seed."""
    return {
        story
        for story in range(stories)
        if all(model_fails(seed, story, attempt) for attempt in range(1, MAX_ATTEMPTS + 1))
    }


async def test_every_request_is_answered_or_dead_lettered_with_a_reason() -> None:
    summary = await run("memory://?namespace=demo-test", seed=7, stories=24)
    data = summary.as_dict()
    requests = data["requests"]
    assert requests["sent"] == 24
    assert requests["answered"] + requests["failed"] == 24
    assert requests["timed_out"] == 0
    failed = expected_failures(7, 24)
    assert failed, "seed 7 is chosen to fail some stories"
    assert set(summary.failed) == failed
    assert sorted(summary.answered) == sorted(set(range(24)) - failed)
    # Each failed story is dead-lettered once, with its reason, attempts and the error text.
    dead = data["dead_letters"]
    assert [d["story"] for d in dead] == sorted(failed)
    for letter in dead:
        assert letter["queue"] == "narrative_generator:ng-1"
        assert letter["reason"] == "max_attempts"
        assert letter["attempts"] == MAX_ATTEMPTS
        assert "ModelUnavailableError" in letter["error"]
        assert str(letter["story"]) in summary.failed[letter["story"]]
    # Counts add up: every message sent was acked or dead-lettered.
    messages = data["messages"]
    assert messages["sent"] == 24 * 3  # requests, forwards, answers
    assert messages["acked"] + messages["dead_lettered"] == messages["sent"]
    assert messages["dead_lettered"] == len(failed)
    retried = sum(
        next((a - 1 for a in range(1, MAX_ATTEMPTS + 1) if not model_fails(7, s, a)), 0)
        for s in range(24)
        if s not in failed
    ) + len(failed) * (MAX_ATTEMPTS - 1)
    assert messages["retried"] == retried
    # Four agents registered and deregistered.
    assert data["registry_events"]["registered"] == 4
    assert data["registry_events"]["deregistered"] == 4
    # How often the breaker trips depends on timing (which failures are consecutive), so
    # check the transitions form one chain from closed, each reported once.
    state = "closed"
    for transition in data["breaker"]["transitions"]:
        assert transition["from"] == state
        assert transition["to"] != state
        state = transition["to"]
    assert data["ok"] is True


async def test_another_seed_fails_other_stories() -> None:
    summary = await run("memory://", seed=11, stories=12)
    assert set(summary.failed) == expected_failures(11, 12)
    assert summary.ok


def test_main_prints_tables_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert expected_failures(7, 12), "the table of dead letters gets a row"
    assert demo.main(["--stories", "12", "--seed", "7"]) == 0
    out = capsys.readouterr().out
    assert "Requests" in out
    assert "max_attempts" in out
    assert "Registry events" in out
    assert "every request answered or dead-lettered" in out
    assert demo.main(["--stories", "6", "--seed", "3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["requests"]["sent"] == 6
    assert data["ok"] is True


async def test_requests_that_time_out_are_reported_and_not_ok() -> None:
    summary = await run("memory://", seed=7, stories=3, request_timeout=0.000_001)
    assert sorted(summary.timed_out) == [0, 1, 2]
    assert not summary.ok


def test_a_malformed_message_is_a_permanent_failure() -> None:
    now = datetime.now(UTC)
    delivery = Delivery(
        queue=AgentId("b"),
        entry_id="e",
        message=AgentMessage(sender=AgentId("a"), recipient=AgentId("b"), payload=[1, 2]),
        attempt=1,
        max_attempts=3,
        receipt="r",
        enqueued_at=now,
        visible_at=now,
    )
    with pytest.raises(PermanentFailureError, match="JSON object"):
        demo._payload(delivery)


def test_a_run_that_loses_a_request_is_not_ok() -> None:
    summary = demo.DemoSummary(backend="memory://", seed=1, stories=2, answered=[0])
    summary.timed_out.append(1)
    assert not summary.ok
    assert summary.as_dict()["ok"] is False


def test_python_dash_m_runs_the_demo() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tta_agent_coordination.demo", "--json", "--stories", "4"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["requests"]["sent"] == 4


def test_the_tables_show_breaker_transitions_and_dead_letters() -> None:
    summary = demo.DemoSummary(backend="memory://", seed=1, stories=1)
    summary.failed[0] = "ModelUnavailableError: down"
    summary.dead_letters.append(
        {"story": 0, "queue": "q", "reason": "max_attempts", "attempts": 3, "error": "down"}
    )
    now = datetime.now(UTC)
    summary.transitions.append(
        BreakerTransition(name="llm", from_state=OPEN, to_state=HALF_OPEN, at=now)
    )
    out = io.StringIO()
    demo._print(summary, Console(file=out, width=120))
    text = out.getvalue()
    assert "half_open" in text
    assert "max_attempts" in text
    assert "every request answered or dead-lettered with a reason" in text


class RecordingReplies:
    """Stands in for the coordinator TellTheRequester answers through."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, object]] = []

    async def reply(self, delivery: Delivery, payload: object, *, message_type: str) -> None:
        self.replies.append((message_type, payload))


@pytest.mark.parametrize(
    ("error", "answered"),
    [(CircuitOpenError("llm", 1.0), False), (RuntimeError("model down"), True)],
)
async def test_the_requester_is_told_of_a_last_failed_attempt_not_of_an_open_circuit(
    error: Exception, answered: bool
) -> None:
    """An open circuit is released by serve (no attempt spent): nobody is told; any other
    failure of the last attempt answers the waiting requester with the error."""
    now = datetime.now(UTC)
    delivery = Delivery(
        queue=AgentId("b"),
        entry_id="e",
        message=AgentMessage(sender=AgentId("a"), recipient=AgentId("b"), reply_to=AgentId("a")),
        attempt=MAX_ATTEMPTS,
        max_attempts=MAX_ATTEMPTS,
        receipt="r",
        enqueued_at=now,
        visible_at=now,
    )
    coordinator = RecordingReplies()
    middleware = demo.TellTheRequester(coordinator)  # type: ignore[arg-type]

    async def fail(_: Delivery) -> None:
        raise error

    with pytest.raises(type(error)):
        await middleware.on_handle(delivery, fail)
    expected = [("error", {"error": f"{type(error).__name__}: {error}"})] if answered else []
    assert coordinator.replies == expected
