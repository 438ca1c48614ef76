"""The byte-level BPE tokenizer (round trip, offline AutoTokenizer) and the unigram perplexity baseline."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from wdmoe.train.tokenizer import (
    encode_documents,
    train_tokenizer,
    unigram_perplexity,
    unigram_perplexity_from_ids,
)

TEXTS = [
    "The best way to predict the future is to invent it.\n\t\t-- Alan Kay",
    ":foo: /foo/, n.\n\nThe first metasyntactic variable.",
    "Real programmers don't comment their code. If it was hard to write, it should be hard to understand.",
] * 20


def test_tokenizer_round_trips_any_text_and_loads_offline(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    tokenizer.save_pretrained(tmp_path)

    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)

    unseen = "Ünïcode ✓, tabs\tand  double  spaces\n\nand a {brace}."
    for text in [*TEXTS[:3], unseen]:
        ids = loaded(text)["input_ids"]
        assert ids[0] == loaded.bos_token_id == 0
        assert loaded.decode(ids, skip_special_tokens=True) == text
    assert (loaded.eos_token, loaded.pad_token, len(loaded)) == ("</s>", "<pad>", 300)
    assert loaded("Alan Kay")["input_ids"] == tokenizer("Alan Kay")["input_ids"]


def test_vocab_smaller_than_the_byte_alphabet_is_refused() -> None:
    with pytest.raises(ValueError, match="vocab_size = 100"):
        train_tokenizer(TEXTS, vocab_size=100)


def test_encode_documents_frames_each_document_with_bos_and_eos() -> None:
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)

    stream = encode_documents(tokenizer, ["ab", "cd"])

    first = tokenizer("ab")["input_ids"]
    second = tokenizer("cd")["input_ids"]
    assert stream == [*first, 1, *second, 1]


def test_unigram_perplexity_matches_a_hand_computed_case() -> None:
    # train [0, 0, 1], vocab 4: p(0) = (2+1)/(3+4) = 3/7, p(1) = (1+1)/7 = 2/7;
    # eval [0, 1]: exp(-(ln 3/7 + ln 2/7) / 2) = sqrt(49/6) = 7/sqrt(6)
    assert unigram_perplexity_from_ids([0, 0, 1], [0, 1], vocab_size=4) == pytest.approx(7 / math.sqrt(6))
    # an unseen token gets the add-one mass: p(3) = 1/7
    assert unigram_perplexity_from_ids([0, 0, 1], [3], vocab_size=4) == pytest.approx(7.0)


def test_unigram_perplexity_of_texts_uses_the_tokenizers_ids() -> None:
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    train_text, eval_text = " ".join(TEXTS[:3]), "The future is hard to predict."

    train_ids = tokenizer.encode(train_text, add_special_tokens=False)
    eval_ids = tokenizer.encode(eval_text, add_special_tokens=False)
    counts = Counter(train_ids)
    log_p = [math.log((counts[t] + 1) / (len(train_ids) + len(tokenizer))) for t in eval_ids]

    expected = math.exp(-sum(log_p) / len(log_p))
    assert unigram_perplexity(tokenizer, train_text, eval_text) == pytest.approx(expected)
