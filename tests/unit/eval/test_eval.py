"""Evaluation: perplexity, next-token accuracy, option log-likelihood, the unigram baseline, task building."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from wdmoe import DistributedMoE
from wdmoe.errors import WdmoeError
from wdmoe.eval.language import blocks, language_scores
from wdmoe.eval.multiple_choice import Item, choice_logprobs, continuation_logprob, load_task, score_task
from wdmoe.eval.tasks import continuation_task, save_task
from wdmoe.eval.unigram import unigram_counts, unigram_perplexity_from_counts
from wdmoe.policy.factory import make_policy

DOCS = [list(range(3, 40)), [5, 9, 2, 7, 7, 7, 1, 4, 100, 3], list(range(60, 120, 2))]


def test_perplexity_and_accuracy_equal_the_unsplit_model(mixtral_split: Path, tiny_models) -> None:
    reference = tiny_models["mixtral"]
    model = DistributedMoE.from_pretrained(mixtral_split)
    ours = language_scores(model, DOCS, block_size=16)
    nll, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for chunk in blocks(DOCS, 16):
            logits = reference(torch.tensor([chunk])).logits[0, :-1]
            target = torch.tensor(chunk[1:])
            nll += float(F.cross_entropy(logits, target, reduction="sum"))
            hits += int((logits.argmax(-1) == target).sum())
            count += len(chunk) - 1
    assert ours.tokens == count == sum(len(d) for d in DOCS) - len(blocks(DOCS, 16))
    assert ours.perplexity == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert ours.next_token_accuracy == hits / count


def test_dropping_experts_changes_the_perplexity(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    base = language_scores(model, DOCS, block_size=16).perplexity
    model.set_policy(make_policy("wlr", theta=1.0))
    model.telemetry.clear()
    assert language_scores(model, DOCS, block_size=16).perplexity != pytest.approx(base, rel=1e-3)
    assert model.summary()["experts_per_token_mean"] == 1.0


def test_blocks_cut_documents_and_drop_single_tokens() -> None:
    assert blocks([[1, 2, 3, 4, 5], [9]], block_size=2) == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="block_size = 1"):
        blocks([[1, 2]], block_size=1)


def test_unigram_perplexity_hand_computed() -> None:
    counts = unigram_counts([0, 0, 1], vocab_size=3)  # counts 2, 1, 0; denominator 3 + 3 = 6
    assert counts == [2, 1, 0]
    # p(0) = 3/6, p(2) = 1/6: perplexity = exp(-(ln 1/2 + ln 1/6) / 2) = sqrt(12)
    assert unigram_perplexity_from_counts(counts, [0, 2]) == pytest.approx(math.sqrt(12.0))


def test_continuation_logprob_is_the_sum_of_the_continuation_token_logprobs(mixtral_split: Path, tiny_models) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    context, continuation = [4, 8, 15, 16], [23, 42]
    with torch.no_grad():
        logp = F.log_softmax(tiny_models["mixtral"](torch.tensor([context + continuation])).logits[0], -1)
    expected = float(logp[3, 23] + logp[4, 42])
    assert continuation_logprob(model, context, continuation) == pytest.approx(expected, abs=1e-4)


def test_batched_choice_logprobs_equal_separate_passes(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    context, choices = [4, 8, 15], [[16], [23, 42, 7], [99, 1]]
    expected = [continuation_logprob(model, context, c) for c in choices]
    assert choice_logprobs(model, context, choices) == pytest.approx(expected, abs=1e-4)


class DigitTokenizer:
    """A real, minimal tokenizer for the tests: each character becomes its code point modulo 128."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) % 128 for c in text]}


def test_score_task_picks_the_highest_likelihood_choice(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    tok = DigitTokenizer()
    context = "abc"
    choices = ("xy", "pq", "lm")
    scores = [continuation_logprob(model, tok(context)["input_ids"], tok(c)["input_ids"]) for c in choices]
    best = int(np.argmax(scores))
    items = [Item(context, choices, best), Item(context, choices, (best + 1) % 3)]
    result = score_task(model, tok, items)
    assert (result.accuracy, result.items) == (0.5, 2)


def test_load_task_refuses_bad_lines_by_number(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 1}) + "\n{\"context\": 1}\n")
    with pytest.raises(WdmoeError, match=r"task\.jsonl:2"):
        load_task(path)
    path.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 5}) + "\n")
    with pytest.raises(WdmoeError, match="answer 5 is not one of 2 choices"):
        load_task(path)


def test_continuation_task_is_reproducible_and_its_answer_is_the_true_continuation(tmp_path: Path) -> None:
    docs = [" ".join(f"w{d}x{i}" for i in range(30)) for d in range(10)]
    items = continuation_task(docs, num_items=6, context_words=5, continuation_words=3, seed=4)
    assert items == continuation_task(docs, num_items=6, context_words=5, continuation_words=3, seed=4)
    for item in items:
        doc = item.context.split()[0].split("x")[0]
        assert item.choices[item.answer] == " " + " ".join(f"{doc}x{i}" for i in range(5, 8))
        assert len(set(item.choices)) == 4
    save_task(items, tmp_path / "t.jsonl")
    assert load_task(tmp_path / "t.jsonl") == items
