"""`wdmoe eval`: perplexity, next-token accuracy and multiple-choice accuracy of a split model under a policy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from tqdm import tqdm

from wdmoe.cli.common import console, offline, print_json, user_errors


def evaluate(
    model: Any,
    documents: list[list[int]],
    block_size: int,
    task: Path | None,
    unigram: list[int] | None,
    show_progress: bool = True,
    bos: bool = False,
) -> dict[str, Any]:
    """Scores of a loaded model (policy already set) on tokenized documents and an optional task file (scored by
    `wdmoe.eval.multiple_choice.score_task`; `bos`: its BOS convention)."""
    from wdmoe.eval.language import blocks, language_scores
    from wdmoe.eval.multiple_choice import load_task, score_task
    from wdmoe.eval.unigram import unigram_perplexity_from_counts

    with tqdm(total=len(blocks(documents, block_size)), desc="held-out", disable=not show_progress) as bar:
        scores = language_scores(model, documents, block_size, progress=bar.update)
    result: dict[str, Any] = {
        "perplexity": scores.perplexity,
        "next_token_accuracy": scores.next_token_accuracy,
        "tokens": scores.tokens,
        "experts_per_token_mean": model.summary()["experts_per_token_mean"],
    }
    if unigram is not None:
        targets = [i for chunk in blocks(documents, block_size) for i in chunk[1:]]  # the tokens the model predicted
        result["unigram_perplexity"] = unigram_perplexity_from_counts(unigram, targets)
    if task is not None:
        items = load_task(task)
        with tqdm(total=len(items), desc="task", disable=not show_progress) as bar:
            task_scores = score_task(model, model.tokenizer, items, bos=bos, progress=bar.update)
        result.update(
            task=str(task),
            task_accuracy=task_scores.accuracy,
            task_accuracy_norm=task_scores.accuracy_norm,
            task_items=task_scores.items,
            task_bos=bos,
        )
    return result


def heldout_documents(model: Any, text_file: Path, max_tokens: int) -> list[list[int]]:
    from wdmoe.train.data import read_documents

    if model.tokenizer is None:
        raise ValueError("this model has no tokenizer, so it cannot be evaluated on text; use the shipped model")
    documents, total = [], 0
    for text in read_documents(text_file):
        ids = model.tokenizer(text)["input_ids"]
        documents.append(ids)
        total += len(ids)
        if total >= max_tokens:
            break
    return documents


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
            help="Task: prefix BOS to each context (the shipped model's "
            "training convention; lm-eval's add_bos_token=True). Default: no BOS, as "
            "lm-eval's local-completions scores against `wdmoe serve`.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Held-out perplexity, next-token accuracy and task accuracy under a policy (experts on in-process devices)."""
    offline()
    with user_errors():
        from wdmoe.config import Scenario, load_scenario
        from wdmoe.model import shipped
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.model import DistributedMoE

        use_shipped = model_dir is None
        model_dir = model_dir or shipped.default_model_dir()
        if use_shipped and not shipped.has_shipped_model():
            raise ValueError("no shipped model in this checkout; pass --model DIR and --text FILE")
        text = text or shipped.HELDOUT_TEXT
        if task is None and use_shipped:
            task = shipped.CONTINUATION_TASK
        model = DistributedMoE.from_pretrained(model_dir, num_devices=devices)
        radio = load_scenario(scenario) if scenario else Scenario.default(num_devices=model.num_devices)
        model.set_policy(make_policy(policy, theta=theta), radio)
        counts_file = Path(model_dir) / shipped.UNIGRAM_COUNTS
        unigram = json.loads(counts_file.read_text()) if counts_file.is_file() else None
        result = evaluate(
            model,
            heldout_documents(model, text, max_tokens),
            block_size,
            task,
            unigram,
            show_progress=not json_out,
            bos=bos,
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
