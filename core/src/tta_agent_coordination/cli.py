"""``tta-coord``: look at and operate queues, dead letters, agents and breakers from a terminal.

The backend comes from ``--url`` or the ``TTA_COORDINATION_URL`` environment variable
(default ``memory://``, which lives only as long as the command: useful for trying it out).
Every read command takes ``--json`` for scripts. Every write asks for confirmation unless
``--yes``, and ``--dry-run`` prints what it would do and changes nothing.

Exit codes:

* ``0``: done.
* ``1``: the operation failed, was declined, or what it names does not exist.
* ``2``: bad input or usage (a malformed queue name, JSON or URL, an unknown scheme).
* ``3``: the backend is unreachable (or its driver failed to load).

Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import gc
import json
import logging
import sys
import warnings
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import anyio
import typer
from pydantic import JsonValue
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from typer.core import TyperGroup

from .coordinator import MessageCoordinator
from .errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    CoordinationError,
    PluginLoadError,
    PluginLoadWarning,
    ValidationError,
)
from .metrics import NOOP_METRICS, MetricsSink
from .models import (
    AgentId,
    AgentInfo,
    BreakerSnapshot,
    CircuitBreakerConfig,
    DeadLetter,
    MessageType,
    QueueStats,
)
from .plugins import connect, plugin_registry
from .protocols import Backend
from .worker import (
    DEFAULT_GRACE,
    StopReason,
    WorkerOutcome,
    import_handler,
    parse_capability,
    run_worker,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "add_plugin_commands",
    "app",
    "confirm",
    "fail",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3

URL_ENV = "TTA_COORDINATION_URL"

_EPILOG = (
    "Exit codes: 0 done; 1 failed, declined or not found; 2 bad input or usage; "
    "3 backend unreachable."
)

T = TypeVar("T")


def _click_class(name: str) -> type[Exception]:
    """A click exception class as typer uses it (typer >= 0.20 vendors its own click)."""
    found: type[Exception] = next(k for k in typer.BadParameter.__mro__ if k.__name__ == name)
    return found


_ClickException = _click_class("ClickException")


class _OneLineErrors(TyperGroup):
    """The root group: a usage error is one line on stderr (exit 2), not a boxed panel."""

    def main(  # type: ignore[override]  # click's overloads; we only add error handling
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run the command line; in standalone mode, end the process with its exit code."""
        prog_name = prog_name or "tta-coord"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _ClickException as error:
            failure: Any = error
            context: Any = getattr(failure, "ctx", None)
            if type(error).__name__ == "NoArgsIsHelpError":  # a bare group shows its help
                typer.echo(context.get_help(), nl=False)  # typer's rich help prints itself
            else:
                hint = f" (see: {context.command_path} --help)" if context is not None else ""
                typer.echo(f"tta-coord: error: {failure.format_message()}{hint}", err=True)
            sys.exit(failure.exit_code)
        except typer.Abort:
            # after a question that met the end of its input: end the question's line first
            typer.echo("\ntta-coord: aborted: nothing more was done", err=True)
            sys.exit(EXIT_FAILED)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


