"""The fixtures every contract test class shares: a fresh, isolated backend per test, and time.

Time. Every test of time takes the ``timeline`` fixture (a :class:`Timeline`) and passes every
duration it gives the backend through :meth:`Timeline.d`, and moves time with
:meth:`Timeline.advance`:

* on a backend that declares ``clock_control``, durations are used as written and ``advance``
  moves the backend's clock at once (instant and exact);
* on a backend without it, time is real but scaled: ``d(10)`` is ``10 * time_scale`` real
  seconds (0.2 s with the default :data:`SCALE`), ``advance(11)`` sleeps ``11 * time_scale``,
  and durations the backend reports (``retry_after``) come back through :meth:`Timeline.seconds`.

The tests are written in "test seconds" either way: deadlines in units of 10, checks after a
deadline at least 1 past it (a real sleep never ends early, so that direction has no race), and
checks before a deadline at least 8 before it (that direction races the machine: 8 test
seconds are 160 ms of real time, against a few milliseconds of operations; ``retry_after``
ranges keep 5). They assert order and counts, never latency. A driver whose operations take
longer (a remote service) raises ``time_scale`` on its test class. The few tests that are
about the controllable clock itself take the ``clock`` fixture, which skips (naming the
capability) when the backend has none.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import ClassVar

import anyio
import pytest

from ..plugins import connect
from ..protocols import Backend, ClockControl
from .plugin import BACKEND_OPTION

__all__ = ["SCALE", "BackendTestBase", "Timeline", "advance", "timeline_for"]

#: Real seconds per test second on a backend without ``clock_control``.
SCALE = 0.02


@dataclass(frozen=True)
class Timeline:
    """How a test spends time on one backend (see the module docstring).

    ``scale`` is 1 on a backend with ``clock_control`` (whose clock ``advance`` moves) and the
    real seconds per test second otherwise.
    """

    backend: Backend
    scale: float
    controlled: bool

    def d(self, seconds: float) -> float:
        """The duration to pass to the backend for ``seconds`` test seconds."""
        return seconds * self.scale

    def seconds(self, duration: float) -> float:
        """A duration the backend reported, in test seconds."""
        return duration / self.scale

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` test seconds pass: move the backend's clock, or sleep, scaled."""
        clock = self.backend.clock
        if self.controlled and clock is not None:
            await clock.advance(seconds)
        else:
            await anyio.sleep(seconds * self.scale)


def timeline_for(backend: Backend, scale: float = SCALE) -> Timeline:
    """The :class:`Timeline` of ``backend``: its clock if it has ``clock_control``, else scaled."""
    controlled = "clock_control" in backend.capabilities and backend.clock is not None
    return Timeline(backend, 1.0 if controlled else scale, controlled)


class BackendTestBase:
    """Base of the contract test classes.

    Subclass it (or a contract class) and set ``url``. Each test gets its own namespace, which
    is dropped afterwards.
    """

    #: The backend under test; empty takes the ``--tta-backend`` command-line option.
    url: ClassVar[str] = "memory://"
    #: Real seconds per test second when the backend has no ``clock_control``.
    time_scale: ClassVar[float] = SCALE
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

    def timeline_for(self, backend: Backend) -> Timeline:
        """The :class:`Timeline` of another backend (a second client, other options)."""
        return timeline_for(backend, self.time_scale)

    @pytest.fixture
    def timeline(self, backend: Backend) -> Timeline:
        """The test's time source on ``backend``: its clock, or scaled real time."""
        return self.timeline_for(backend)

    @pytest.fixture
    def clock(self, backend: Backend) -> ClockControl:
        """The backend's clock hook, for tests about it; they skip if the driver has none."""
        if "clock_control" not in backend.capabilities or backend.clock is None:
            pytest.skip(f"{self.target_url} does not declare the clock_control capability")
        return backend.clock


async def advance(backend: Backend, seconds: float) -> None:
    """Move ``backend``'s clock forward (it must have ``clock_control``)."""
    clock = backend.clock
    assert clock is not None, "advance() needs a backend with the clock_control capability"
    await clock.advance(seconds)
