"""`wdmoe experiment NAME`: the latency–accuracy experiments (a thin shell over wdmoe.experiments)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from wdmoe.cli.common import JsonOut, console, err_console, offline, print_json, user_errors


class _RichProgress:
    """One bar per task on stderr (stdout stays clean for --json)."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar

    def task(self, description: str, total: int) -> Callable[[], None]:
        task = self.bar.add_task(description, total=total)
        return lambda: self.bar.advance(task)


def experiment(
    name: Annotated[str, typer.Argument(help="theta, bandwidth, devices, cdf, pareto or all.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Where the CSV and PNG files go.")] = Path(
        "experiments"),
    scenario: Annotated[Path | None, typer.Option(help="Radio scenario TOML (default: configs' default).")] = None,
    realizations: Annotated[int, typer.Option(min=1, help="Channel realizations per point.")] = 20,
    model_dir: Annotated[Path | None, typer.Option("--model", "-m", help="Model (default: the shipped one).")] = None,
    text: Annotated[Path | None, typer.Option(help="Held-out text (default: the shipped model's).")] = None,
    task: Annotated[Path | None, typer.Option(help="Multiple-choice JSONL task (default: the shipped one).")] = None,
    trace: Annotated[Path | None, typer.Option(help="Replay this trace instead of recording one.")] = None,
    max_tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens scored per policy.")] = 8000,
    task_items: Annotated[int, typer.Option(min=1, help="Task items scored per policy.")] = 100,
    requests: Annotated[int, typer.Option(min=1, help="Requests in the recorded trace.")] = 8,
    prompt_tokens: Annotated[int, typer.Option(min=1, help="Prompt tokens per recorded request.")] = 32,
    new_tokens: Annotated[int, typer.Option(min=1, help="Generated tokens per recorded request.")] = 32,
    json_out: JsonOut = False,
) -> None:
    """Run an experiment: writes NAME.csv and NAME.png into --out-dir (traces and accuracies cached there)."""
    offline()
    with user_errors():
        from wdmoe.config import Scenario, load_scenario
        from wdmoe.experiments.run import NAMES, run_experiments
        from wdmoe.experiments.setup import Setup
        from wdmoe.model import shipped

        if name not in NAMES:
            raise ValueError(f"experiment {name!r} is unknown; choose one of {', '.join(NAMES)}")
        use_shipped = model_dir is None
        if use_shipped and trace is None and not shipped.has_shipped_model():
            raise ValueError("no shipped model in this checkout; pass --model DIR and --text FILE, or --trace")
        setup = Setup(
            out_dir=out_dir, scenario=load_scenario(scenario) if scenario else Scenario.default(),
            realizations=realizations, model_dir=model_dir or shipped.SHIPPED_DIR,
            text=text or (shipped.HELDOUT_TEXT if use_shipped else None),
            task=task or (shipped.CONTINUATION_TASK if use_shipped else None), max_tokens=max_tokens,
            task_items=task_items, trace_file=trace, requests=requests, prompt_tokens=prompt_tokens,
            new_tokens=new_tokens)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err_console, disable=json_out) as bar:
            results = run_experiments(name, setup, _RichProgress(bar))
    if json_out:
        print_json({"experiments": [{"name": r.name, "csv": str(r.csv), "png": str(r.png), "rows": r.rows,
                                     "notes": list(r.notes)} for r in results]})
        return
    for result in results:
        console.print(_table(result.name, result.rows, result.shown))
        for note in result.notes:
            console.print(note)
        console.print(f"wrote {result.csv} and {result.png}")


def _cell(value: Any, seconds: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    return f"{1e3 * value:.3f}" if seconds else f"{value:.4g}"


def _table(name: str, rows: list[dict[str, Any]], shown: tuple[str, ...]) -> Table:
    table = Table(title=f"experiment {name} (times in ms)")
    for column in shown:
        table.add_column(column.removesuffix("_s"), justify="right")
    for row in rows:
        table.add_row(*(_cell(row[c], c.endswith("_s")) for c in shown))
    return table
