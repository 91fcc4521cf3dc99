"""The conformance suite's pytest plugin, as a driver author meets it (pytester, in process)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import mutants
import pytest

from tta_agent_coordination.testing.conformance import override_reason

pytest_plugins = ["pytester"]

PYARGS = ("-p", "no:cacheprovider", "--pyargs", "tta_agent_coordination.testing")
ONE_CLASS = """
from tta_agent_coordination.testing.conformance import BackendConformance

class TestX(BackendConformance):
    url = {url!r}
"""
OVERRIDE = """
from tta_agent_coordination.testing.conformance import BackendConformance, override_reason

class TestX(BackendConformance):
    url = "memory://"
{decorator}
    async def test_stale_receipt_changes_nothing(self) -> None:
        pass
"""
NO_CLOCK = "noclock:// does not declare the clock_control capability"
#: The suite's tests about the clock hook itself: the only ones a backend without
#: ``clock_control`` skips (its tests of time run in scaled real time instead).
CLOCK_ONLY = ["test_clock_control_advance_wakes_a_waiting_reserve"]
#: Tests of time that must run, and pass, on such a backend (one per store, and a two-client one).
TIME_TESTS = [
    "test_delay_hides_an_entry_until_due",
    "test_reserved_entry_is_invisible_then_reclaimed_without_a_sweeper",
    "test_liveness_ends_after_the_ttl",
    "test_expired_once_across_two_clients",
    "test_lapsed_permits_free_their_slot_and_are_ignored",
    "test_half_open_permits_are_shared_by_two_clients",
]


@pytest.fixture(autouse=True)
def mutant_schemes() -> Iterator[None]:
    """``noclock://`` (a healthy backend without optional capabilities) is installed."""
    with mutants.installed():
        yield


def test_a_one_class_driver_file_passes_the_whole_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=ONE_CLASS.format(url="memory://"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK
    assert set(outcomes) == {"passed"}
    assert outcomes["passed"] > 100


def test_an_override_without_a_reason_fails_clearly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x=OVERRIDE.format(decorator=""))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "stale_receipt")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*test_stale_receipt_changes_nothing overrides the suite test "
            "tta_agent_coordination.testing.queue_contract.QueueContract"
            ".test_stale_receipt_changes_nothing without a stated reason: "
            "decorate it with @override_reason('why')*"
        ]
    )


def test_an_override_with_a_reason_runs(pytester: pytest.Pytester) -> None:
    decorator = '    @override_reason("our store cannot repeat an ack")'
    pytester.makepyfile(test_x=OVERRIDE.format(decorator=decorator))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-k", "stale_receipt")
    result.assert_outcomes(passed=1)


def test_an_override_reason_must_say_something() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        override_reason("  ")


def test_pyargs_without_a_backend_errors_loudly(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(*PYARGS)
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert set(outcomes) == {"errors"}, outcomes
    assert outcomes["errors"] > 100
    result.stdout.fnmatch_lines(
        ["*no backend to test: set url on the class or pass --tta-backend=URL*"]
    )


def test_the_header_names_the_backend(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(
        *PYARGS, "--tta-backend=memory://", "-k", "test_enqueue_then_reserve"
    )
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["tta-agent-coordination backend: memory://"])


def test_no_header_line_without_the_option(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_x="def test_nothing() -> None:\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*tta-agent-coordination backend*")


@pytest.mark.parametrize("how", ["pyargs", "one class"])
def test_capability_skips_are_listed_and_nothing_else_skips(
    pytester: pytest.Pytester, how: str
) -> None:
    # Without clock_control the tests of time run (scaled real time) and pass; only the tests
    # about the clock hook itself skip. The stateful test without clock_control is run by
    # tests/core/test_stateful.py, and the one-class file runs only a few tests of time besides
    # the clock-only ones: these runs sleep (about 10 s for the whole suite).
    if how == "pyargs":
        select = ("-k", "not test_stateful_contract", "-rsp")
        result = pytester.runpytest_inprocess(*PYARGS, "--tta-backend=noclock://", *select)
        running = TIME_TESTS
    else:
        running = TIME_TESTS[:2]
        select = ("-k", " or ".join([*CLOCK_ONLY, *running]), "-rsp")
        pytester.makepyfile(test_x=ONE_CLASS.format(url="noclock://"))
        result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *select)
    outcomes = result.parseoutcomes()
    assert result.ret == pytest.ExitCode.OK
    assert set(outcomes) == {"passed", "skipped", "deselected"}, outcomes
    skipped = outcomes["skipped"]
    assert skipped == len(CLOCK_ONLY)
    passed = [line for line in result.outlines if line.startswith("PASSED")]
    for name in running:
        assert any(line.endswith(f"::{name}") for line in passed), name
    # Every skip is a capability skip (the -rs lines name each reason) ...
    reasons = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(reasons) == len(CLOCK_ONLY)
    assert all(line.endswith(NO_CLOCK) for line in reasons), reasons
    # ... and the summary section lists them all, and nothing else.
    result.stdout.fnmatch_lines(
        [
            "*tta-agent-coordination: optional capabilities not tested*",
            f"{skipped:5d} skipped: {NO_CLOCK}",
        ]
    )
    start = next(
        i for i, line in enumerate(result.outlines) if "optional capabilities not tested" in line
    )
    section = result.outlines[start + 1 :]
    listed = [line for line in section if re.fullmatch(r"\s*\d+ skipped: .*", line)]
    assert listed == [f"{skipped:5d} skipped: {NO_CLOCK}"]


def test_no_capability_section_when_nothing_is_skipped(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_inprocess(
        *PYARGS, "--tta-backend=memory://", "-k", "test_delay_hides_an_entry_until_due"
    )
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*optional capabilities not tested*")
