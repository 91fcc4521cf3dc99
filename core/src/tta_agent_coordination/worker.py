"""Run one agent as a worker: register it, heartbeat, serve its queues, stop cleanly on signals.

This is what ``tta-coord worker`` runs, usable without the command line::

    from tta_agent_coordination.worker import run_worker

    outcome = await run_worker("redis://localhost/0", "app.tasks:handle", "summariser:s1",
                               concurrency=4)

or, with more control (no signal handling unless asked, stop it from code)::

    async with connect(url) as backend:
        worker = Worker(backend, handle, AgentId("summariser", "s1"), concurrency=4)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            ...
            worker.stop()  # or worker.abort()

What a worker does, in order:

1. Registers ``agent_id`` in the registry (with its capabilities and metadata ``host``,
   ``pid`` and ``handler``) and heartbeats every ``heartbeat_interval`` (default ``ttl / 3``),
   reporting its load (running handlers / ``concurrency``) whenever that changed.
2. Serves the agent's own queue and its type's shared queue (``AgentId(type)``, where
   ``send(AgentId(type))`` and ``route(..., shared=True)`` deliver) with
   :meth:`MessageCoordinator.serve`: at most ``concurrency`` handlers at once, acked on
   success, nacked or dead-lettered per the retry policy on failure.
3. :meth:`Worker.stop` (the first SIGTERM or SIGINT when ``signals`` are given) stops it
   gracefully: it reports itself unavailable (capability routing stops choosing it), stops
   reserving, lets running handlers finish within ``grace`` seconds (then cancels them and
   releases their messages), releases reservations not yet started, and deregisters.
4. :meth:`Worker.abort` (the second signal) stops at once: running handlers are cancelled and
   nothing the worker holds is settled or released, so those messages become due again when
   their visibility timeout ends, with the attempt counted (as after ``kill -9``). It still
   deregisters (one call, bounded).
5. If its registration is lost (another process registered the same id with ``replace``, or
   the registry no longer knows its session), it stops gracefully too, with reason ``lost``:
   two processes never serve as one agent.

Capabilities come from the code and from the caller: the handler's ``capabilities``
attribute if it has one, otherwise the ``CAPABILITIES`` of the handler's module; then the
capabilities given by the caller (``--capability``) are added, a name given there replacing
the code's capability of that name. Each is a :class:`Capability` or a string
``NAME[@VERSION][:TAG,TAG...]`` (see :func:`parse_capability`).

An agent id without an instance gets one, ``<host>-<pid>`` (:func:`default_instance`): a
worker always has its own queue, which is where capability routing sends by default.

Metrics: everything :class:`MessageCoordinator` and :class:`AgentRegistry` report, plus the
gauge ``tta_worker_handlers_running`` (labels ``agent``).
"""

from __future__ import annotations

import enum
import importlib
import inspect
import logging
import os
import re
import signal
import socket
import sys
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Final, cast

import anyio
from pydantic import JsonValue
from pydantic import ValidationError as PydanticValidationError

from . import checks
from .coordinator import Handler, MessageCoordinator, Middleware
from .errors import CoordinationError, ValidationError
from .metrics import NOOP_METRICS, MetricsSink
from .models import AgentId, Capability, Delivery
from .plugins import connect
from .registry import AgentRegistry, Registration
from .retry import RetryPolicy

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from .protocols import Backend

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_SIGNALS",
    "WORKER_HANDLERS_RUNNING",
    "ImportedHandler",
    "StopReason",
    "Worker",
    "WorkerOutcome",
    "declared_capabilities",
    "default_instance",
    "import_handler",
    "parse_capability",
    "run_worker",
]

logger = logging.getLogger(__name__)

#: Seconds running handlers get to finish after the first signal.
DEFAULT_GRACE: Final = 10.0
#: The signals :func:`run_worker` handles: the first stops gracefully, the second at once.
DEFAULT_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)
#: Gauge: handlers running now (labels ``agent``).
WORKER_HANDLERS_RUNNING: Final = "tta_worker_handlers_running"

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_SPEC: Final = re.compile(rf"(?P<module>{_DOTTED}):(?P<attr>{_DOTTED})")
_CAPABILITY: Final = re.compile(r"(?P<name>[^@:]+)(?:@(?P<version>[^:]+))?(?::(?P<tags>.*))?")
_CAPABILITY_FORM: Final = "NAME[@VERSION][:TAG,TAG...]"