app = typer.Typer(
    cls=_OneLineErrors,
    name="tta-coord",
    help="Operate tta-agent-coordination: queues, dead letters, agents and breakers.",
    epilog=_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
dlq_app = typer.Typer(help="Dead letters of one queue: list, show, replay, purge.", epilog=_EPILOG)
breakers_app = typer.Typer(
    help="Circuit breakers: list them (no subcommand), or reset one.", epilog=_EPILOG
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(breakers_app, name="breakers")


class _CommandError(Exception):
    """An expected failure: one line for stderr and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- the one boundary ---------------------------------------------------------------------------


def fail(message: str, code: int) -> NoReturn:
    """End the command: ``message`` as one line on stderr, exit with ``code`` (for plugins)."""
    typer.echo(f"tta-coord: error: {message}", err=True)
    raise typer.Exit(code)


_fail = fail


def _exit_code(error: CoordinationError) -> int:
    if isinstance(error, BackendUnavailableError | PluginLoadError):
        return EXIT_UNREACHABLE
    if isinstance(error, ValidationError | BackendNotFoundError):
        return EXIT_BAD_INPUT
    return EXIT_FAILED


def _run(ctx: typer.Context, action: Callable[[Backend], Awaitable[T]]) -> T:
    """Connect to the backend, run ``action`` on it, close it; map errors to exit codes."""
    url: str = ctx.find_root().params["url"]

    async def go() -> T:
        async with connect(url) as backend:
            return await action(backend)

    try:
        if urlsplit(url).scheme.lower() == "memory":
            typer.echo(
                "tta-coord: note: memory:// keeps nothing after the command ends; "
                "it is only useful for trying tta-coord out (set --url or "
                f"{URL_ENV})",
                err=True,
            )
        return anyio.run(go)
    except _CommandError as failure:
        _fail(str(failure), failure.code)
    except CoordinationError as error:
        # First line only: pydantic's translated messages span several lines.
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        _fail(text, _exit_code(error))


def _queue(text: str) -> AgentId:
    try:
        return AgentId.parse(text)
    except ValidationError:
        msg = f"{text!r} is not a queue name: use TYPE or TYPE:INSTANCE"
        raise _CommandError(msg, EXIT_BAD_INPUT) from None


async def _existing_queue(backend: Backend, text: str) -> AgentId:
    queue = _queue(text)
    if queue not in await backend.queue.queues():
        msg = f"no queue {str(queue)!r} (see: tta-coord queues)"
        raise _CommandError(msg)
    return queue


def _confirm(question: str, *, yes: bool) -> None:
    if not yes and not typer.confirm(question, default=False, err=True):
        msg = "not confirmed: nothing changed"
        raise _CommandError(msg)


def confirm(question: str, *, yes: bool) -> None:
    """Ask ``question`` on stderr unless ``yes``; a "no" ends the command with exit code 1."""
    try:
        _confirm(question, yes=yes)
    except _CommandError as declined:
        fail(str(declined), declined.code)


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


def _console() -> Console:
    return Console(width=max(100, Console().width))


def _time(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- global options -----------------------------------------------------------------------------


@app.callback()
def _root(
    url: Annotated[
        str,
        typer.Option(
            "--url",
            envvar=URL_ENV,
            help="Backend URL, e.g. redis://host:6379/0?namespace=app.",
        ),
    ] = "memory://",
) -> None:
    """Operate tta-agent-coordination: queues, dead letters, agents and breakers."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable JSON on stdout.")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
DryRunFlag = Annotated[
    bool, typer.Option("--dry-run", help="Print what would be done; change nothing.")
]
QueueArg = Annotated[
    str, typer.Argument(metavar="QUEUE", help="The queue: TYPE (shared) or TYPE:INSTANCE.")
]


# -- queues and stats ---------------------------------------------------------------------------


async def _all_stats(backend: Backend) -> list[QueueStats]:
    stats: list[QueueStats] = []
    cursor: str | None = None
    while True:
        page = await backend.queue.stats_all(limit=100, cursor=cursor)
        stats.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            return stats


def _stats_json(stats: QueueStats) -> dict[str, Any]:
    return stats.model_dump(mode="json") | {"queue": str(stats.queue)}


def _queues_table(stats: list[QueueStats]) -> Table:
    table = Table(title="Queues")
    table.add_column("Queue", no_wrap=True)
    for name in ("Ready", "Delayed", "Reserved", "Dead"):
        table.add_column(name, justify="right")
    for item in stats:
        table.add_row(
            str(item.queue),
            str(item.ready),
            str(item.delayed),
            str(item.reserved),
            str(item.dead),
        )
    return table


@app.command()
def queues(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Every queue with its ready, delayed, reserved and dead counts."""
    stats = _run(ctx, _all_stats)
    if as_json:
        _print_json([_stats_json(item) for item in stats])
    elif not stats:
        typer.echo("no queues")
    else:
        _console().print(_queues_table(stats))


@app.command()
def stats(ctx: typer.Context, queue: QueueArg, as_json: JsonFlag = False) -> None:
    """One queue's ready, delayed, reserved and dead counts."""

    async def action(backend: Backend) -> QueueStats:
        return await backend.queue.stats(await _existing_queue(backend, queue))

    result = _run(ctx, action)
    if as_json:
        _print_json(_stats_json(result))
    else:
        _console().print(_queues_table([result]))


# -- dead letters -------------------------------------------------------------------------------


def _dead_json(dead: DeadLetter) -> dict[str, Any]:
    return dead.model_dump(mode="json") | {"queue": str(dead.queue)}


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    queue: QueueArg,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Dead letters per page.")] = 50,
    cursor: Annotated[
        str | None, typer.Option(help="Resume after the page that printed this cursor.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """A page of a queue's dead letters, oldest first, with reason, attempts, time and error."""

    async def action(backend: Backend) -> tuple[list[DeadLetter], str | None]:
        page = await backend.queue.dead_letters(
            await _existing_queue(backend, queue), limit=limit, cursor=cursor
        )
        return page.items, page.next_cursor

    items, next_cursor = _run(ctx, action)
    if as_json:
        _print_json({"items": [_dead_json(d) for d in items], "next_cursor": next_cursor})
        return
    if not items:
        typer.echo(f"no dead letters in {queue}")
    else:
        table = Table(title=f"Dead letters of {queue}")
        table.add_column("Entry ID", no_wrap=True)
        table.add_column("Reason", no_wrap=True)
        table.add_column("Attempts", justify="right")
        table.add_column("Dead at", no_wrap=True)
        table.add_column("Error", overflow="fold")
        for dead in items:
            table.add_row(
                dead.entry_id, dead.reason, str(dead.attempts), _time(dead.dead_at), dead.error
            )
        _console().print(table)
    if next_cursor is not None:
        typer.echo(f"more: tta-coord dlq list {queue} --cursor {next_cursor}")


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    queue: QueueArg,
    entry_id: Annotated[str, typer.Argument(metavar="ID", help="The dead letter's entry id.")],
    as_json: JsonFlag = False,
) -> None:
    """One dead letter in full: reason, attempts, times, error and the message."""

    async def action(backend: Backend) -> DeadLetter:
        dead = await backend.queue.get_dead_letter(await _existing_queue(backend, queue), entry_id)
        if dead is None:
            msg = f"no dead letter {entry_id!r} in {queue}"
            raise _CommandError(msg)
        return dead

    dead = _run(ctx, action)
    if as_json:
        _print_json(_dead_json(dead))
        return
    table = Table(title=f"Dead letter {dead.entry_id}", show_header=False)
    table.add_column("Field", style="bold")
    table.add_column("Value", overflow="fold")
    table.add_row("Queue", str(dead.queue))
    table.add_row("Reason", dead.reason)
    table.add_row("Attempts", str(dead.attempts))
    table.add_row("Enqueued at", _time(dead.enqueued_at))
    table.add_row("Dead at", _time(dead.dead_at))
    table.add_row("Error", dead.error or "-")
    if dead.message is not None:
        table.add_row("Message", dead.message.model_dump_json(indent=2))
    else:
        table.add_row("Raw", dead.raw or "-")
    _console().print(table)


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    *,
    queue: QueueArg,
    ids: Annotated[
        list[str] | None, typer.Option("--id", help="An entry id to replay (repeatable).")
    ] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter.")] = False,
    yes: YesFlag = False,
    dry_run: DryRunFlag = False,
) -> None:
    """Move dead letters back to their queue as fresh entries (attempts reset)."""
    if bool(ids) == replay_all:
        _fail("give either --id ID (one or more) or --all", EXIT_BAD_INPUT)

    async def action(backend: Backend) -> None:
        target = await _existing_queue(backend, queue)
        if ids:
            found = [i for i in ids if await backend.queue.get_dead_letter(target, i) is not None]
            missing = [i for i in ids if i not in found]
        else:
            found, missing = [], []
        count = len(found) if ids else await backend.queue.dead_letter_count(target)
        what = f"{count} dead letter(s) of {target}" + (f": {', '.join(found)}" if ids else "")
        if dry_run:
            typer.echo(f"would replay {what}")
        else:
            _confirm(f"Replay {what}?", yes=yes)
            replayed = await backend.queue.replay_dead_letters(target, found if ids else None)
            typer.echo(f"replayed {len(replayed)} dead letter(s) of {target}")
        if missing:
            msg = f"no dead letter {', '.join(missing)} in {target}"
            raise _CommandError(msg)

    _run(ctx, action)


@dlq_app.command("purge")
def dlq_purge(
    ctx: typer.Context, queue: QueueArg, yes: YesFlag = False, dry_run: DryRunFlag = False
) -> None:
    """Delete every dead letter of a queue for good."""

    async def action(backend: Backend) -> None:
        target = await _existing_queue(backend, queue)
        what = f"{await backend.queue.dead_letter_count(target)} dead letter(s) of {target}"
        if dry_run:
            typer.echo(f"would purge {what}")
            return
        _confirm(f"Delete {what} for good?", yes=yes)
        purged = await backend.queue.purge_dead_letters(target)
        typer.echo(f"purged {purged} dead letter(s) of {target}")

    _run(ctx, action)


# -- agents -------------------------------------------------------------------------------------


def _agent_json(agent: AgentInfo) -> dict[str, Any]:
    return agent.model_dump(mode="json") | {"agent_id": str(agent.agent_id)}


def _agents_table(agents: list[AgentInfo]) -> Table:
    table = Table(title="Agents")
    table.add_column("Agent", no_wrap=True)
    table.add_column("Capabilities", overflow="fold")
    table.add_column("Load", justify="right")
    table.add_column("Available")
    table.add_column("Last heartbeat", no_wrap=True)
    for agent in agents:
        capabilities = ", ".join(f"{c.name} {c.version}" for c in agent.capabilities) or "-"
        table.add_row(
            str(agent.agent_id),
            capabilities,
            f"{agent.load:g}",
            "yes" if agent.available else "no",
            _time(agent.last_heartbeat),
        )
    return table


@app.command()
def agents(
    ctx: typer.Context,
    agent_type: Annotated[str | None, typer.Option("--type", help="Only this type.")] = None,
    capability: Annotated[
        str | None, typer.Option(help="Only agents holding this capability name.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Live agents with type, capabilities, load and last heartbeat."""

    async def action(backend: Backend) -> list[AgentInfo]:
        return await backend.registry.list(type=agent_type, capability=capability)

    found = _run(ctx, action)
    if as_json:
        _print_json([_agent_json(agent) for agent in found])
    elif not found:
        typer.echo("no live agents")
    else:
        _console().print(_agents_table(found))


# -- breakers -----------------------------------------------------------------------------------

_DEFAULT_RECOVERY = CircuitBreakerConfig().recovery_timeout

RecoveryOption = Annotated[
    float,
    typer.Option(
        "--recovery-timeout",
        min=0.001,
        help="The breakers' recovery_timeout in seconds, for the time until half-open.",
    ),
]


async def _snapshots(backend: Backend, recovery_timeout: float) -> list[BreakerSnapshot]:
    config = CircuitBreakerConfig(recovery_timeout=recovery_timeout)
    return [
        await backend.breakers.snapshot(name, config) for name in await backend.breakers.breakers()
    ]


def _breakers_table(snapshots: list[BreakerSnapshot]) -> Table:
    table = Table(title="Breakers")
    table.add_column("Breaker", no_wrap=True)
    table.add_column("State")
    table.add_column("Failures", justify="right")
    table.add_column("Half-open in", justify="right")
    for snap in snapshots:
        after = "-" if snap.retry_after is None else f"{snap.retry_after:.1f}s"
        table.add_row(snap.name, snap.state.value, str(snap.failures), after)
    return table


@breakers_app.callback(invoke_without_command=True)
def breakers(
    ctx: typer.Context,
    recovery_timeout: RecoveryOption = _DEFAULT_RECOVERY,
    as_json: JsonFlag = False,
) -> None:
    """Every breaker with its state, failures and seconds until half-open."""
    if ctx.invoked_subcommand is not None:
        return
    snapshots = _run(ctx, lambda backend: _snapshots(backend, recovery_timeout))
    if as_json:
        _print_json([snap.model_dump(mode="json") for snap in snapshots])
    elif not snapshots:
        typer.echo("no breakers")
    else:
        _console().print(_breakers_table(snapshots))


@breakers_app.command("reset")
def breakers_reset(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The breaker's name.")],
    yes: YesFlag = False,
    dry_run: DryRunFlag = False,
) -> None:
    """Close a breaker from any state and forget its failures."""

    async def action(backend: Backend) -> None:
        if name not in await backend.breakers.breakers():
            msg = f"no breaker {name!r} (see: tta-coord breakers)"
            raise _CommandError(msg)
        if dry_run:
            typer.echo(f"would reset breaker {name}")
            return
        _confirm(f"Reset breaker {name} to closed?", yes=yes)
        await backend.breakers.reset(name)
        typer.echo(f"reset breaker {name}: closed")

    _run(ctx, action)


# -- send ---------------------------------------------------------------------------------------


def _payload(text: str) -> JsonValue:
    source = sys.stdin.read() if text == "-" else text
    try:
        value: JsonValue = json.loads(source)
    except json.JSONDecodeError as error:
        _fail(f"the payload is not JSON: {error}", EXIT_BAD_INPUT)
    return value


@app.command()
def send(
    ctx: typer.Context,
    *,
    queue: QueueArg,
    payload: Annotated[
        str, typer.Argument(metavar="JSON|-", help="The JSON payload; - reads it from stdin.")
    ] = "{}",
    priority: Annotated[int, typer.Option(min=0, max=9, help="0..9, higher first.")] = 5,
    delay: Annotated[float, typer.Option(min=0.0, help="Seconds before it is due.")] = 0.0,
    message_type: Annotated[
        str, typer.Option("--type", help="The message type (any string).")
    ] = MessageType.EVENT.value,
    yes: YesFlag = False,
    dry_run: DryRunFlag = False,
) -> None:
    """Send one message with a JSON payload to a queue; prints its entry id."""
    if payload == "-" and not (yes or dry_run):
        _fail("a payload from stdin needs --yes (the question would read stdin)", EXIT_BAD_INPUT)
    body = _payload(payload)

    async def action(backend: Backend) -> None:
        target = _queue(queue)
        what = (
            f"a message of type {message_type} (priority {priority}"
            + (f", delay {delay:g}s" if delay else "")
            + f") to {target}: {json.dumps(body)}"
        )
        if dry_run:
            typer.echo(f"would send {what}")
            return
        _confirm(f"Send {what}?", yes=yes)
        entry_id = await MessageCoordinator(backend).send(
            target,
            body,
            message_type=message_type,
            priority=priority,
            delay=delay or None,
        )
        typer.echo(entry_id)

    _run(ctx, action)


# -- watch --------------------------------------------------------------------------------------


@app.command()
def watch(
    ctx: typer.Context,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between refreshes.")] = 2.0,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many refreshes (default: Ctrl-C).")
    ] = None,
    recovery_timeout: RecoveryOption = _DEFAULT_RECOVERY,
) -> None:
    """A live view of queues, agents and breakers, refreshed in place until Ctrl-C."""

    async def view(backend: Backend) -> Group:
        return Group(
            _queues_table(await _all_stats(backend)),
            _agents_table(await backend.registry.list()),
            _breakers_table(await _snapshots(backend, recovery_timeout)),
        )

    async def action(backend: Backend) -> None:
        shown = 0
        with Live(await view(backend), console=_console(), auto_refresh=False) as live:
            while True:
                shown += 1
                if count is not None and shown >= count:
                    return
                await anyio.sleep(interval)
                live.update(await view(backend), refresh=True)

    try:
        _run(ctx, action)
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)


# -- worker -------------------------------------------------------------------------------------

_WORKER_EPILOG = (
    "Signals: the first SIGTERM or SIGINT stops reserving, lets running handlers finish within "
    "--grace seconds, releases what did not start, deregisters and exits 0; a second one stops "
    "at once (messages held come back when their visibility timeout ends) and exits 128 + the "
    "signal number (130 for SIGINT, 143 for SIGTERM). Exit codes: 0 stopped; 1 failed (the "
    "agent id is live elsewhere, or the registration was lost); 2 bad input (handler, agent, "
    "capability); 3 backend unreachable."
)


class _LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


@app.command(epilog=_WORKER_EPILOG)
def worker(
    ctx: typer.Context,
    handler: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:HANDLER",
            help="The handler: an async function taking a Delivery, as package.module:name.",
        ),
    ],
    *,
    agent: Annotated[
        str,
        typer.Option(
            metavar="TYPE[:INSTANCE]",
            help="The agent it runs as (no instance: <host>-<pid>).",
            show_default=False,
        ),
    ],
    concurrency: Annotated[int, typer.Option(min=1, help="Handlers running at once.")] = 1,
    capability: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[@VERSION][:TAGS]",
            help="A capability to register (repeatable), added to the handler's own.",
        ),
    ] = None,
    grace: Annotated[
        float, typer.Option(min=0.0, help="Seconds running handlers get after a signal.")
    ] = DEFAULT_GRACE,
    visibility_timeout: Annotated[
        float, typer.Option(min=0.001, help="Seconds each reservation lasts (kept while running).")
    ] = 30.0,
    handler_timeout: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds before a handler is cancelled.")
    ] = None,
    ttl: Annotated[
        float, typer.Option(min=0.001, help="Seconds the registration lives without heartbeat.")
    ] = 30.0,
    heartbeat: Annotated[
        float | None, typer.Option(min=0.001, help="Seconds between heartbeats (ttl/3).")
    ] = None,
    shared: Annotated[bool, typer.Option(help="Also serve the type's shared queue.")] = True,
    replace: Annotated[
        bool, typer.Option(help="Take over a live registration of the same agent id.")
    ] = False,
    import_path: Annotated[
        list[Path] | None,
        typer.Option(help="A directory to import from (repeatable); the current one always is."),
    ] = None,
    log_level: Annotated[
        _LogLevel, typer.Option(case_sensitive=False, help="Log level on stderr.")
    ] = _LogLevel.INFO,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            metavar="PORT",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on http://0.0.0.0:PORT/metrics ([prometheus] extra).",
        ),
    ] = None,
    metrics_interval: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds between reads of queue depths and breakers for /metrics."
        ),
    ] = 15.0,
    gc_freeze: Annotated[
        bool,
        typer.Option(
            help="Exempt what is loaded by the time serving starts (modules, the handler's"
            " module) from Python's cyclic collector for the process's life (gc.freeze): its"
            " full collections then scan only what serving made.",
        ),
    ] = True,
) -> None:
    """Run an agent: register it, heartbeat, serve its queue and its type's shared queue."""
    endpoint = None if metrics_port is None else _metrics_endpoint()
    try:
        agent_id = AgentId.parse(agent)
    except ValidationError:
        _fail(f"{agent!r} is not an agent id: use TYPE or TYPE:INSTANCE", EXIT_BAD_INPUT)
    try:
        given = [parse_capability(text) for text in capability or []]
        imported = import_handler(handler, import_paths=[Path.cwd(), *(import_path or [])])
    except ValidationError as error:
        _fail(str(error), EXIT_BAD_INPUT)
    log = logging.StreamHandler(sys.stderr)
    log.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    previous = root.level
    root.addHandler(log)
    root.setLevel(log_level.value)
    if gc_freeze:  # for the process's life: the worker is its entry point
        gc.collect()  # what is garbage already is not kept for good
        gc.freeze()
    try:

        async def work(backend: Backend) -> WorkerOutcome:
            async with AsyncExitStack() as stack:
                metrics: MetricsSink = NOOP_METRICS
                if endpoint is not None and metrics_port is not None:
                    try:
                        served = await stack.enter_async_context(
                            endpoint(backend, metrics_port, interval=metrics_interval)
                        )
                    except OSError as error:  # the port is taken: one line
                        raise _CommandError(str(error)) from error
                    metrics = served.metrics
                    logging.getLogger(__name__).info("metrics at %s", served.server.url)
                return await run_worker(
                    backend,
                    imported,
                    agent_id,
                    concurrency=concurrency,
                    capabilities=given,
                    grace=grace,
                    visibility_timeout=visibility_timeout,
                    handler_timeout=handler_timeout,
                    ttl=ttl,
                    heartbeat_interval=heartbeat,
                    also_shared=shared,
                    replace=replace,
                    metrics=metrics,
                )

        outcome = _run(ctx, work)
    finally:
        root.removeHandler(log)
        root.setLevel(previous)
    if outcome.reason is StopReason.ABORTED:
        raise typer.Exit(128 + int(outcome.signal or 0))  # the shell's "killed by N"
    if outcome.reason is StopReason.LOST:
        raise typer.Exit(EXIT_FAILED)


