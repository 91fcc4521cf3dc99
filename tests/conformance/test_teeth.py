"""The conformance suite has teeth: it fails every deliberately broken driver of ``mutants``.

Each test runs the packaged suite exactly as a driver author would (``pytest --pyargs
tta_agent_coordination.testing --tta-backend=URL``, no selection), in process with pytester,
and checks the outcome: every mutant fails at least one suite test, including the test written
for the clause it breaks; the healthy drivers pass all of them. The kill table (mutant -> the
suite tests that failed) is printed at the end of the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import mutants
import pytest
from mutants import CONTROL, MUTANTS, MutantBackend

pytest_plugins = ["pytester"]

# The stateful test is left out here: it has teeth of its own (tests/core/test_stateful.py)
# and running it for every mutant would multiply this file's time.
SUITE = (
    "-p",
    "no:cacheprovider",
    "--pyargs",
    "tta_agent_coordination.testing",
    "-k",
    "not test_stateful_contract",
)
RACE_RUNS = 5

#: mutant scheme -> names of the suite tests that failed (per run for the race mutant).
KILLS: dict[str, list[list[str]]] = {}


class SuiteRun:
    """The outcome of one run of the packaged suite."""

    def __init__(self, pytester: pytest.Pytester, url: str) -> None:
        recorder = pytester.inline_run(*SUITE, f"--tta-backend={url}")
        passed, skipped, failed = recorder.listoutcomes()
        self.passed = [r.nodeid for r in passed]
        self.skipped = [r.nodeid for r in skipped]
        self.failed = sorted({r.nodeid.rpartition("::")[2] for r in failed})
        self.total = len(passed) + len(skipped) + len(failed)


class KillTable:
    """A plugin that prints the kill table in the terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """One line per mutant: failing suite tests per run, and their names."""
        if not KILLS:
            return
        terminalreporter.section("conformance suite kill table (mutant: failing suite tests)")
        for scheme, runs in KILLS.items():
            counts = "/".join(str(len(failed)) for failed in runs)
            names = ", ".join(runs[0]) or "SURVIVED"
            terminalreporter.write_line(f"{scheme:30s} {counts:>10s}  {names}")


@pytest.fixture(scope="module", autouse=True)
def mutant_schemes(request: pytest.FixtureRequest) -> Iterator[None]:
    """The mutants' plugin, registered for this module; the kill table printed at the end."""
    plugins = request.config.pluginmanager
    if not plugins.has_plugin("tta-kill-table"):
        plugins.register(KillTable(), name="tta-kill-table")
    with mutants.installed():
        yield


@pytest.mark.parametrize("url", ["memory://", f"{CONTROL.scheme}://"])
def test_healthy_drivers_pass_the_whole_suite(pytester: pytest.Pytester, url: str) -> None:
    run = SuiteRun(pytester, url)
    assert run.failed == []
    assert run.skipped == []
    assert len(run.passed) == run.total > 100


#: Mutants the suite does not catch yet: each is a gap in the suite, to close there.
#: Mutants the suite is known not to catch, with the reason (none at the moment).
GAPS: dict[str, str] = {}


def _cases() -> list[object]:
    return [
        pytest.param(m, id=m.scheme, marks=[pytest.mark.xfail(reason=GAPS[m.scheme])])
        if m.scheme in GAPS
        else pytest.param(m, id=m.scheme)
        for m in MUTANTS
        if m.scheme != "mutant-cap-race"
    ]


@pytest.mark.parametrize("mutant", _cases())
def test_the_suite_catches(pytester: pytest.Pytester, mutant: type[MutantBackend]) -> None:
    run = SuiteRun(pytester, f"{mutant.scheme}://")
    KILLS[mutant.scheme] = [run.failed]
    assert run.failed, f"{mutant.scheme} survived the conformance suite: {mutant.breaks}"
    assert mutant.caught_by in run.failed, run.failed


def test_the_suite_catches_the_cap_race_on_every_run(pytester: pytest.Pytester) -> None:
    (mutant,) = (m for m in MUTANTS if m.scheme == "mutant-cap-race")
    runs = [SuiteRun(pytester, f"{mutant.scheme}://").failed for _ in range(RACE_RUNS)]
    KILLS[mutant.scheme] = runs
    for failed in runs:
        assert mutant.caught_by in failed, runs