# ---------------------------------------------------------------------------------------------
# Loading the handler and its capabilities
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedHandler:
    """A handler found by :func:`import_handler`.

    Attributes:
        spec: The ``module:attribute`` it was imported from.
        handler: The async callable.
        capabilities: The capabilities its code declares (see the module docstring).
    """

    spec: str
    handler: Handler
    capabilities: tuple[Capability, ...]


def parse_capability(text: str) -> Capability:
    """Read ``NAME[@VERSION][:TAG,TAG...]``, e.g. ``summarise@1.2:en,fr``, as a :class:`Capability`.

    Raises:
        ValidationError: Not of that form, or a bad name, version or tag.
    """
    match = _CAPABILITY.fullmatch(text)
    if match is None:
        msg = f"{text!r} is not a capability: use {_CAPABILITY_FORM}"
        raise ValidationError(msg)
    tags = [t for t in (match["tags"] or "").split(",") if t]
    try:
        return Capability(match["name"], match["version"] or "0", tags)
    except ValidationError as exc:
        cause = exc.__cause__
        reason = (
            "; ".join(str(e["msg"]) for e in cause.errors())
            if isinstance(cause, PydanticValidationError)
            else _first_line(exc)
        )
        msg = f"{text!r} is not a capability ({_CAPABILITY_FORM}): {reason}"
        raise ValidationError(msg) from exc


def _capabilities(value: object, where: str) -> tuple[Capability, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        msg = f"{where} must be a list of Capability objects or strings, not {value!r}"
        raise ValidationError(msg)
    found: list[Capability] = []
    for item in value:  # pyright: ignore[reportUnknownVariableType]  # checked below
        if isinstance(item, Capability):
            found.append(item)
        elif isinstance(item, str):
            found.append(parse_capability(item))
        else:
            msg = f"{where} holds {item!r}: neither a Capability nor a string"
            raise ValidationError(msg)
    return tuple(found)


def _is_async_callable(value: object) -> bool:
    if inspect.iscoroutinefunction(value):
        return True
    call = getattr(type(value), "__call__", None)  # noqa: B004  # a class's own __call__
    return not inspect.isclass(value) and inspect.iscoroutinefunction(call)


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(f"{exc.name}.")):
            msg = (
                f"no module named {exc.name!r} (looked in the current directory and sys.path;"
                " add a directory with --import-path)"
            )
            raise ValidationError(msg) from exc
        raise ValidationError(_import_failure(name, exc)) from exc
    except Exception as exc:  # the user's module failed: say where, one line
        raise ValidationError(_import_failure(name, exc)) from exc


def _import_failure(name: str, exc: Exception) -> str:
    where = ""
    frames = traceback.extract_tb(exc.__traceback__)
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError names its place itself
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno})"
    return f"importing {name!r} failed: {type(exc).__name__}: {_first_line(exc)}{where}"


def import_handler(spec: str, *, import_paths: Sequence[str | Path] = ()) -> ImportedHandler:
    """Import the handler named by ``spec`` (``package.module:attribute``).

    The attribute may be dotted (``module:obj.method``). Each of ``import_paths`` is put at
    the front of ``sys.path`` first (in the order given), unless already there.

    Raises:
        ValidationError: A malformed spec, a module that is missing or fails to import (the
            message names the error and where it happened), a missing attribute, something
            that is not an async callable, or malformed declared capabilities.
    """
    match = _SPEC.fullmatch(spec)
    if match is None:
        msg = f"{spec!r} is not a handler: use package.module:function"
        raise ValidationError(msg)
    for path in reversed([str(p) for p in import_paths]):
        if path not in sys.path:
            sys.path.insert(0, path)
    module = _import_module(match["module"])
    target: object = module
    for part in match["attr"].split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            msg = f"{match['module']!r} has no attribute {match['attr']!r}"
            raise ValidationError(msg) from None
    if not _is_async_callable(target):
        msg = f"{spec} is not an async callable: it must be `async def handler(delivery)`"
        raise ValidationError(msg)
    handler = cast("Handler", target)  # an async callable: checked just above
    return ImportedHandler(spec, handler, declared_capabilities(handler, module))


