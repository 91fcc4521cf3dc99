"""The memory driver's registry store (work in progress: see issue 4)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import BackendOptions
    from .memory import MemoryClock

__all__ = ["MemoryRegistryStore"]


class MemoryRegistryStore:
    """In-memory registry store."""

    def __init__(self, clock: MemoryClock, options: BackendOptions) -> None:
        self._clock = clock
        self._options = options

    def clear(self) -> None:
        """Forget everything (drop_namespace)."""
