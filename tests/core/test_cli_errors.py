"""``tta-coord``'s usage errors: one line on stderr and exit 2, never a box or a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tta_agent_coordination.cli import EXIT_BAD_INPUT, EXIT_FAILED, app


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--url", "memory://cli-errors", *args], input=stdin)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["nope"], "No such command 'nope'. (see: tta-coord --help)"),
        (
            ["send", "q", "--priority", "12", "--yes"],
            "Invalid value for '--priority': Input should be less than or equal to 9"
            " (see: tta-coord send --help)",
        ),
        (["dlq"], "Missing command. (see: tta-coord dlq --help)"),
        (["stats"], "Missing argument 'QUEUE'. (see: tta-coord stats --help)"),
    ],
)
def test_a_usage_error_is_one_line(args: list[str], says: str) -> None:
    code, out, err = run(*args)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    assert err == f"tta-coord: error: {says}\n"


def test_no_command_shows_the_help_and_exits_2() -> None:
    result = CliRunner().invoke(app, [])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "Usage: tta-coord" in result.stdout
    assert "queues" in result.stdout


def test_eof_at_the_confirmation_is_a_one_line_abort() -> None:
    code, _, err = run("send", "q", "{}", stdin="")
    assert code == EXIT_FAILED
    assert err.splitlines()[-1] == "tta-coord: aborted: nothing more was done"


def test_embedding_the_command_keeps_click_s_non_standalone_mode() -> None:
    command = typer.main.get_command(app)
    assert command.main(["--url", "memory://x", "queues"], standalone_mode=False) is None


def test_the_console_script_prints_one_line() -> None:
    script = Path(sys.executable).parent / "tta-coord"
    done = subprocess.run([script, "nope"], capture_output=True, text=True, check=False)
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stderr == "tta-coord: error: No such command 'nope'. (see: tta-coord --help)\n"
