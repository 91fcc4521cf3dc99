"""The packaged suite, for ``pytest --pyargs tta_agent_coordination.testing --tta-backend=URL``."""

from __future__ import annotations

from typing import ClassVar

from .conformance import BackendConformance


class TestBackendConformance(BackendConformance):
    """Runs the whole suite against the URL given with ``--tta-backend``."""

    url: ClassVar[str] = ""
