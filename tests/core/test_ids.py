from __future__ import annotations

import os
import re
import uuid

import pytest
from fork_helpers import made_in_a_forked_child

from tta_agent_coordination._ids import new_id, new_token


def test_ids_are_random_uuid4_hex_across_batches() -> None:
    ids = [new_id() for _ in range(300)]  # several batches made ahead
    assert len(set(ids)) == 300
    for made in ids:
        parsed = uuid.UUID(hex=made)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, made)
    # Every other digit stays random: all values turn up in every free position.
    for position in range(32):
        seen = {made[position] for made in ids}
        if position == 12:
            assert seen == {"4"}
        elif position == 16:
            assert seen == set("89ab")
        else:
            assert len(seen) > 8


def test_tokens_are_16_hex_digits_and_unique_across_batches() -> None:
    tokens = [new_token() for _ in range(300)]
    assert len(set(tokens)) == 300
    assert all(re.fullmatch(r"[0-9a-f]{16}", token) for token in tokens)
    # Every hex digit turns up in every position (the first of a batch included).
    for position in range(16):
        assert len({token[position] for token in tokens}) > 8


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform cannot fork")
def test_a_forked_child_never_repeats_its_parents_ids_or_tokens() -> None:
    new_id()  # the parent now holds both made ahead
    new_token()
    child = made_in_a_forked_child(
        lambda: [new_id() for _ in range(5)] + [new_token() for _ in range(5)]
    )
    parent = {new_id() for _ in range(5)} | {new_token() for _ in range(5)}
    assert len(child) == 10
    assert not child & parent
