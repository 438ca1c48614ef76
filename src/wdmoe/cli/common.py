"""Shared pieces of the CLI: error handling, JSON output, the per-device table."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from wdmoe.errors import DevicesUnavailable, WdmoeError

# Piped output keeps its table columns and one line per message: Rich would wrap at 80 columns off a terminal.
_PIPE_WIDTH = None if "COLUMNS" in os.environ else 200
console = Console(width=None if sys.stdout.isatty() else _PIPE_WIDTH)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPE_WIDTH)

# A switch (`--json` / `--no-json`), shown without typer's `<bool>` placeholder: `--json true` is not a form it takes.
JsonOut = Annotated[
    bool, typer.Option("--json/--no-json", metavar="", help="Print one JSON object (stdout holds nothing else).")
]


def progress_bar(enabled: bool) -> Progress:
    """A progress bar on stderr (stdout stays clean for --json) with an estimate of the time left; silent when
    disabled."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=err_console, disable=not enabled, transient=True)


def check_choice(option: str, value: str, choices: Sequence[str]) -> None:
    """Refuse an option value outside `choices` before any long work starts (model loading, a cluster)."""
    if value not in choices:
        raise WdmoeError(f"{option} {value!r} is unknown; choose one of {', '.join(choices)}")


def offline() -> None:
    """wdmoe never reaches a model hub: everything is loaded from local directories."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # transformers' "Loading weights" bars (read at its import; `wdmoe --verbose` turns them back on)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into one red line and exit code 2, and devices that cannot run the model (every device
    lost, one that died while loading, a cluster out of reach) into one red line and exit code 3; no traceback."""
    try:
        yield
    except (WdmoeError, FileNotFoundError, FileExistsError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False)  # "[scenario]" is text, not markup
        raise typer.Exit(2) from exc
    except DevicesUnavailable as exc:  # one line however long (the reasons of every device): no wrapping
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from exc


@contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """While the block runs, what anything prints on stdout goes to stderr (with `--json`, stdout holds the JSON
    only): Ray's driver prints its cluster's error messages, e.g. a device actor's "worker died", on stdout from a
    thread of its own."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=1, default=_default))


def _default(value: Any) -> Any:
    tolist: Callable[[], Any] | None = getattr(value, "tolist", None)
    if tolist is not None:
        return tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def device_table(summary: dict[str, Any], title: str = "devices") -> Table:
    table = Table(title=title)
    for column in ("device", "tokens down", "kbit down", "kbit up", "compute ms"):
        table.add_column(column, justify="right")
    rows = zip(
        summary["tokens_per_device"],
        summary["bits_down_per_device"],
        summary["bits_up_per_device"],
        summary["device_compute_s"],
        strict=True,
    )
    for device, (tokens, down, up, compute) in enumerate(rows):
        table.add_row(str(device), str(tokens), f"{down / 1e3:.1f}", f"{up / 1e3:.1f}", f"{compute * 1e3:.2f}")
    return table


def latency_table(report: dict[str, Any]) -> Table:
    """Per MoE layer, the radio model's mean times over the request's steps (the slowest device's parts)."""
    table = Table(title="modeled latency per MoE layer (mean over steps)")
    for column in ("layer", "BS ms", "DL ms", "compute ms", "UL ms", "layer ms", "wait ms"):
        table.add_column(column, justify="right")
    for row in report["latency"]["per_layer"]:
        table.add_row(
            str(row["layer"]),
            *(f"{row[key] * 1e3:.3f}" for key in ("bs_s", "dl_s", "compute_s", "ul_s", "layer_s", "waiting_s")),
        )
    return table
