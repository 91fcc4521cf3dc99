"""``tta-coord migrate-original``: the Redis driver's command, added through ``tta_cli_commands``.

Importing this module imports typer and the core only; redis and the migration load when the
command runs, so ``tta-coord`` starts as fast with the driver installed as without it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import anyio
import typer
from rich.console import Console
from rich.table import Table

from tta_agent_coordination.cli import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_UNREACHABLE,
    confirm,
    fail,
)
from tta_agent_coordination.errors import (
    BackendNotFoundError,
    BackendUnavailableError,
    CoordinationError,
    PluginLoadError,
    ValidationError,
)

if TYPE_CHECKING:
    from .migrate import MigrationReport

__all__ = ["migrate_original_command"]

_KINDS = ("ready", "delayed", "reserved", "dead")


def _table(report: MigrationReport) -> Table:
    verb = "found" if report.dry_run else "moved"
    table = Table(title=f"Migration from the original's data ({verb} per queue)")
    table.add_column("queue", no_wrap=True)
    for kind in _KINDS:
        table.add_column(kind, justify="right")
    table.add_column("present", justify="right")
    table.add_column("raw", justify="right")
    table.add_column("audit", justify="right")
    table.add_column("differ", justify="right")
    for name in sorted(report.queues):
        queue = report.queues[name]
        table.add_row(
            name,
            *(str(queue.moved[kind]) for kind in _KINDS),
            str(sum(queue.present.values())),
            str(queue.raw_kept),
            str(queue.audit_length),
            str(queue.audit_mismatch),
        )
    return table


def _print_report(report: MigrationReport) -> None:
    console = Console(width=max(110, Console().width))
    console.print(_table(report))
    for name, action in sorted(report.breakers.items()):
        console.print(f"breaker {name}: {action}")
    for key in sorted(report.skipped_keys):
        console.print(f"skipped (not the original's layout): {key}")
    verb = "would move" if report.dry_run else "moved"
    console.print(f"{verb} {report.total_moved} entries in {len(report.queues)} queues")
    console.print(
        "present: already in the target (an earlier run); raw: unparseable dead letters kept;"
        " audit: the original's audit list; differ: entries in only one of it and those moved"
    )


def migrate_original_command(
    *,
    source: Annotated[
        str, typer.Option(help="The original's Redis, e.g. redis://old-host:6379/0 (only read).")
    ],
    target: Annotated[
        str,
        typer.Option(
            envvar="TTA_COORDINATION_URL",
            help="The backend to move into, e.g. redis://host:6379/0?namespace=app.",
        ),
    ],
    prefix: Annotated[str, typer.Option(help="The original's key prefix.")] = "ao",
    as_json: Annotated[bool, typer.Option("--json", help="The report as JSON on stdout.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would move; write nothing.")
    ] = False,
) -> None:
    """Move the original code's queues, dead letters and breakers into the target backend.

    Safe to run twice (the second run moves nothing) and to run again after a kill or after
    the old producers stopped. Prints what it moved, per queue.
    """
    if not prefix or any(c in prefix for c in "*?[]"):
        fail(f"{prefix!r} is not a key prefix (no glob characters)", EXIT_BAD_INPUT)
    if not dry_run:
        confirm(f"Move the original's data under {prefix}: from {source} into {target}?", yes=yes)
    from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: PLC0415
    from redis.exceptions import RedisError  # noqa: PLC0415

    from .migrate import migrate_from_url  # noqa: PLC0415  # redis loads only when used

    try:
        report = anyio.run(lambda: migrate_from_url(source, prefix, target, dry_run=dry_run))
    except (BackendUnavailableError, PluginLoadError) as error:  # the target
        fail(f"the target: {_first_line(error)}", EXIT_UNREACHABLE)
    except (RedisConnectionError, OSError) as error:
        fail(f"cannot reach the source {source}: {_first_line(error)}", EXIT_UNREACHABLE)
    except (ValidationError, BackendNotFoundError, ValueError) as error:
        fail(_first_line(error), EXIT_BAD_INPUT)
    except (CoordinationError, RedisError) as error:
        fail(_first_line(error), EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    else:
        _print_report(report)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
