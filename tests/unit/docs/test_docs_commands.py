"""The docs cannot drift from the CLI: every `wdmoe ...` command written in README.md and docs/*.md names a real
command, options that command has, and policies that exist; every command the CLI has is in the README; the README's
Python example runs as written (on the shipped model)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer

from wdmoe.cli.main import app
from wdmoe.model.shipped import SHIPPED_DIR
from wdmoe.policy.factory import POLICY_NAMES

ROOT = Path(__file__).resolve().parents[3]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_SPAN = re.compile(r"`(wdmoe [^`]*)`")
_FENCE = re.compile(r"^```[a-z]*\n(.*?)^```", re.S | re.M)


def _commands(text: str) -> list[str]:
    """The `wdmoe ...` commands of a Markdown text: inline code spans and lines of fenced blocks."""
    found = [m.replace("\\|", "|") for m in _SPAN.findall(text)]
    for block in _FENCE.findall(text):
        for line in block.splitlines():
            for part in line.split(" / "):  # "wdmoe run ...  /  wdmoe serve ..." on one line
                part = part.split("#")[0].strip().removeprefix("$ ")
                if part.startswith("wdmoe "):
                    found.append(part.rstrip("\\").strip())
    return found


ALL = sorted({(doc.relative_to(ROOT).as_posix(), cmd) for doc in DOCS for cmd in _commands(doc.read_text("utf-8"))})


@cache
def _root() -> Any:
    """The CLI as typer builds it (typer vendors click, so its classes are typer's: read them by attribute)."""
    group = typer.main.get_command(app)
    assert _is_group(group)
    return group


def _is_group(command: Any) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _resolve(words: list[str]) -> tuple[list[str], Any]:
    """The longest prefix of `words` that names a command, and that command."""
    path: list[str] = []
    command = _root()
    for word in words:
        if not _is_group(command) or word not in command.commands:
            break
        command = command.commands[word]
        path.append(word)
    return path, command


def _options(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        names.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return names


def test_the_docs_name_commands_at_all() -> None:
    assert len(ALL) >= 30  # the extraction works: README's table alone has over a dozen


@pytest.mark.parametrize(("doc", "command"), ALL, ids=[f"{d}:{c[:60]}" for d, c in ALL])
def test_every_documented_command_exists_with_its_options_and_policies(doc: str, command: str) -> None:
    words = [w for w in command.split()[1:] if w != "COMMAND"]  # `wdmoe COMMAND --help`: any command
    if not words or words == ["--help"]:
        return
    path, resolved = _resolve([w for w in words if not w.startswith("-")][:2])
    assert path, f"{doc}: `{command}` names no wdmoe command"
    if _is_group(resolved):  # `wdmoe trace record|synthesize`, `wdmoe ensemble train-gate|select`
        alternatives = words[len(path)].split("|") if len(words) > len(path) else []
        unknown = [a for a in alternatives if a not in resolved.commands and a != "COMMAND"]
        assert not unknown, f"{doc}: `{command}`: no subcommand {unknown} of `wdmoe {' '.join(path)}`"
        return
    tokens = re.findall(r"--[a-z][a-z0-9-]*", command)
    missing = sorted(set(tokens) - _options(resolved))
    assert not missing, f"{doc}: `{command}`: `wdmoe {' '.join(path)}` has no option {missing}"
    for match in re.finditer(r"--policy[ =]([a-z|]+)", command):
        unknown = [p for p in match.group(1).split("|") if p not in POLICY_NAMES]
        assert not unknown, f"{doc}: `{command}`: no policy {unknown} (policies: {', '.join(POLICY_NAMES)})"


def test_every_cli_command_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    named = {" ".join(_resolve(cmd.split()[1:3])[0]) for _, cmd in ALL if _ in {"README.md"}}
    for name, command in _root().commands.items():
        if _is_group(command):
            assert f"wdmoe {name}" in readme, f"README.md does not mention `wdmoe {name}`"
        else:
            assert name in named, f"README.md's command table lacks `wdmoe {name}`"


def test_every_policy_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    listed = {p for m in re.finditer(r"--policy ([a-z|\\-]+)", readme)
              for p in m.group(1).replace("\\", "").split("|")}  # names may hold a hyphen: wlr-cum
    assert set(POLICY_NAMES) <= listed, f"README.md's --policy list lacks {sorted(set(POLICY_NAMES) - listed)}"


def test_the_readme_python_example_runs_as_written() -> None:
    readme = (ROOT / "README.md").read_text("utf-8")
    (block,) = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    assert '"path/to/mixtral"' in block and "input_ids" in block
    code = block.replace('"path/to/mixtral"', repr(str(SHIPPED_DIR)))
    import torch

    namespace: dict[str, object] = {"input_ids": torch.tensor([[5, 6, 7, 8]])}
    exec(compile(code, "README.md", "exec"), namespace)  # the README's own example, as a user runs it
    model = namespace["model"]
    summary = model.summary()  # type: ignore[attr-defined]
    assert summary["latency"]["ttft_s"] > 0 and summary["latency"]["tpot_s"] > 0
