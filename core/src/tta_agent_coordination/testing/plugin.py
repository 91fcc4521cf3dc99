"""The pytest plugin of the conformance suite, loaded through the core's ``pytest11`` entry point.

It only adds the ``--tta-backend=URL`` option and a report header, and imports nothing but
pytest, so it costs other projects' test runs nothing. Run the packaged suite against a driver
with ``pytest --pyargs tta_agent_coordination.testing --tta-backend=acme://...``.
"""

from __future__ import annotations

import pytest

__all__ = ["BACKEND_OPTION"]

BACKEND_OPTION = "--tta-backend"


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
