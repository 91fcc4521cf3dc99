from __future__ import annotations

import os
import string
import uuid
from datetime import UTC, datetime
from typing import Any, cast

import pydantic
import pytest
from fork_helpers import made_in_a_forked_child
from hypothesis import given
from hypothesis import strategies as st

from tta_agent_coordination import (
    AgentId,
    AgentInfo,
    AgentMessage,
    Capability,
    CapabilityQuery,
    CircuitBreakerConfig,
    CoordinationError,
    Delivery,
    MessagePriority,
    MessageResult,
    MessageType,
    Page,
    QueueStats,
    ValidationError,
)

NAME_FIRST = string.ascii_letters + string.digits
NAME_REST = NAME_FIRST + "_.-"
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,40}", fullmatch=True)


@given(type_=names, instance=st.none() | names)
def test_agent_id_str_parse_round_trip(type_: str, instance: str | None) -> None:
    agent = AgentId(type_, instance)
    assert AgentId.parse(str(agent)) == agent
    assert hash(AgentId.parse(str(agent))) == hash(agent)
    assert AgentId.model_validate_json(agent.model_dump_json()) == agent


@given(bad=st.text(max_size=140).filter(lambda s: not _valid(s)))
def test_agent_id_rejects_every_invalid_part(bad: str) -> None:
    with pytest.raises(ValidationError) as info:
        AgentId(bad)
    assert isinstance(info.value.__cause__, pydantic.ValidationError)
    with pytest.raises(ValidationError):
        AgentId("ok", bad)


def _valid(text: str) -> bool:
    return 1 <= len(text) <= 128 and text[0] in NAME_FIRST and all(c in NAME_REST for c in text[1:])


@pytest.mark.parametrize(
    "bad", ["", "a:b", "a{b}", "a*", "a b", "trailing\n", "\nlead", "-x", "_x", "x" * 129]
)
def test_agent_id_rejects_key_smuggling(bad: str) -> None:
    with pytest.raises(ValidationError):
        AgentId(bad)


def test_agent_id_error_is_a_coordination_error_and_a_value_error() -> None:
    with pytest.raises(CoordinationError):
        AgentId("bad type")
    with pytest.raises(ValueError, match="should match pattern"):
        AgentId("bad type")


def test_agent_id_accepts_128_characters() -> None:
    assert AgentId("x" * 128).type == "x" * 128


def test_agent_id_str_and_shared() -> None:
    worker = AgentId("world_builder", "w2")
    assert str(worker) == "world_builder:w2"
    assert str(AgentId("world_builder")) == "world_builder"
    assert worker.shared == AgentId("world_builder")
    assert AgentId("world_builder").shared == AgentId("world_builder")
    assert AgentId("world_builder").is_shared
    assert not worker.is_shared
    assert AgentId(type="a", instance="b") == AgentId("a", "b")


def test_agent_id_parse_rejects_extra_colons_and_non_strings() -> None:
    with pytest.raises(ValidationError):
        AgentId.parse("a:b:c")
    with pytest.raises(ValidationError):
        AgentId.parse("a:")
    with pytest.raises(ValidationError):
        AgentId.parse(42)  # type: ignore[arg-type]


def test_agent_id_is_frozen() -> None:
    agent = AgentId("a")
    with pytest.raises(pydantic.ValidationError):
        agent.type = "b"  # type: ignore[misc]


@given(a=st.tuples(names, st.none() | names), b=st.tuples(names, st.none() | names))
def test_agent_id_ordering_is_total_and_consistent(
    a: tuple[str, str | None], b: tuple[str, str | None]
) -> None:
    x, y = AgentId(*a), AgentId(*b)

    def key(t: tuple[str, str | None]) -> tuple[str, str]:
        return (t[0], t[1] or "")

    assert (x < y) == (key(a) < key(b))
    assert (x <= y) == (key(a) <= key(b))
    assert (x > y) == (key(a) > key(b))
    assert (x >= y) == (key(a) >= key(b))


