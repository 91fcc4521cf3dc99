from __future__ import annotations

import inspect

import pytest

import tta_agent_coordination as tta
from tta_agent_coordination import errors


def test_every_error_descends_from_coordination_error() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, Exception) and not issubclass(obj, Warning)
    ]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, errors.CoordinationError), cls
        assert cls.__name__ in errors.__all__
        assert getattr(tta, cls.__name__) is cls


def test_every_error_is_drawn_in_the_module_docstring() -> None:
    doc = errors.__doc__ or ""
    for name in errors.__all__:
        assert name in doc, name


@pytest.mark.parametrize(
    ("cls", "builtin"),
    [
        (errors.ValidationError, ValueError),
        (errors.MessageTooLargeError, ValueError),
        (errors.BackendNotFoundError, LookupError),
        (errors.BackendUnavailableError, ConnectionError),
        (errors.PluginLoadError, ImportError),
        (errors.AgentNotFoundError, LookupError),
        (errors.RequestTimeoutError, TimeoutError),
        (errors.HandlerTimeoutError, TimeoutError),
    ],
)
def test_builtin_bases(cls: type[Exception], builtin: type[Exception]) -> None:
    assert issubclass(cls, builtin)


def test_errors_carry_their_facts() -> None:
    too_large = errors.MessageTooLargeError(2000, 1024)
    assert (too_large.size, too_large.limit) == (2000, 1024)
    assert "2000" in str(too_large)
    full = errors.QueueFullError("world_builder", 10)
    assert (full.queue, full.limit) == ("world_builder", 10)
    gap = errors.EventsGapError("42")
    assert gap.cursor == "42"
    open_ = errors.CircuitOpenError("llm", 1.5)
    assert (open_.name, open_.retry_after) == ("llm", 1.5)
    assert "1.500" in str(open_)
    retry = errors.RetryError("gave up", attempts=3)
    assert retry.attempts == 3


def test_warnings_tree() -> None:
    assert issubclass(errors.PluginLoadWarning, errors.CoordinationWarning)
    assert issubclass(errors.BackendConfigWarning, UserWarning)
