"""Every boolean option of the CLI is a `--x/--no-x` switch shown without a `<bool>` value, and every command that
prints a table takes --json."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import typer

from wdmoe.cli.common import user_errors
from wdmoe.cli.main import app
from wdmoe.errors import WdmoeError


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


def test_bad_options_fail_before_the_model_loads_with_one_line_and_no_library_bars() -> None:
    cases = [
        ([], "give exactly one of --prompt TEXT or --prompt-ids"),
        (["--prompt", "hi", "--backend", "foo"], "--backend 'foo' is unknown; choose one of local, ray"),
        (["--prompt", "hi", "--transport", "x"], "--transport 'x' is unknown"),
        (["--prompt", "hi", "--policy", "foo"], "policy 'foo' is unknown"),
        (["--prompt-ids", "1,x"], "--prompt-ids '1,x': expected comma-separated token ids"),
    ]
    env = {**os.environ, "COLUMNS": "200"}
    for args, message in cases:
        done = subprocess.run([sys.executable, "-m", "wdmoe.cli.main", "run", *args], capture_output=True, text=True,
                              env=env, timeout=120, check=False)
        assert done.returncode == 2, (args, done.stderr)
        assert done.stderr.strip().splitlines() == [f"error: {done.stderr.split('error: ', 1)[1].strip()}"]
        assert message in done.stderr and "Traceback" not in done.stderr
        assert "Loading weights" not in done.stderr and done.stdout == ""


def test_error_messages_keep_bracketed_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit), user_errors():
        raise WdmoeError("configs/x.toml: the table [scenario] has no field devices")

    assert "the table [scenario] has no field" in capsys.readouterr().err
