"""Helpers shared by the coordinator tests: a metrics sink that can be awaited."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from tta_agent_coordination.metrics import Labels, RecordingMetrics


class WatchedMetrics(RecordingMetrics):
    """A recording sink whose reports wake a test waiting for a condition (no polling)."""

    def __init__(self) -> None:
        super().__init__()
        self._event: anyio.Event | None = None

    def _poke(self) -> None:
        if self._event is not None:
            self._event.set()
            self._event = None

    def increment(self, name: str, value: float = 1.0, labels: Labels | None = None) -> None:
        super().increment(name, value, labels)
        self._poke()

    def observe(self, name: str, value: float, labels: Labels | None = None) -> None:
        super().observe(name, value, labels)
        self._poke()

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until ``predicate()`` holds, re-checking after every report."""
        with anyio.fail_after(timeout):
            while not predicate():
                if self._event is None:
                    self._event = anyio.Event()
                await self._event.wait()