def test_agent_id_comparison_with_other_types() -> None:
    agent = AgentId("a")
    assert agent != cast("object", "a")
    for op in ("__lt__", "__le__", "__gt__", "__ge__"):
        assert getattr(agent, op)("a") is NotImplemented
    with pytest.raises(TypeError):
        _ = agent < "a"


def test_message_defaults_and_json_round_trip() -> None:
    message = AgentMessage(
        sender=AgentId("input_processor", "w1"),
        recipient=cast("Any", "world_builder:w2"),  # strings are parsed
        payload={"text": "hi", "n": [1, 2.5, None, True]},
        headers={"traceparent": "00-abc"},
        ttl=5,
    )
    assert len(message.message_id) == 32
    assert message.recipient == AgentId("world_builder", "w2")
    assert message.message_type == MessageType.REQUEST
    assert message.priority == MessagePriority.NORMAL
    assert message.created_at.tzinfo is not None
    again = AgentMessage.model_validate_json(message.model_dump_json())
    assert again == message
    assert again.model_dump_json() == message.model_dump_json()


def test_message_ids_are_unique() -> None:
    ids = {AgentMessage(sender=AgentId("a"), recipient=AgentId("b")).message_id for _ in range(100)}
    assert len(ids) == 100


def test_message_ids_are_random_uuid4_hex() -> None:
    ids = [AgentMessage(sender=AgentId("a"), recipient=AgentId("b")).message_id for _ in range(300)]
    assert len(set(ids)) == 300  # across several batches made ahead
    for message_id in ids:
        parsed = uuid.UUID(hex=message_id)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, message_id)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform cannot fork")
def test_a_forked_child_never_repeats_its_parents_message_ids() -> None:
    def new_id() -> str:
        return AgentMessage(sender=AgentId("a"), recipient=AgentId("b")).message_id

    new_id()  # the parent now holds ids made ahead
    child = made_in_a_forked_child(lambda: [new_id() for _ in range(5)])
    parent = {new_id() for _ in range(5)}
    assert len(child) == 5
    assert not child & parent


def test_message_type_accepts_any_string_and_keeps_known_ones_typed() -> None:
    sender, recipient = AgentId("a"), AgentId("b")
    custom = AgentMessage(sender=sender, recipient=recipient, message_type="story.beat")
    assert custom.message_type == "story.beat"
    known = AgentMessage(sender=sender, recipient=recipient, message_type="event")
    assert known.message_type == MessageType.EVENT
    with pytest.raises(ValidationError):
        AgentMessage(sender=sender, recipient=recipient, message_type="")


@pytest.mark.parametrize("priority", [0, 1, 5, 9, MessagePriority.HIGH])
def test_priority_range_accepted(priority: int) -> None:
    message = AgentMessage(sender=AgentId("a"), recipient=AgentId("b"), priority=priority)
    assert message.priority == priority


@pytest.mark.parametrize("priority", [-1, 10, True, "high", 2.5])
def test_priority_out_of_range_rejected(priority: Any) -> None:
    with pytest.raises(ValidationError):
        AgentMessage(sender=AgentId("a"), recipient=AgentId("b"), priority=priority)


