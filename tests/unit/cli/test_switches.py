"""Every boolean option of the CLI is a `--x/--no-x` switch shown without a `<bool>` value, and every command that
prints a table takes --json."""

from __future__ import annotations

from typing import Any

import typer

from wdmoe.cli.main import app


def _leaves(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, Any]]:
    children = getattr(command, "commands", None)
    if isinstance(children, dict):
        return [leaf for name, child in children.items() for leaf in _leaves(child, (*path, name))]
    return [(" ".join(path), command)]


LEAVES = _leaves(typer.main.get_command(app))
# Commands that print no table: they start a long-running process or write a token file.
NO_TABLE = {"serve", "device start", "device token"}


def test_boolean_options_are_switches_without_a_value_placeholder() -> None:
    flags = [(name, p) for name, cmd in LEAVES for p in cmd.params if getattr(p, "is_flag", False) and p.name != "help"]
    assert len(flags) >= 15
    for name, param in flags:
        assert param.secondary_opts, f"wdmoe {name} {param.opts[0]}: give it a --no- form"
        assert param.metavar == "", f"wdmoe {name} {param.opts[0]}: help would show `<bool>`"


def test_every_command_with_output_takes_json_and_no_json() -> None:
    for name, command in LEAVES:
        if name in NO_TABLE:
            continue
        opts = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        assert {"--json", "--no-json"} <= opts, f"wdmoe {name} has no --json/--no-json"
