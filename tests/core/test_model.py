"""Direct checks of the plain-Python model's rarer paths (the stateful test reaches them only
on some runs, depending on what hypothesis generates)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from tta_agent_coordination.models import RegistryEventKind
from tta_agent_coordination.testing import plugin
from tta_agent_coordination.testing.model import (
    ModelClock,
    ModelEntry,
    QueueModel,
    RegistryModel,
)


def reserved_queue() -> tuple[QueueModel, ModelEntry]:
    clock = ModelClock()
    queue = QueueModel(clock, cap=4)
    expectation = queue.enqueue(None, None)
    assert expectation.existing is None
    assert not expectation.full
    entry = ModelEntry("e1", tag=1, priority=5, max_attempts=3, ttl=None, dedup_key=None)
    queue.admit(entry, delay=0)
    assert queue.check_reserve(["e1"], 1).wanted == 1
    queue.reserve([("e1", "r1")], visibility_timeout=25)
    return queue, entry


@pytest.mark.parametrize("operation", ["nack", "release", "extend", "dead_letter"])
def test_settling_with_a_stale_receipt_changes_nothing(operation: str) -> None:
    queue, entry = reserved_queue()
    before = queue.stats()
    settle: Any = getattr(queue, operation)
    args = {"nack": (0.0,), "release": (), "extend": (25.0,), "dead_letter": ("poison",)}
    assert settle("not-a-receipt", *args[operation]) is False
    assert queue.stats() == before
    assert entry.receipt == "r1"


def test_nack_and_release_hand_the_entry_back() -> None:
    queue, entry = reserved_queue()
    assert queue.nack("r1", 5.0) is True
    assert (entry.attempt, entry.receipt, entry.due) == (2, None, 5.0)
    queue.reserve([("e1", "r2")], visibility_timeout=25)
    assert queue.release("r2") is True
    assert (entry.attempt, entry.receipt) == (2, None)
    queue.reserve([("e1", "r3")], visibility_timeout=25)
    assert queue.extend("r3", 45) is True
    assert entry.deadline == queue.clock.now + 45


def test_deregistering_an_expired_session_emits_nothing() -> None:
    clock = ModelClock()
    registry = RegistryModel(clock)
    assert registry.can_register(0, replace=False)
    registry.register(0, "t0", ttl=15, capable=True)
    clock.advance(20)
    assert registry.deregister(0, "t0") is True
    kinds = [event.kind for event in registry.read_events()]
    assert kinds == [RegistryEventKind.REGISTERED, RegistryEventKind.EXPIRED]


def test_the_capability_summary_ignores_other_skips() -> None:
    lines: list[str] = []

    def section(title: str) -> None:
        lines.append(f"== {title}")

    reports = [
        SimpleNamespace(longrepr="skipped without a location"),
        SimpleNamespace(longrepr=("f.py", 1, "Skipped: not today")),
        SimpleNamespace(longrepr=("f.py", 2, f"Skipped: x:// {plugin.CAPABILITY_SKIP} cluster")),
    ]
    reporter = SimpleNamespace(
        stats={"skipped": reports},
        section=section,
        write_line=lines.append,
    )
    plugin.pytest_terminal_summary(cast("Any", reporter))
    assert lines[1:] == [f"    1 skipped: x:// {plugin.CAPABILITY_SKIP} cluster"]