@pytest.mark.parametrize(
    "field",
    [
        {"payload": {"x": object()}},
        {"ttl": 0},
        {"ttl": -1},
        {"headers": {"a": 1}},
        {"unknown_field": 1},
        {"message_id": ""},
    ],
)
def test_message_rejects_bad_fields(field: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        AgentMessage(sender=AgentId("a"), recipient=AgentId("b"), **field)


def test_naive_datetimes_are_taken_as_utc() -> None:
    message = AgentMessage(
        sender=AgentId("a"),
        recipient=AgentId("b"),
        created_at=datetime(2026, 1, 1, 12, 0),  # noqa: DTZ001  # naive on purpose
    )
    assert message.created_at == datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_model_validate_translates_errors() -> None:
    with pytest.raises(ValidationError):
        AgentMessage.model_validate({"sender": "a"})
    with pytest.raises(ValidationError):
        AgentMessage.model_validate_json(b"{not json")


def test_delivery_last_attempt() -> None:
    now = datetime.now(UTC)
    message = AgentMessage(sender=AgentId("a"), recipient=AgentId("b"))
    delivery = Delivery(
        queue=AgentId("b"),
        entry_id="e1",
        message=message,
        attempt=3,
        max_attempts=3,
        receipt="r",
        enqueued_at=now,
        visible_at=now,
    )
    assert delivery.is_last_attempt
    assert not delivery.model_copy(update={"attempt": 2}).is_last_attempt


def test_queue_stats_live_and_page() -> None:
    stats = QueueStats(queue=AgentId("a"), ready=1, delayed=2, reserved=3, dead=4)
    assert stats.live == 6
    page = Page[QueueStats](items=[stats], next_cursor=None)
    assert page.items == [stats]


def test_capability_and_query() -> None:
    cap = Capability("summarise", "1.3.0", tags={"en", "fast"})
    assert cap.tags == ("en", "fast")
    assert CapabilityQuery("summarise", ">=1.2,<2").matches(cap)
    assert CapabilityQuery("summarise").matches(cap)
    assert CapabilityQuery("summarise", tags=["en"]).matches(cap)
    assert not CapabilityQuery("summarise", tags=["de"]).matches(cap)
    assert not CapabilityQuery("summarise", ">=2").matches(cap)
    assert not CapabilityQuery("translate").matches(cap)
    assert CapabilityQuery("summarise", ">=1.3").matches(Capability("summarise", "1.4rc1"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Capability("bad name"),
        lambda: Capability("ok", "not a version"),
        lambda: Capability("ok", tags="en"),
        lambda: Capability("ok", tags=42),
        lambda: Capability("ok", tags=["a", 1]),
        lambda: CapabilityQuery("ok", "=>1"),
        lambda: CapabilityQuery("ok", max_load=-1),
        lambda: CapabilityQuery("bad:name"),
    ],
)
def test_capability_validation(make: object) -> None:
    with pytest.raises(ValidationError):
        make()  # type: ignore[operator]


def test_agent_info_holds() -> None:
    now = datetime.now(UTC)
    info = AgentInfo(
        agent_id=AgentId("w", "1"),
        capabilities=(Capability("summarise", "1.5"),),
        load=0.5,
        ttl=30,
        registered_at=now,
        last_heartbeat=now,
        expires_at=now,
    )
    assert info.holds(CapabilityQuery("summarise", ">=1"))
    assert info.holds(CapabilityQuery("summarise", max_load=0.5))
    assert not info.holds(CapabilityQuery("summarise", max_load=0.4))
    assert not info.holds(CapabilityQuery("other"))
    assert not info.model_copy(update={"available": False}).holds(CapabilityQuery("summarise"))


def test_breaker_config_accepts_the_original_names() -> None:
    config = CircuitBreakerConfig(timeout_seconds=5, failure_threshold=2)
    assert config.recovery_timeout == 5
    assert config.timeout_seconds == 5
    default = CircuitBreakerConfig()
    assert (default.failure_threshold, default.recovery_timeout) == (5, 60)
    assert (default.half_open_max_calls, default.success_threshold) == (3, 2)
    with pytest.raises(ValidationError):
        CircuitBreakerConfig(failure_threshold=0)
    with pytest.raises(ValidationError, match="not both"):
        CircuitBreakerConfig(recovery_timeout=1, timeout_seconds=2)


def test_message_result_ok() -> None:
    result = MessageResult.ok("m1", "e1")
    assert result.delivered
    assert result.error is None
    assert result.entry_id == "e1"
