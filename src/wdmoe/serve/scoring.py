"""Multiple-choice accuracy by log-likelihood, straight from the model (no server): the reference that
lm-evaluation-harness's `local-completions` against `wdmoe serve` must reproduce.

A JSONL file holds one question per line, `{"query": str, "choices": [str, ...], "gold": int}` (the keys
`context` and `answer` are read as `query` and `gold`). Each choice is
scored as lm-evaluation-harness scores `output_type: multiple_choice` (metric `acc`): the continuation is
`delimiter + choice`, trailing spaces of the context move to the continuation, the continuation's tokens are those
of the tokenized `context + continuation` after the tokenized context, and the prediction is the choice with the
largest summed log-probability (ties: the first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class MCResult:
    accuracy: float
    num_questions: int
    predictions: list[int]  # the chosen choice per question
    loglikelihoods: list[list[float]]  # per question, per choice: sum of log p(continuation tokens)


def read_mc_jsonl(path: str | Path) -> list[dict[str, Any]]:
    docs = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        doc = json.loads(line)
        doc.setdefault("query", doc.get("context"))
        doc.setdefault("gold", doc.get("answer"))
        if not isinstance(doc.get("query"), str) or not doc.get("choices") or not isinstance(doc.get("gold"), int):
            raise ValueError(f"{path}:{number}: need 'query' (text), 'choices' (non-empty list) and 'gold' (int)")
        if not 0 <= doc["gold"] < len(doc["choices"]):
            raise ValueError(f"{path}:{number}: gold = {doc['gold']} is not an index of its {len(doc['choices'])} "
                             "choices")
        docs.append(doc)
    return docs


def continuation_ids(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-evaluation-harness splits them."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = list(tokenizer(context + continuation, add_special_tokens=False)["input_ids"])
    ctx = list(tokenizer(context, add_special_tokens=False)["input_ids"])
    return ctx, whole[len(ctx) :]


@torch.inference_mode()
def loglikelihood(model: Any, context: list[int], continuation: list[int]) -> float:
    """sum_i log p(continuation[i] | context + continuation[:i]) from one forward pass."""
    ids = context + continuation
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)  # (T, V)
    positions = torch.arange(len(context) - 1, len(ids) - 1)
    return float(logp[positions, torch.tensor(continuation)].sum())


def mc_accuracy(model: Any, path: str | Path, delimiter: str = " ") -> MCResult:
    """Accuracy of `model` (a DistributedMoE or anything with `.tokenizer` and `model(ids).logits`) on `path`."""
    if model.tokenizer is None:
        raise ValueError("mc_accuracy needs a model with a tokenizer; this one has none")
    docs = read_mc_jsonl(path)
    scores, predictions = [], []
    for doc in docs:
        row = [loglikelihood(model, *continuation_ids(model.tokenizer, doc["query"], delimiter + choice))
               for choice in doc["choices"]]
        scores.append(row)
        predictions.append(max(range(len(row)), key=row.__getitem__))
    correct = sum(int(p == doc["gold"]) for p, doc in zip(predictions, docs, strict=True))
    return MCResult(correct / len(docs) if docs else 0.0, len(docs), predictions, scores)
