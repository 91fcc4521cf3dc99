"""The pytest plugin of the conformance suite, loaded through the core's ``pytest11`` entry point.

It adds the ``--tta-backend=URL`` option, names the backend in the report header, fails a suite
test overridden without a stated reason, and lists the capability skips at the end. It imports
nothing but pytest, so it costs other projects' test runs nothing. Run the packaged suite
against a driver with ``pytest --pyargs tta_agent_coordination.testing --tta-backend=URL``.
"""

from __future__ import annotations

import inspect
from typing import cast

import pytest

__all__ = ["BACKEND_OPTION", "CAPABILITY_SKIP"]

BACKEND_OPTION = "--tta-backend"
#: Every capability skip's reason contains this, so the summary can list them.
CAPABILITY_SKIP = "does not declare the"
_SUITE_MODULE = "tta_agent_coordination.testing."
_OVERRIDE_ATTR = "__tta_override_reason__"
_UNEXPLAINED = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--tta-backend``."""
    group = parser.getgroup("tta_agent_coordination", "tta-agent-coordination conformance suite")
    group.addoption(
        BACKEND_OPTION,
        action="store",
        default=None,
        metavar="URL",
        help="backend URL for conformance classes that set no url of their own",
    )


def pytest_report_header(config: pytest.Config) -> str | None:
    """Name the backend under test in the header."""
    url = config.getoption(BACKEND_OPTION)
    return None if url is None else f"tta-agent-coordination backend: {url}"


def _unexplained_override(cls: type, name: str) -> str | None:
    """If ``cls.name`` overrides a suite test without a reason, say which suite class."""
    defining = next((k for k in cls.__mro__ if name in vars(k)), None)
    if defining is None or defining.__module__.startswith(_SUITE_MODULE):
        return None
    for base in cls.__mro__[cls.__mro__.index(defining) + 1 :]:
        if base.__module__.startswith(_SUITE_MODULE) and name in vars(base):
            fn = inspect.unwrap(vars(defining)[name])
            if getattr(fn, _OVERRIDE_ATTR, None):
                return None
            return f"{base.__module__}.{base.__qualname__}.{name}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Find suite tests overridden without ``@override_reason``."""
    for item in items:
        cls = getattr(item, "cls", None)
        name = getattr(item, "originalname", None)
        if cls is None or name is None:
            continue
        overridden = _unexplained_override(cls, name)
        if overridden is not None:
            item.stash[_UNEXPLAINED] = overridden


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail an unexplained override before it runs."""
    overridden = item.stash.get(_UNEXPLAINED, None)
    if overridden is not None:
        pytest.fail(
            f"{item.name} overrides the suite test {overridden} without a stated reason: "
            "decorate it with @override_reason('why')",
            pytrace=False,
        )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the tests skipped because the backend lacks an optional capability."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr: object = getattr(report, "longrepr", None)
        if not isinstance(longrepr, tuple):
            continue
        text = str(cast("tuple[object, object, object]", longrepr)[2])
        if CAPABILITY_SKIP in text:
            reason = text.removeprefix("Skipped: ")
            reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("tta-agent-coordination: optional capabilities not tested")
        for reason, count in sorted(reasons.items()):
            terminalreporter.write_line(f"{count:5d} skipped: {reason}")
