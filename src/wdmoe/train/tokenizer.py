"""Tokenizer, stage 2 of the training pipeline: documents -> a byte-level BPE vocabulary -> token ids.

Contract: `train_tokenizer(texts, vocab_size)` returns a `PreTrainedTokenizerFast` whose `save_pretrained(dir)` is
loadable offline with `AutoTokenizer.from_pretrained(dir)`. Byte-level BPE has no unknown token: every string
round-trips exactly through `encode` / `decode`. Encoding with special tokens prepends `<s>` (as Mixtral's does);
`encode_documents` also appends `</s>` after each document, so the model learns where a document ends.
`unigram_perplexity` is the reference the model's held-out perplexity is compared with.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (BOS, EOS, PAD)  # ids 0, 1, 2
DEFAULT_VOCAB_SIZE = 4096
_BYTE_ALPHABET = 256


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer of `vocab_size` entries (256 bytes, the special tokens, merges) trained on `texts`."""
    if vocab_size < _BYTE_ALPHABET + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size = {vocab_size}: byte-level BPE needs at least {_BYTE_ALPHABET + len(SPECIAL_TOKENS)} "
            "entries (256 bytes and the special tokens)"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(BOS)
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,
    )


def encode_documents(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str]) -> list[int]:
    """One stream of ids: `<s> doc </s>` for each document, in order (the packing input of the training loop)."""
    eos_id = tokenizer.eos_token_id
    assert eos_id is not None  # set by train_tokenizer
    stream: list[int] = []
    for ids in tokenizer(list(documents), add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        stream.append(eos_id)
    return stream


def unigram_perplexity_from_ids(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """exp(-(1/N) Σ_eval ln p(t)), with p(t) = (count_train(t) + 1) / (len(train) + vocab_size) (add-one smoothing)."""
    if not eval_ids:
        raise ValueError("eval_ids is empty: perplexity needs at least one evaluation token")
    counts = Counter(train_ids)
    denominator = len(train_ids) + vocab_size
    nll = -sum(math.log((counts[t] + 1) / denominator) for t in eval_ids)
    return math.exp(nll / len(eval_ids))


def unigram_perplexity(tokenizer: PreTrainedTokenizerFast, train_text: str, eval_text: str) -> float:
    """Perplexity of `eval_text`'s tokens (no special tokens) under the add-one unigram model of `train_text`'s."""
    train_ids = tokenizer.encode(train_text, add_special_tokens=False)
    eval_ids = tokenizer.encode(eval_text, add_special_tokens=False)
    return unigram_perplexity_from_ids(train_ids, eval_ids, len(tokenizer))
