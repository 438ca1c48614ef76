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
from wdmoe.config import Scenario
from wdmoe.errors import WdmoeError
from wdmoe.eval.language import blocks, language_scores
from wdmoe.eval.multiple_choice import (
    Item,
    choice_logprobs,
    continuation_logprob,
    encode_pair,
    load_task,
    score_task,
)
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


def test_choice_logprobs_are_separate_passes_even_under_a_policy(mixtral_split: Path) -> None:
    """One forward pass per choice over exactly its tokens, as the server scores one echo + logprobs prompt: a
    policy deciding over all the tokens of a step sees no padding and no other choice."""
    model = DistributedMoE.from_pretrained(mixtral_split)
    static = Scenario.model_validate({"num_devices": model.num_devices, "fading": {"model": "none"}})
    model.set_policy(make_policy("wlr", theta=0.7), static)  # a static channel: the same tokens, the same choices
    tok = DigitTokenizer()
    item = Item("abc", ("d", "xyz", "pq"), 0)
    expected = [continuation_logprob(model, *encode_pair(tok, item.context, c)) for c in item.choices]
    assert choice_logprobs(model, tok, item) == expected


class DigitTokenizer:
    """A real, minimal tokenizer for the tests: each character becomes its code point modulo 128; with special
    tokens, BOS (id 1) comes first."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [1] * add_special_tokens + [ord(c) % 128 for c in text]}


class PairTokenizer:
    """Merges "ab" into one token (id 200), so tokenizing a word alone and in running text can differ."""

    bos_token_id = 1
    eos_token_id = 2

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids, i = [1] if add_special_tokens else [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(200)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return {"input_ids": ids}


def test_encode_pair_splits_as_lm_eval() -> None:
    tok = PairTokenizer()
    # the continuation's tokens are those of the whole text after the context's: "xa" + "b" is "x", "ab" -> the
    # context's last token is re-tokenized away, and lm-eval then scores the whole-text tokens after len(context)
    assert encode_pair(tok, "xa", "bc") == ([ord("x"), ord("a")], [ord("c")])
    # trailing spaces of the context move to the continuation
    assert encode_pair(tok, "q ", "ab") == ([ord("q")], [ord(" "), 200])
    assert encode_pair(tok, "q", " ab") == encode_pair(tok, "q ", "ab")
    # bos=True: the tokenizer's special tokens (BOS) start the context; the continuation is unchanged
    assert encode_pair(tok, "q", " ab", bos=True) == ([1, ord("q")], [ord(" "), 200])
    # an empty context is the BOS token (lm-eval's prefix token), in both conventions
    assert encode_pair(tok, "", "ab") == ([1], [200]) == encode_pair(tok, "", "ab", bos=True)


def test_score_task_picks_the_highest_likelihood_choice(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    tok = DigitTokenizer()
    context = "abc"
    choices = ("xy", "pq", "lmn")
    scores = [
        continuation_logprob(model, tok(context, False)["input_ids"], tok(c, False)["input_ids"]) for c in choices
    ]
    best = int(np.argmax(scores))
    norm_best = int(np.argmax([s / len(c) for s, c in zip(scores, choices, strict=True)]))
    items = [Item(context, choices, best), Item(context, choices, (best + 1) % 3)]
    result = score_task(model, tok, items)
    assert (result.accuracy, result.items) == (0.5, 2)
    assert result.predictions == (best, best) and result.predictions_norm == (norm_best, norm_best)
    assert result.loglikelihoods[0] == pytest.approx(scores, abs=1e-5)
    with_bos = score_task(model, tok, items, bos=True)
    bos_scores = [
        continuation_logprob(model, [1, *tok(context, False)["input_ids"]], tok(c, False)["input_ids"]) for c in choices
    ]
    assert with_bos.loglikelihoods[0] == pytest.approx(bos_scores, abs=1e-5)
    assert with_bos.loglikelihoods[0] != pytest.approx(scores, abs=1e-5)


def test_load_task_refuses_bad_lines_by_number(tmp_path: Path) -> None:
    path = tmp_path / "task.jsonl"
    path.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 1}) + '\n{"context": 1}\n')
    with pytest.raises(WdmoeError, match=r"task\.jsonl:2"):
        load_task(path)
    path.write_text(json.dumps({"context": "a", "choices": ["b", "c"], "answer": 5}) + "\n")
    with pytest.raises(WdmoeError, match="answer 5 is not one of 2 choices"):
        load_task(path)
    path.write_text(json.dumps({"context": "a", "choices": ["b", ""], "answer": 0}) + "\n")
    with pytest.raises(WdmoeError, match="a choice is empty"):
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
