"""One evaluation of a loaded model under its current policy: what `wdmoe eval`, the demo and the experiments score.

Contract: `heldout_documents(model, text_file, max_tokens)` tokenizes the documents of `text_file` with the
model's tokenizer until at least `max_tokens` ids are read. `evaluate(model, documents, block_size, task, unigram)`
scores held-out perplexity and next-token accuracy on them (`wdmoe.eval.language`), the unigram baseline on the
same predicted tokens when training counts are given (`wdmoe.eval.unigram`), and a multiple-choice task file when
given (`wdmoe.eval.multiple_choice`), and returns one JSON-ready dict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from wdmoe.eval.language import blocks, language_scores
from wdmoe.eval.multiple_choice import load_task, score_task
from wdmoe.eval.unigram import unigram_perplexity_from_counts
from wdmoe.model.shipped import UNIGRAM_COUNTS
from wdmoe.train.data import read_documents


def evaluate(
    model: Any,
    documents: list[list[int]],
    block_size: int,
    task: Path | None,
    unigram: list[int] | None,
    show_progress: bool = True,
    bos: bool = False,
    limit: int | None = None,
) -> dict[str, Any]:
    """Scores of a loaded model (policy already set) on tokenized documents and an optional task file (scored by
    `wdmoe.eval.multiple_choice.score_task`; `bos`: its BOS convention)."""
    with tqdm(total=len(blocks(documents, block_size)), desc="held-out", disable=not show_progress) as bar:
        scores = language_scores(model, documents, block_size, progress=bar.update)
    result: dict[str, Any] = {
        "perplexity": scores.perplexity,
        "next_token_accuracy": scores.next_token_accuracy,
        "tokens": scores.tokens,
        "experts_per_token_mean": model.summary(model.steps)["experts_per_token_mean"],
    }
    if unigram is not None:
        targets = [i for chunk in blocks(documents, block_size) for i in chunk[1:]]  # the tokens the model predicted
        result["unigram_perplexity"] = unigram_perplexity_from_counts(unigram, targets)
    if task is not None:
        items = load_task(task)[:limit]  # limit: the first N items (None: all)
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
    """The documents of `text_file` as token ids of the model's tokenizer, until `max_tokens` ids are read."""
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


def training_unigram_counts(model_dir: Path) -> list[int] | None:
    """The training-token counts a model directory stores (`wdmoe train` writes them), or None."""
    counts_file = Path(model_dir) / UNIGRAM_COUNTS
    return json.loads(counts_file.read_text()) if counts_file.is_file() else None