def declared_capabilities(
    handler: Handler, module: ModuleType | None = None
) -> tuple[Capability, ...]:
    """The capabilities a handler's code declares.

    The handler's ``capabilities`` attribute if it has one, otherwise the ``CAPABILITIES`` of
    ``module`` (default: the module the handler was defined in), otherwise none. Each item is a
    :class:`Capability` or a ``NAME[@VERSION][:TAG,TAG...]`` string.

    Raises:
        ValidationError: The declaration is not a list of those.
    """
    declared: object = getattr(handler, "capabilities", None)
    if declared is not None:
        return _capabilities(declared, f"{_describe(handler)}.capabilities")
    if module is None:
        module = sys.modules.get(getattr(handler, "__module__", None) or "")
    declared = getattr(module, "CAPABILITIES", ())
    return _capabilities(declared, f"{getattr(module, '__name__', '?')}.CAPABILITIES")


def default_instance() -> str:
    """The instance a worker gets when its agent id has none: ``<host>-<pid>``."""
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()).lstrip("_.-")[:100]
    return f"{host}-{os.getpid()}" if host else f"pid-{os.getpid()}"


def _merge(code: Sequence[Capability], given: Sequence[Capability]) -> tuple[Capability, ...]:
    names = {c.name for c in given}
    return (*(c for c in code if c.name not in names), *given)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _describe(handler: Handler) -> str:
    module = getattr(handler, "__module__", None) or "?"
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    return f"{module}:{name}"


# ---------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------


class StopReason(enum.StrEnum):
    """Why a worker stopped."""

    #: :meth:`Worker.stop` or the first signal: graceful.
    STOPPED = "stopped"
    #: :meth:`Worker.abort` or the second signal: at once.
    ABORTED = "aborted"
    #: The registration was replaced or is gone: graceful.
    LOST = "lost"


@dataclass(frozen=True)
class WorkerOutcome:
    """How a worker run ended.

    Attributes:
        reason: Why it stopped.
        signal: The signal that stopped it (the second one for an abort), if any.
        succeeded: Handler runs that returned.
        failed: Handler runs that raised (nacked, dead-lettered or released by the loop).
        cancelled: Handler runs cancelled (past the grace period, or by an abort).
    """

    reason: StopReason
    signal: signal.Signals | None
    succeeded: int
    failed: int
    cancelled: int

    @property
    def handled(self) -> int:
        """Handler runs that ended, in any way."""
        return self.succeeded + self.failed + self.cancelled


