"""The shared codec: its fast paths give exactly what the models' own methods give."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tta_agent_coordination import _codec
from tta_agent_coordination._codec import (
    decode_message,
    encode_message,
    loads,
    trusted_delivery,
)
from tta_agent_coordination.errors import ValidationError
from tta_agent_coordination.models import AgentId, AgentMessage, Delivery

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
ids = st.builds(AgentId, names, st.none() | names)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
messages = st.builds(
    AgentMessage,
    sender=ids,
    recipient=ids,
    message_type=st.text(min_size=1, max_size=20),
    payload=json_values,
    priority=st.integers(0, 9),
    created_at=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3))])),
    correlation_id=st.none() | st.text(min_size=1, max_size=20),
    reply_to=st.none() | ids,
    headers=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    ttl=st.none() | st.floats(min_value=0.001, max_value=1e6),
)


def same(a: pydantic.BaseModel, b: pydantic.BaseModel) -> bool:
    """Equal, of the same class, with the same fields set and the same field order."""
    return (
        type(a) is type(b)
        and a == b
        and repr(a) == repr(b)
        and a.model_fields_set == b.model_fields_set
        and list(a.__dict__) == list(b.__dict__)
    )


@given(message=messages)
def test_encode_is_model_dump_json_and_decode_is_model_validate_json(
    message: AgentMessage,
) -> None:
    data = encode_message(message, 1 << 20)
    assert data == message.model_dump_json().encode()
    decoded = decode_message(data)
    assert same(decoded, AgentMessage.model_validate_json(data))
    assert decoded == message
    assert same(decode_message(data.decode()), decoded)
    assert same(decoded.sender, message.sender)


def test_encode_lets_a_subclass_serialise_itself() -> None:
    class Tagged(AgentMessage):
        def model_dump_json(self, **kwargs: Any) -> str:
            return "tagged"

    message = Tagged(sender=AgentId("a"), recipient=AgentId("b"))
    assert encode_message(message, 100) == b"tagged"


def stored(**changes: Any) -> str:
    """A stored message's JSON with some fields changed."""
    message = AgentMessage(sender=AgentId("a", "1"), recipient=AgentId("b"), payload={"n": 1})
    return json.dumps({**json.loads(message.model_dump_json()), **changes})


@pytest.mark.parametrize(
    "changes",
    [
        {"sender": "a:1", "reply_to": "c"},  # ids as strings: the model parses them
        {"priority": "7"},  # lax: a numeric string
        {"priority": 7.0},
        {"created_at": "2026-01-01T12:00:00"},  # naive: taken as UTC
        {"recipient": {"type": "b", "instance": None}},
        {"payload": [1, "x", None]},
    ],
)
def test_decode_accepts_what_the_model_accepts(changes: dict[str, Any]) -> None:
    data = stored(**changes)
    assert same(decode_message(data), AgentMessage.model_validate_json(data))


@pytest.mark.parametrize(
    "changes",
    [
        {"priority": True},
        {"priority": 10},
        {"sender": "a:b:c"},
        {"sender": {"type": "a b"}},
        {"ttl": 0},
        {"headers": {"a": 1}},
        {"unknown": 1},
        {"message_id": ""},
    ],
)
def test_decode_refuses_what_the_model_refuses(changes: dict[str, Any]) -> None:
    data = stored(**changes)
    with pytest.raises(ValidationError) as info:
        decode_message(data)
    with pytest.raises(ValidationError) as model:
        AgentMessage.model_validate_json(data)
    assert str(info.value) == str(model.value)
    assert isinstance(info.value.__cause__, pydantic.ValidationError)


def test_decode_without_the_native_validator_uses_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = stored()
    monkeypatch.setattr(_codec, "_STORED", None)
    assert same(decode_message(data), AgentMessage.model_validate_json(data))


def test_an_unknown_python_validator_leaves_no_native_validator() -> None:
    def check(value: int) -> int:
        return value

    class Checked(pydantic.BaseModel):
        n: int

        @pydantic.field_validator("n")
        @classmethod
        def _n(cls, value: int) -> int:
            return check(value)

    schema = Checked.__pydantic_core_schema__
    assert _codec._stored_validator(schema, {}, [Checked]) is None
    native = _codec._stored_validator(
        schema, {cast("object", Checked._n): _codec._inner}, [Checked]
    )
    assert native is not None
    assert same(native.validate_json('{"n": 3}'), Checked(n=3))
    assert Checked.__pydantic_complete__


def test_the_stored_message_validator_is_native() -> None:
    """Built as the copy, not the models' own validators (which pydantic-core would reuse)."""
    assert _codec._STORED is not None
    assert AgentMessage.__pydantic_complete__
    assert AgentId.__pydantic_complete__
    for changes in ({"sender": "a:1"}, {"priority": 7.0}, {"created_at": "2026-01-01T12:00:00"}):
        with pytest.raises(pydantic.ValidationError):  # the models' validators accept these
            _codec._STORED.validate_json(stored(**changes))
    data = stored()
    assert same(_codec._STORED.validate_json(data), AgentMessage.model_validate_json(data))


def test_trusted_delivery_is_model_construct() -> None:
    now = datetime.now(UTC)
    message = AgentMessage(sender=AgentId("a"), recipient=AgentId("b"))
    fields: dict[str, Any] = {
        "queue": AgentId("b"),
        "entry_id": "e1",
        "message": message,
        "attempt": 2,
        "max_attempts": 5,
        "receipt": "r",
        "enqueued_at": now,
        "visible_at": now + timedelta(seconds=30),
        "last_error": None,
    }
    built = trusted_delivery(**fields)
    assert same(built, Delivery.model_construct(**fields))
    assert same(built, Delivery(**fields))
    assert built.model_dump() == Delivery(**fields).model_dump()
    assert built.model_copy(update={"attempt": 5}).is_last_attempt
    with pytest.raises(pydantic.ValidationError):
        built.attempt = 3  # type: ignore[misc]  # frozen as any delivery


def test_loads_is_json_loads() -> None:
    text = '{"a": 1, "m": 5, "t": "abc", "e": 1764000000123.0, "l": null, "x": [true, "é"]}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)
    with pytest.raises(ValueError, match="line 1 column 2"):
        loads(b"{not json")
