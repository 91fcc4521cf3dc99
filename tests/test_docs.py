"""The docs keep up with the code: every suite test is in the clause map."""

from __future__ import annotations

from pathlib import Path

from tta_agent_coordination.testing.breaker_contract import BreakerContract
from tta_agent_coordination.testing.queue_contract import QueueContract
from tta_agent_coordination.testing.registry_contract import RegistryContract

ROOT = Path(__file__).resolve().parents[1]


def test_every_suite_test_is_in_the_clause_map() -> None:
    text = (ROOT / "docs" / "conformance.md").read_text()
    missing = [
        f"{cls.__name__}.{name}"
        for cls in (QueueContract, RegistryContract, BreakerContract)
        for name in vars(cls)
        if name.startswith("test_") and f"`{cls.__name__}.{name}`" not in text
    ]
    assert missing == []


def test_every_decision_record_is_linked_from_somewhere() -> None:
    docs = ROOT / "docs"
    text = "".join(p.read_text() for p in docs.glob("*.md"))
    for record in (docs / "decisions").glob("*.md"):
        assert f"decisions/{record.name}" in text, record.name
