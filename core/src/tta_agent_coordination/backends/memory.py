"""The in-memory driver: the embedded default, for unit tests, demos and single processes.

``memory://`` gives a private store; ``memory://NAME`` gives a store shared by every backend
connected to the same name in this process (so two "clients" can race on one queue in a
test). ``?clock=manual`` freezes the backend's clock, which then moves only through
``backend.clock.advance(seconds)``; the default system clock can be advanced too (an offset).

The driver keeps the whole contract: messages are stored serialised, every operation is atomic
(no ``await`` inside a state change), and waiting consumers are woken by events, not polling.
All use of one store must come from one event loop (thread).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

from .._validation import require_name
from ..errors import ValidationError
from ..settings import BackendOptions
from ._memory_breakers import MemoryBreakerStore
from ._memory_queue import MemoryQueueStore
from ._memory_registry import MemoryRegistryStore

__all__ = ["MemoryBackend", "MemoryClock"]


class MemoryClock:
    """The memory driver's clock (the ``clock_control`` capability).

    A system clock follows ``time.time()`` plus whatever :meth:`advance` added; a manual clock
    stands still between calls to :meth:`advance`, so tests of time are instant and exact.
    """

    def __init__(self, *, manual: bool = False, start: float | None = None) -> None:
        self.manual = manual
        self._base = time.time() if start is None else start
        self._offset = 0.0
        self._listeners: list[Callable[[], None]] = []

    def time(self) -> float:
        """Seconds since the epoch on this clock (synchronous, for the stores)."""
        if self.manual:
            return self._base + self._offset
        return time.time() + self._offset

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every :meth:`advance` (stores wake their waiters)."""
        self._listeners.append(listener)

    async def now(self) -> float:
        """Seconds since the epoch on this clock."""
        return self.time()

    async def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every waiter to re-check."""
        if not seconds >= 0:
            msg = f"the clock only moves forward: advance({seconds!r})"
            raise ValidationError(msg)
        self._offset += seconds
        for listener in list(self._listeners):
            listener()


@dataclass
class _Space:
    """The three stores of one namespace."""

    queue: MemoryQueueStore
    registry: MemoryRegistryStore
    breakers: MemoryBreakerStore

    def clear(self) -> None:
        self.queue.clear()
        self.registry.clear()
        self.breakers.clear()


@dataclass
class _World:
    """Everything behind one ``memory://NAME``: a clock and a store per namespace."""

    clock: MemoryClock
    spaces: dict[str, _Space] = field(default_factory=dict)
    users: int = 0

    def space(self, options: BackendOptions) -> _Space:
        space = self.spaces.get(options.namespace)
        if space is None:
            space = _Space(
                queue=MemoryQueueStore(self.clock, options),
                registry=MemoryRegistryStore(self.clock, options),
                breakers=MemoryBreakerStore(self.clock, options),
            )
            self.spaces[options.namespace] = space
        return space


_WORLDS: dict[str, _World] = {}

_CLOCKS = {"system": False, "manual": True}


class MemoryBackend:
    """The in-memory backend. Prefer ``connect("memory://")`` to building it directly."""

    def __init__(
        self,
        options: BackendOptions | None = None,
        *,
        name: str | None = None,
        clock: MemoryClock | None = None,
    ) -> None:
        self._options = options if options is not None else BackendOptions()
        self._name = name
        world = _WORLDS.get(name) if name is not None else None
        if world is None:
            world = _World(clock=clock if clock is not None else MemoryClock())
            if name is not None:
                _WORLDS[name] = world
        elif clock is not None and clock is not world.clock:
            msg = f"memory://{name} already exists with its own clock"
            raise ValidationError(msg)
        world.users += 1
        self._world = world
        self._space = world.space(self._options)
        self._closed = False

    @classmethod
    def from_url(cls, url: str, options: BackendOptions) -> MemoryBackend:
        """The factory the memory plugin names: ``memory://[NAME][?clock=manual|system]``."""
        parts = urlsplit(url)
        if parts.path not in ("", "/"):
            msg = f"memory URL {url!r} takes a name, not a path: memory://NAME"
            raise ValidationError(msg)
        name = parts.netloc or None
        if name is not None:
            require_name(name, "memory store name")
        extra = dict(options.extra)
        clock_kind = extra.pop("clock", None)
        if clock_kind is not None and clock_kind not in _CLOCKS:
            msg = f"memory clock must be 'system' or 'manual', not {clock_kind!r}"
            raise ValidationError(msg)
        if extra:
            msg = f"unknown memory:// options: {', '.join(sorted(extra))}"
            raise ValidationError(msg)
        existing = _WORLDS.get(name) if name is not None else None
        clock: MemoryClock | None = None
        if existing is not None:
            # Joining a named store takes its clock; naming the other kind is an error.
            if clock_kind is not None and existing.clock.manual != _CLOCKS[clock_kind]:
                kind = "manual" if existing.clock.manual else "system"
                msg = f"memory://{name} already exists with a {kind} clock"
                raise ValidationError(msg)
        elif clock_kind == "manual":
            clock = MemoryClock(manual=True)
        return cls(options.model_copy(update={"extra": {}}), name=name, clock=clock)

    @property
    def url(self) -> str:
        """The URL form of this backend."""
        base = f"memory://{self._name or ''}"
        return f"{base}?namespace={self._options.namespace}"

    @property
    def options(self) -> BackendOptions:
        """The namespace and queue defaults in force."""
        return self._options

    @property
    def capabilities(self) -> frozenset[str]:
        """The memory driver controls its clock; it has no cluster or TLS."""
        return frozenset({"clock_control"})

    @property
    def queue(self) -> MemoryQueueStore:
        """The queue store."""
        return self._space.queue

    @property
    def registry(self) -> MemoryRegistryStore:
        """The registry store."""
        return self._space.registry

    @property
    def breakers(self) -> MemoryBreakerStore:
        """The breaker store."""
        return self._space.breakers

    @property
    def clock(self) -> MemoryClock:
        """The clock hook (``clock_control``)."""
        return self._world.clock

    async def drop_namespace(self) -> None:
        """Forget everything in this backend's namespace."""
        self._space.clear()

    async def aclose(self) -> None:
        """Detach from the store; a named store is forgotten when its last user closes."""
        if self._closed:
            return
        self._closed = True
        self._world.users -= 1
        if self._name is not None and self._world.users == 0:
            _WORLDS.pop(self._name, None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
