"""Multiple-choice tasks scored by option log-likelihood: the one scorer of wdmoe.

`wdmoe eval --task`, the experiments and the lm-evaluation-harness check against `wdmoe serve` all score with
`score_task`, and it scores as lm-evaluation-harness's `output_type: multiple_choice` does with
`target_delimiter: ""` (our choices carry their own leading space) when lm-eval's `local-completions` talks to
`wdmoe serve`:

- the continuation is the choice; trailing whitespace of the context moves to the front of the continuation;
- the continuation's tokens are those of the tokenized `context + continuation` after the tokenized context (a word
  is tokenized as in running text, not as a separate string);
- every (context, choice) pair is one forward pass of its own over exactly its tokens, as the server scores one
  `echo` + `logprobs` prompt: no batching, no padding, so a policy that decides per layer step over all the tokens of
  the step sees the same tokens in both;
- `accuracy`: the choice with the largest summed log-probability wins (ties: the first), lm-eval's `acc`;
  `accuracy_norm`: the same after dividing by the choice's length in characters, lm-eval's `acc_norm`;
- an empty context is the BOS token (else EOS), as lm-eval does.

BOS convention (`bos`):

- `bos=False` (the default): the text is tokenized without special tokens. `wdmoe serve` prepends nothing to a
  prompt (text or token ids), and lm-eval's `local-completions` with its default arguments (`add_bos_token=False`)
  sends the tokens of `context + continuation` without BOS, so this is what lm-eval measures against the server;
  with it, `wdmoe eval` and lm-eval against `wdmoe serve` agree per item out of the box.
- `bos=True`: the tokenizer's special tokens are added (the shipped model: `<s>` first, the convention of its
  training documents). lm-eval gets the same scores with `add_bos_token=True` in its model arguments (it then sends
  the `<s>`, which the server scores like any other token).

A task is a JSONL file, one item per line: {"context": str, "choices": [str, ...], "answer": int}.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from wdmoe.errors import WdmoeError
from wdmoe.input_files import read_text_file


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
    predictions: tuple[int, ...] = ()  # per item: the chosen choice (by summed log-probability)
    predictions_norm: tuple[int, ...] = ()  # per item: the chosen choice (by log-probability per character)
    loglikelihoods: tuple[tuple[float, ...], ...] = ()  # per item, per choice: log p(continuation | context)


# Bumped whenever scores change for the same model and task (cached results carry it: experiments/inputs.py).
SCORER_VERSION = "lm-eval-pairs/1"

def load_task(path: Path) -> list[Item]:
    """Items of a JSONL task file; a bad line is refused with its line number and what is expected."""
    items = []
    for number, line in enumerate(read_text_file(path, "task").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
            item = Item(str(raw["context"]), tuple(str(c) for c in raw["choices"]), int(raw["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise WdmoeError(
                f'{path}:{number}: expected {{"context": str, "choices": [str, ...], "answer": int}} ({exc})'
            ) from exc
        if not 0 <= item.answer < len(item.choices) or len(item.choices) < 2:
            raise WdmoeError(f"{path}:{number}: answer {item.answer} is not one of {len(item.choices)} choices")
        if not all(item.choices):
            raise WdmoeError(f"{path}:{number}: a choice is empty; every choice needs text to score")
        items.append(item)
    if not items:
        raise WdmoeError(f"{path} holds no item")
    return items


def _encode(tokenizer: Any, text: str, bos: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=bos)["input_ids"])


def encode_pair(tokenizer: Any, context: str, continuation: str, bos: bool = False) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as lm-evaluation-harness splits them (module docstring)."""
    if not context:
        rest = _encode(tokenizer, continuation, bos=False)
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise WdmoeError("an empty context needs a BOS or EOS token to stand for it; this tokenizer has neither")
        return ([prefix], rest) if not rest or rest[0] != prefix else (rest[:1], rest[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = _encode(tokenizer, context + continuation, bos)
    ctx = _encode(tokenizer, context, bos)
    return ctx, whole[len(ctx) :]


@torch.inference_mode()
def continuation_logprob(model: Any, context_ids: list[int], continuation_ids: list[int]) -> float:
    """log p(continuation | context), summed over the continuation's tokens, from one forward pass over exactly
    `context_ids + continuation_ids`."""
    if not context_ids or not continuation_ids:
        raise ValueError("continuation_logprob needs at least one context and one continuation token")
    ids = torch.tensor([context_ids + continuation_ids])
    logits = model(ids).logits[0, len(context_ids) - 1 : -1].float()  # (m, V) predicting the continuation
    logp = F.log_softmax(logits, dim=-1)
    target = torch.tensor(continuation_ids)
    per_token = logp.gather(1, target[:, None])[:, 0].tolist()
    return float(sum(per_token))  # summed in Python floats, as lm-eval sums the per-token values the server sends


def choice_logprobs(model: Any, tokenizer: Any, item: Item, bos: bool = False) -> list[float]:
    """log p(choice | context) of every choice of `item`, each from its own forward pass."""
    return [continuation_logprob(model, *encode_pair(tokenizer, item.context, choice, bos)) for choice in item.choices]


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as np.argmax


def score_task(
    model: Any, tokenizer: Any, items: list[Item], bos: bool = False, progress: Callable[[int], Any] | None = None
) -> TaskScores:
    """Accuracy and length-normalized accuracy of `model` on `items`, with per-item predictions and scores."""
    if tokenizer is None:
        raise WdmoeError("multiple-choice scoring needs a tokenizer; this model has none")
    predictions, predictions_norm, loglikelihoods = [], [], []
    for item in items:
        scores = choice_logprobs(model, tokenizer, item, bos)
        norm = [s / len(c) for s, c in zip(scores, item.choices, strict=True)]
        predictions.append(_argmax(scores))
        predictions_norm.append(_argmax(norm))
        loglikelihoods.append(tuple(scores))
        if progress is not None:
            progress(1)
    answers = [item.answer for item in items]
    return TaskScores(
        accuracy=sum(p == a for p, a in zip(predictions, answers, strict=True)) / len(items),
        accuracy_norm=sum(p == a for p, a in zip(predictions_norm, answers, strict=True)) / len(items),
        items=len(items),
        predictions=tuple(predictions),
        predictions_norm=tuple(predictions_norm),
        loglikelihoods=tuple(loglikelihoods),
    )
