"""The `wdmoe` command. Each command lives in its own module; this file only registers them."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from wdmoe.cli import (
    demo_cmd,
    device_cmd,
    ensemble_cmd,
    eval_cmd,
    experiment_cmd,
    plan_cmd,
    run_cmd,
    serve_cmd,
    sim_cmd,
    split_cmd,
    train_cmd,
)

app = typer.Typer(
    name="wdmoe",
    help="Run Mixture-of-Experts language models across a base station and wireless edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _global(
    verbose: Annotated[
        bool, typer.Option("--verbose/--quiet", metavar="", help="Show libraries' progress bars and info logs.")
    ] = False,
) -> None:
    if verbose:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0"
        os.environ["TRANSFORMERS_VERBOSITY"] = "info"


app.command("demo")(demo_cmd.demo)
app.command("run")(run_cmd.run)
app.command("split")(split_cmd.split)
app.command("make-tiny")(split_cmd.make_tiny)
app.command("eval")(eval_cmd.eval_)
app.command("train")(train_cmd.train)
app.command("simulate")(sim_cmd.simulate)
app.command("experiment")(experiment_cmd.experiment)
app.command("serve")(serve_cmd.serve)
app.command("bench")(serve_cmd.bench)
app.command("plan")(plan_cmd.plan)

trace_app = typer.Typer(
    help="Router traces: record from a model, synthesize with a given expert popularity.", no_args_is_help=True
)
trace_app.command("record")(sim_cmd.record)
trace_app.command("synthesize")(sim_cmd.synthesize)
app.add_typer(trace_app, name="trace")
app.add_typer(device_cmd.app, name="device")
app.add_typer(ensemble_cmd.app, name="ensemble")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
