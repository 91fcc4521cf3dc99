"""The fixtures every contract test class shares: a fresh, isolated backend per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest

from ..plugins import connect
from ..protocols import Backend, ClockControl
from .plugin import BACKEND_OPTION

__all__ = ["BackendTestBase", "advance"]


class BackendTestBase:
    """Base of the contract test classes.

    Subclass it (or a contract class) and set ``url``. Each test gets its own namespace, which
    is dropped afterwards.
    """

    #: The backend under test; empty takes the ``--tta-backend`` command-line option.
    url: ClassVar[str] = "memory://"
    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.anyio]

    @pytest.fixture
    def anyio_backend(self) -> str:
        """Async tests run on asyncio (every driver runs there)."""
        return "asyncio"

    #: The URL in force for the running test (set by the ``backend_url`` fixture).
    target_url: str = ""

    @pytest.fixture(autouse=True)
    def backend_url(self, request: pytest.FixtureRequest) -> str:
        """The URL under test: the class's ``url``, else ``--tta-backend``."""
        url: object = self.url or request.config.getoption(BACKEND_OPTION, default=None)
        if not isinstance(url, str) or not url:
            pytest.fail(f"no backend to test: set url on the class or pass {BACKEND_OPTION}=URL")
        self.target_url = url
        return url

    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[Backend]:
        """A connected backend in a namespace of its own, dropped after the test."""
        namespace = f"t{uuid.uuid4().hex[:16]}"
        async with connect(backend_url, namespace=namespace) as backend:
            try:
                yield backend
            finally:
                await backend.drop_namespace()

    @pytest.fixture
    def clock(self, backend: Backend) -> ClockControl:
        """The backend's clock hook; tests of time skip only if the driver declares none."""
        if "clock_control" not in backend.capabilities or backend.clock is None:
            pytest.skip(f"{self.target_url} does not declare the clock_control capability")
        return backend.clock


async def advance(backend: Backend, seconds: float) -> None:
    """Move ``backend``'s clock forward (it must have ``clock_control``)."""
    clock = backend.clock
    assert clock is not None, "advance() needs a backend with the clock_control capability"
    await clock.advance(seconds)