def _metrics_endpoint() -> Callable[..., AbstractAsyncContextManager[Any]]:
    """The Prometheus contrib's ``metrics_endpoint``, imported only when ``--metrics-port`` asks."""
    try:
        from tta_agent_coordination_prometheus import (  # noqa: PLC0415  # an optional extra
            metrics_endpoint,
        )
    except ImportError:
        _fail(
            "--metrics-port needs the Prometheus extra: "
            "pip install 'tta-agent-coordination[prometheus]'",
            EXIT_BAD_INPUT,
        )
    return metrics_endpoint


# -- commands from plugins ----------------------------------------------------------------------


def _commands(target: typer.Typer) -> dict[str, object]:
    """Every command and group name of ``target``, with its callback (``None`` for groups)."""
    names: dict[str, object] = {info.name: None for info in target.registered_groups if info.name}
    for info in target.registered_commands:
        callback = info.callback
        default = callback.__name__.replace("_", "-") if callback is not None else ""
        names[info.name or default] = callback
    return names


def add_plugin_commands(target: typer.Typer) -> list[str]:
    """Add the commands installed plugins contribute (``tta_cli_commands``); return their names.

    The Redis driver adds ``migrate-original`` this way. A name already taken by another
    command is left to it, with a :class:`~tta_agent_coordination.errors.PluginLoadWarning`;
    adding the same commands again changes nothing.
    """
    existing = _commands(target)
    added: list[str] = []
    for name, command in plugin_registry().cli_commands().items():
        if name in existing and existing[name] is command:
            continue
        if name in existing or not callable(command):
            problem = (
                f"tta-coord already has a command {name!r}: the plugin's is ignored"
                if name in existing
                else f"tta-coord command {name!r} from a plugin is not callable"
            )
            warnings.warn(problem, PluginLoadWarning, stacklevel=2)
            continue
        target.command(name)(command)
        existing[name] = command
        added.append(name)
    return added


add_plugin_commands(app)


def main() -> None:
    """The console script's entry point."""
    add_plugin_commands(app)
    app()
