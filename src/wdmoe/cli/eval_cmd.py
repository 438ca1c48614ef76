"""`wdmoe eval`: perplexity, next-token accuracy and multiple-choice accuracy of a split model under a policy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wdmoe.cli.common import JsonOut, console, offline, print_json, user_errors


def eval_(
    model_dir: Annotated[Path | None, typer.Option("--model", "-m", help="Model (default: the shipped one).")] = None,
    task: Annotated[
        Path | None,
        typer.Option(
            help="Multiple-choice JSONL task (default: none, or the shipped continuation task with the shipped model)."
        ),
    ] = None,
    text: Annotated[Path | None, typer.Option(help="Held-out text (default: the shipped model's).")] = None,
    policy: Annotated[str, typer.Option(help="topk, wlr, joint, fastest, random or prune.")] = "topk",
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help="WLR threshold; prune: the pruned gate share.")] = 0.5,
    scenario: Annotated[Path | None, typer.Option(help="Radio scenario TOML.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices when splitting a HF directory.")] = None,
    max_tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens to score.")] = 20_000,
    block_size: Annotated[int, typer.Option(min=2, help="Tokens per forward pass.")] = 128,
    bos: Annotated[
        bool,
        typer.Option(
            "--bos/--no-bos",
            metavar="",
            help="Task: prefix BOS to each context (the shipped model's "
            "training convention; lm-eval's add_bos_token=True). Default: no BOS, as "
            "lm-eval's local-completions scores against `wdmoe serve`.",
        ),
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Score only the task's first N items (default: all of them).")
    ] = None,
    json_out: JsonOut = False,
) -> None:
    """Held-out perplexity, next-token accuracy and task accuracy under a policy (experts on in-process devices)."""
    offline()
    with user_errors():
        from wdmoe.config import load_scenario
        from wdmoe.eval.evaluate import evaluate, heldout_documents, training_unigram_counts
        from wdmoe.model import shipped
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.open import ModelOptions, open_model

        use_shipped = model_dir is None
        model_dir = model_dir or shipped.default_model_dir()
        if use_shipped and not shipped.has_shipped_model():
            raise ValueError("no shipped model in this checkout; pass --model DIR and --text FILE")
        text = text or shipped.HELDOUT_TEXT
        if task is None and use_shipped:
            task = shipped.CONTINUATION_TASK
        # Everything is checked before the model loads (the default run scores for minutes).
        for option, path in (("--text", text), ("--task", task)):
            if path is not None and not path.is_file():
                raise ValueError(f"{option} {path}: no such file")
        chosen = make_policy(policy, theta=theta)
        radio = load_scenario(scenario) if scenario else None
        model = open_model(model_dir, ModelOptions(devices=devices, policy=chosen, scenario=radio))
        result = evaluate(
            model,
            heldout_documents(model, text, max_tokens),
            block_size,
            task,
            training_unigram_counts(model_dir),
            show_progress=not json_out,
            bos=bos,
            limit=limit,
        )
        result.update(policy=policy, theta=theta if policy == "wlr" else None, model=str(model_dir))
        model.close()
    if json_out:
        print_json(result)
        return
    console.print(
        f"policy {policy}: perplexity {result['perplexity']:.2f}, next-token accuracy "
        f"{result['next_token_accuracy']:.3f} over {result['tokens']} tokens, "
        f"{result['experts_per_token_mean']:.2f} experts/token"
    )
    if "unigram_perplexity" in result:
        console.print(f"unigram perplexity of the same text: {result['unigram_perplexity']:.2f}")
    if "task_accuracy" in result:
        console.print(
            f"task {task}: accuracy {result['task_accuracy']:.3f} "
            f"(length-normalized {result['task_accuracy_norm']:.3f}) on {result['task_items']} items"
            f"{', BOS-prefixed contexts' if bos else ''}"
        )
