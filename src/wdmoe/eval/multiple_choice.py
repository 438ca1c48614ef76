"""Multiple-choice tasks scored by option log-likelihood, as lm-evaluation-harness does.

A task is a JSONL file, one item per line: {"context": str, "choices": [str, ...], "answer": int}. An item's
prediction is the choice whose tokens have the highest summed log-probability given the context (`accuracy`),
or the highest per-character log-probability (`accuracy_norm`, lm-eval's acc_norm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from wdmoe.errors import WdmoeError


@dataclass(frozen=True)
class Item:
    context: str
    choices: tuple[str, ...]
    answer: int


@dataclass(frozen=True)
class TaskScores:
    accuracy: float
    accuracy_norm: float
    items: int


def load_task(path: Path) -> list[Item]:
    """Items of a JSONL task file; a bad line is refused with its line number and what is expected."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            item = Item(str(raw["context"]), tuple(str(c) for c in raw["choices"]), int(raw["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise WdmoeError(
                f"{path}:{number}: expected {{\"context\": str, \"choices\": [str, ...], \"answer\": int}} ({exc})"
            ) from exc
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise WdmoeError(f"{path}:{number}: answer {item.answer} is not one of {len(item.choices)} choices")
        items.append(item)
    if not items:
        raise WdmoeError(f"{path} holds no item")
    return items


@torch.inference_mode()
def continuation_logprob(model: Any, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context), summed over the continuation's tokens."""
    ids = torch.tensor([context_ids + continuation_ids])
    logits = model(ids).logits[0, len(context_ids) - 1 : -1].float()  # (m, V) predicting the continuation
    logp = F.log_softmax(logits, dim=-1)
    target = torch.tensor(continuation_ids)
    return float(logp.gather(1, target[:, None]).sum())


@torch.inference_mode()
def choice_logprobs(model: Any, context_ids: list[int], choices_ids: list[list[int]], pad_id: int = 0) -> list[float]:
    """log p(choice | context) of every choice in one batched forward pass (right-padded, so the real tokens'
    logits are those of separate passes; a policy sees the padding as extra tokens of the layer step)."""
    rows = [context_ids + c for c in choices_ids]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    logp = F.log_softmax(model(ids, attention_mask=mask).logits.float(), dim=-1)  # (B, width, V)
    start = len(context_ids) - 1
    out = []
    for i, choice in enumerate(choices_ids):
        positions = torch.arange(start, start + len(choice))
        out.append(float(logp[i, positions, torch.tensor(choice)].sum()))
    return out


def score_task(model: Any, tokenizer: Any, items: list[Item], progress: Any = None) -> TaskScores:
    """Accuracy and length-normalized accuracy of `model` on `items` (one forward pass per item)."""
    correct = correct_norm = 0
    for item in items:
        context = tokenizer(item.context)["input_ids"]
        choices = [tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
        scores = choice_logprobs(model, context, choices, getattr(tokenizer, "pad_token_id", None) or 0)
        norm = [s / max(1, len(c)) for s, c in zip(scores, item.choices, strict=True)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
        correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == item.answer)
        if progress is not None:
            progress(1)
    return TaskScores(correct / len(items), correct_norm / len(items), len(items))
