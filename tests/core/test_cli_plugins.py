"""Commands that plugins add to ``tta-coord`` through the ``tta_cli_commands`` hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from tta_agent_coordination import PluginLoadWarning
from tta_agent_coordination.cli import EXIT_FAILED, add_plugin_commands, confirm, fail
from tta_agent_coordination.hookspecs import hookimpl
from tta_agent_coordination.plugins import plugin_registry

NOT_CALLABLE = 42


def hello(
    name: Annotated[str, typer.Option(help="Who.")] = "world",
    yes: Annotated[bool, typer.Option("--yes")] = False,
) -> None:
    """Greet, after asking."""
    if name == "nobody":
        fail("nobody to greet", 4)
    confirm(f"Greet {name}?", yes=yes)
    typer.echo(f"hello {name}")


class CommandPlugin:
    def __init__(self, commands: dict[str, str]) -> None:
        self.commands = commands

    @hookimpl
    def tta_cli_commands(self) -> dict[str, str]:
        return self.commands


@pytest.fixture
def plugin() -> Iterator[CommandPlugin]:
    commands = {
        "hello": f"{__name__}:hello",
        "queues": f"{__name__}:hello",
        "number": f"{__name__}:NOT_CALLABLE",
        "broken": f"{__name__}:missing",
    }
    made = CommandPlugin(commands)
    plugin_registry().register(made, name="cli-test")
    yield made
    plugin_registry().unregister("cli-test")


def fresh_app() -> typer.Typer:
    target = typer.Typer()

    @target.command()
    def queues() -> None:
        """The app's own command."""
        typer.echo("own queues")

    return target


def test_plugin_commands_are_added_and_problems_warned(plugin: CommandPlugin) -> None:
    target = fresh_app()
    with pytest.warns(PluginLoadWarning) as warned:
        added = add_plugin_commands(target)
    assert "hello" in added
    assert "queues" not in added
    assert "number" not in added
    assert "broken" not in added
    messages = " | ".join(str(w.message) for w in warned)
    assert "already has a command 'queues'" in messages
    assert "'number' from a plugin is not callable" in messages
    assert "'broken' failed to load" in messages

    runner = CliRunner()
    assert runner.invoke(target, ["hello", "--name", "ada", "--yes"]).stdout == "hello ada\n"
    assert runner.invoke(target, ["queues"]).stdout == "own queues\n"
    declined = runner.invoke(target, ["hello"], input="n\n")
    assert declined.exit_code == EXIT_FAILED
    assert "not confirmed: nothing changed" in declined.stderr
    failed = runner.invoke(target, ["hello", "--name", "nobody"])
    assert (failed.exit_code, failed.stderr) == (4, "tta-coord: error: nobody to greet\n")


def test_adding_again_changes_nothing(plugin: CommandPlugin) -> None:
    target = fresh_app()
    plugin.commands = {"hello": f"{__name__}:hello"}
    first = add_plugin_commands(target)  # installed drivers may add theirs too
    assert "hello" in first
    assert add_plugin_commands(target) == []
    assert len(target.registered_commands) == 1 + len(first)


def test_the_first_plugin_to_name_a_command_keeps_it(plugin: CommandPlugin) -> None:
    plugin.commands = {"hello": f"{__name__}:hello"}
    other = CommandPlugin({"hello": f"{__name__}:fresh_app"})
    plugin_registry().register(other, name="cli-test-2")
    try:
        target = fresh_app()
        assert "hello" in add_plugin_commands(target)
        (command,) = [c for c in target.registered_commands if c.name == "hello"]
        assert command.callback is fresh_app  # pluggy asks the later-registered plugin first
    finally:
        plugin_registry().unregister("cli-test-2")
