"""The `wdmoe` command. Each command lives in its own module; this file only registers them."""

from __future__ import annotations

import typer

from wdmoe.cli import demo_cmd, eval_cmd, run_cmd, split_cmd

app = typer.Typer(
    name="wdmoe",
    help="Run Mixture-of-Experts language models across a base station and wireless edge devices.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("split")(split_cmd.split)
app.command("make-tiny")(split_cmd.make_tiny)
app.command("run")(run_cmd.run)
app.command("demo")(demo_cmd.demo)
app.command("eval")(eval_cmd.eval_)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
