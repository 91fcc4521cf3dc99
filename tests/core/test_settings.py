from __future__ import annotations

import pytest

from tta_agent_coordination import BackendOptions, ValidationError


def test_defaults_match_the_contract() -> None:
    options = BackendOptions()
    assert options.namespace == "tta"
    assert options.max_queue_length == 10_000
    assert options.max_attempts == 5
    assert options.max_message_bytes == 1024 * 1024
    assert options.dedup_window == 0
    assert options.dead_letter_max_age is None
    assert options.dead_letter_max_length is None


def test_from_url_reads_known_options_and_keeps_the_rest_for_the_driver() -> None:
    options = BackendOptions.from_url(
        "redis://h:1/0?namespace=app&max_queue_length=7&socket_timeout=2&dead_letter_max_age="
    )
    assert options.namespace == "app"
    assert options.max_queue_length == 7
    assert options.dead_letter_max_age is None
    assert options.extra == {"socket_timeout": "2"}


def test_keywords_override_the_query() -> None:
    options = BackendOptions.from_url(
        "memory://?namespace=a&max_attempts=2", {"namespace": "b", "flavour": 3}
    )
    assert options.namespace == "b"
    assert options.max_attempts == 2
    assert options.extra == {"flavour": "3"}


@pytest.mark.parametrize(
    "url",
    [
        "memory://?namespace=a:b",
        "memory://?namespace=",
        "memory://?namespace=a&namespace=b",
        "memory://?max_queue_length=0",
        "memory://?max_queue_length=lots",
        "memory://?dedup_window=-1",
    ],
)
def test_bad_options_are_rejected(url: str) -> None:
    with pytest.raises(ValidationError):
        BackendOptions.from_url(url)