class Worker:
    """One agent served by one process: register, heartbeat, serve, stop.

    See the module docstring for what it does. A ``Worker`` runs once.

    Args:
        backend: A connected backend.
        handler: ``async def handler(delivery) -> object``.
        agent_id: The agent (an id without instance gets :func:`default_instance`).
        concurrency: Handlers running at once, across its two queues.
        capabilities: What the registry says it can do.
        metadata: Extra registry metadata (``host``, ``pid`` and ``handler`` are added).
        grace: Seconds running handlers get to finish after :meth:`stop`.
        visibility_timeout: Seconds each reservation lasts (extended while a handler runs).
        handler_timeout: Seconds before a handler is cancelled and counted failed (``None``:
            no limit).
        ttl: Seconds the registration lives without a heartbeat.
        heartbeat_interval: Seconds between heartbeats (``ttl / 3`` when ``None``), shorter
            than ``ttl``.
        also_shared: Also serve the type's shared queue.
        replace: Take over a live registration of the same id (the other process's next
            heartbeat finds it lost, and a worker stops then).
        retry_policy: Nack delays and when to dead-letter (``RetryPolicy()`` when ``None``).
        middleware: Hooks around sends and handler runs, outermost first.
        metrics: Where the coordinator, the registry and the worker report.

    Raises:
        ValidationError: A bad argument.
    """

    def __init__(
        self,
        backend: Backend,
        handler: Handler,
        agent_id: AgentId,
        *,
        concurrency: int = 1,
        capabilities: Sequence[Capability] = (),
        metadata: Mapping[str, JsonValue] | None = None,
        grace: float = DEFAULT_GRACE,
        visibility_timeout: float = 30.0,
        handler_timeout: float | None = None,
        ttl: float = 30.0,
        heartbeat_interval: float | None = None,
        also_shared: bool = True,
        replace: bool = False,
        retry_policy: RetryPolicy | None = None,
        middleware: Sequence[Middleware] = (),
        metrics: MetricsSink = NOOP_METRICS,
    ) -> None:
        self._concurrency = checks.integer(concurrency, "concurrency", 1)
        self._grace = checks.duration(grace, "grace")
        self._visibility_timeout = checks.duration(
            visibility_timeout, "visibility_timeout", positive=True
        )
        self._handler_timeout = (
            None
            if handler_timeout is None
            else checks.duration(handler_timeout, "handler_timeout", positive=True)
        )
        self._ttl = checks.duration(ttl, "ttl", positive=True)
        self._interval = checks.duration(
            self._ttl / 3 if heartbeat_interval is None else heartbeat_interval,
            "heartbeat_interval",
            positive=True,
        )
        if self._interval >= self._ttl:
            msg = (
                f"heartbeat_interval ({self._interval:g}s) must be shorter than ttl"
                f" ({self._ttl:g}s), or the registration expires between heartbeats"
            )
            raise ValidationError(msg)
        self._backend = backend
        self._handler = handler
        checks.agent_id(agent_id, "agent_id")
        if agent_id.instance is None:
            agent_id = AgentId(agent_id.type, default_instance())
        self._agent_id = agent_id
        self._capabilities = tuple(capabilities)
        self._metadata: dict[str, JsonValue] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "handler": _describe(handler),
            **(metadata or {}),
        }
        self._also_shared = also_shared
        self._replace = replace
        self._policy = retry_policy
        self._middleware = tuple(middleware)
        self._metrics = metrics
        self._stop = anyio.Event()
        self._abort = anyio.Event()
        self._reason = StopReason.STOPPED
        self._signal: signal.Signals | None = None
        self._started = False
        self._running = 0
        self._succeeded = 0
        self._failed = 0
        self._cancelled = 0

    # -- what it is -------------------------------------------------------------------------

    @property
    def agent_id(self) -> AgentId:
        """The agent served (always with an instance)."""
        return self._agent_id

    @property
    def queues(self) -> tuple[AgentId, ...]:
        """The queues it serves: its own and (with ``also_shared``) its type's shared one."""
        return (self._agent_id, self._agent_id.shared) if self._also_shared else (self._agent_id,)

    @property
    def capabilities(self) -> tuple[Capability, ...]:
        """What it registers."""
        return self._capabilities

    @property
    def running(self) -> int:
        """Handlers running now."""
        return self._running

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` or :meth:`abort` was called."""
        return self._stop.is_set()

    # -- stopping ---------------------------------------------------------------------------

    def stop(self, signum: int | None = None) -> None:
        """Stop gracefully (see the module docstring); a no-op once stopping.

        Call it from the event loop's thread (a signal receiver, a task).
        """
        if self._stop.is_set():
            return
        self._signal = None if signum is None else signal.Signals(signum)
        logger.warning(
            "worker %s stopping%s: %d running handler(s) get up to %gs to finish%s",
            self._agent_id,
            "" if signum is None else f" on {signal.Signals(signum).name}",
            self._running,
            self._grace,
            "" if signum is None else "; signal again to stop at once",
        )
        self._stop.set()

    def abort(self, signum: int | None = None) -> None:
        """Stop at once (see the module docstring); a no-op once aborting."""
        if self._abort.is_set():
            return
        self._reason = StopReason.ABORTED
        self._signal = None if signum is None else signal.Signals(signum)
        logger.warning(
            "worker %s stopping at once%s: %d running handler(s) cancelled; their messages"
            " are due again when their visibility timeout ends",
            self._agent_id,
            "" if signum is None else f" on a second {signal.Signals(signum).name}",
            self._running,
        )
        self._stop.set()
        self._abort.set()

    # -- running ----------------------------------------------------------------------------

    async def run(
        self,
        *,
        signals: Iterable[int] = (),
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> WorkerOutcome:
        """Register, serve until stopped, deregister; return how it ended.

        Args:
            signals: Signals to handle while it runs (main thread only): the first received
                calls :meth:`stop`, any later one :meth:`abort`. ``()`` handles none.
            task_status: For ``TaskGroup.start``: started once it serves.

        Raises:
            AgentConflictError: The id is live under another session (and not ``replace``).
            BackendUnavailableError: The backend is unreachable (while registering).
            RuntimeError: The worker ran before.
        """
        if self._started:
            msg = "a Worker runs once: make a new one"
            raise RuntimeError(msg)
        self._started = True
        registry = AgentRegistry(self._backend, metrics=self._metrics)
        coordinator = MessageCoordinator(
            self._backend,
            retry_policy=self._policy,
            metrics=self._metrics,
            middleware=self._middleware,
            registry=registry,
            agent_id=self._agent_id,
        )
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            try:
                if signals:
                    await tg.start(self._watch_signals, tuple(map(signal.Signals, signals)))
                async with registry.registered(
                    self._agent_id,
                    capabilities=self._capabilities,
                    metadata=self._metadata,
                    ttl=self._ttl,
                    heartbeat_interval=self._interval,
                    replace=self._replace,
                ) as registration:
                    watcher = anyio.CancelScope()
                    tg.start_soon(self._watch_registration, registration, watcher)
                    await coordinator.serve(
                        self._agent_id,
                        self._run_handler,
                        concurrency=self._concurrency,
                        handler_timeout=self._handler_timeout,
                        visibility_timeout=self._visibility_timeout,
                        grace=self._grace,
                        also_shared=self._also_shared,
                        stop=self._stop,
                        abort=self._abort,
                        task_status=_Announce(self, task_status),
                    )
                    watcher.cancel()  # serving ended: deregistering is next
            except BaseException as exc:  # noqa: BLE001  # re-raised below, unwrapped
                failure = exc
            finally:
                tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        outcome = WorkerOutcome(
            self._reason, self._signal, self._succeeded, self._failed, self._cancelled
        )
        logger.info(
            "worker %s stopped (%s): %d handled, %d succeeded, %d failed, %d cancelled",
            self._agent_id,
            outcome.reason,
            outcome.handled,
            outcome.succeeded,
            outcome.failed,
            outcome.cancelled,
        )
        return outcome

    def _announce(self) -> None:
        logger.info(
            "worker %s ready: serving %s with concurrency %d; handler %s; capabilities: %s",
            self._agent_id,
            " and ".join(str(q) for q in self.queues),
            self._concurrency,
            self._metadata["handler"],
            ", ".join(f"{c.name} {c.version}" for c in self._capabilities) or "none",
        )

    async def _run_handler(self, delivery: Delivery) -> None:
        self._set_running(+1)
        try:
            await self._handler(delivery)
        except anyio.get_cancelled_exc_class():
            self._cancelled += 1
            raise
        except Exception:
            self._failed += 1
            raise
        else:
            self._succeeded += 1
        finally:
            self._set_running(-1)

    def _set_running(self, change: int) -> None:
        self._running += change
        self._metrics.gauge(WORKER_HANDLERS_RUNNING, self._running, {"agent": str(self._agent_id)})

    async def _watch_signals(
        self, signals: tuple[signal.Signals, ...], *, task_status: TaskStatus[None]
    ) -> None:
        with anyio.open_signal_receiver(*signals) as received:
            task_status.started()
            async for signum in received:
                if self._stop.is_set():
                    self.abort(signum)
                else:
                    self.stop(signum)

    async def _watch_registration(
        self, registration: Registration, scope: anyio.CancelScope
    ) -> None:
        with scope:
            await self._watch(registration)

    async def _watch(self, registration: Registration) -> None:
        """Report load changes with heartbeats; stop when the registration is lost."""
        reported = registration.load
        while True:
            with anyio.move_on_after(self._interval):
                await self._stop.wait()
            if registration.lost is not None:
                logger.error(  # the error is the news, not a traceback
                    "worker %s lost its registration, stopping: %s",
                    self._agent_id,
                    registration.lost,
                )
                self._reason = StopReason.LOST
                self.stop()
                return
            if self._stop.is_set():
                break
            load = self._running / self._concurrency
            if load != reported:
                try:
                    await registration.set_load(load)
                except CoordinationError as exc:
                    logger.warning("reporting the load of %s failed: %s", self._agent_id, exc)
                else:
                    reported = load
        try:
            await registration.set_available(False)
        except CoordinationError as exc:
            logger.warning("marking %s unavailable failed: %s", self._agent_id, exc)


class _Announce:
    """The ``task_status`` handed to ``serve``: logs "ready", then passes ``started`` on."""

    def __init__(self, worker: Worker, outer: TaskStatus[None]) -> None:
        self._worker = worker
        self._outer = outer

    def started(self, value: None = None) -> None:
        self._worker._announce()  # its own helper
        self._outer.started(value)


async def run_worker(
    backend: Backend | str,
    handler: Handler | ImportedHandler | str,
    agent_id: AgentId | str,
    *,
    concurrency: int = 1,
    capabilities: Sequence[Capability | str] = (),
    metadata: Mapping[str, JsonValue] | None = None,
    grace: float = DEFAULT_GRACE,
    visibility_timeout: float = 30.0,
    handler_timeout: float | None = None,
    ttl: float = 30.0,
    heartbeat_interval: float | None = None,
    also_shared: bool = True,
    replace: bool = False,
    retry_policy: RetryPolicy | None = None,
    middleware: Sequence[Middleware] = (),
    metrics: MetricsSink = NOOP_METRICS,
    import_paths: Sequence[str | Path] = (),
    signals: Iterable[int] = DEFAULT_SIGNALS,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> WorkerOutcome:
    """Build a :class:`Worker` and run it until a signal (or its registration is lost).

    ``backend`` may be a URL (connected and closed here), ``handler`` a
    ``package.module:attribute`` spec (imported with :func:`import_handler`), ``agent_id`` a
    ``TYPE[:INSTANCE]`` string. The capabilities the handler's code declares
    (:func:`declared_capabilities`) are merged with ``capabilities``, a name given there
    replacing the code's capability of that name.
    ``signals`` (SIGTERM and SIGINT by default; ``()`` for none, e.g. off the main thread):
    the first stops gracefully, the second at once. The other arguments are
    :class:`Worker`'s.

    Raises:
        ValidationError: A bad spec, agent id, capability or option (before connecting).
        AgentConflictError: The agent id is live under another session (and not ``replace``).
        BackendUnavailableError: The backend is unreachable.
    """
    given = _capabilities(capabilities, "capabilities")
    if isinstance(handler, str):
        handler = import_handler(handler, import_paths=import_paths)
    if isinstance(handler, ImportedHandler):
        given = _merge(handler.capabilities, given)
        handler = handler.handler
    else:
        given = _merge(declared_capabilities(handler), given)
    if isinstance(agent_id, str):
        agent_id = AgentId.parse(agent_id)

    def build(connected: Backend) -> Worker:
        return Worker(
            connected,
            handler,
            agent_id,
            concurrency=concurrency,
            capabilities=given,
            metadata=metadata,
            grace=grace,
            visibility_timeout=visibility_timeout,
            handler_timeout=handler_timeout,
            ttl=ttl,
            heartbeat_interval=heartbeat_interval,
            also_shared=also_shared,
            replace=replace,
            retry_policy=retry_policy,
            middleware=middleware,
            metrics=metrics,
        )

    if not isinstance(backend, str):
        return await build(backend).run(signals=signals, task_status=task_status)
    async with connect(backend) as connected:
        return await build(connected).run(signals=signals, task_status=task_status)
