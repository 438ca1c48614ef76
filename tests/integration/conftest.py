"""Fixtures shared by the integration tests (serve, faults): a tiny random Mixtral with a character tokenizer.

The tokenizer maps each printable ASCII character (and newline) to one id, so text prompts work and a prompt's
tokens are easy to reason about; the model stays the tiny random one of `wdmoe.model.tiny` (hidden 32, 2 layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

SPECIALS = ("<pad>", "<eos>", "<unk>")


def char_tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = ["\n", *(chr(c) for c in range(32, 127))]
    vocab = {token: i for i, token in enumerate((*SPECIALS, *chars))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HF directory: tiny random Mixtral (vocab 128, no EOS so lengths are exact) + the character tokenizer."""
    from wdmoe.model.tiny import tiny_model

    out = tmp_path_factory.mktemp("serve-model") / "hf"
    tiny_model("mixtral", seed=3).save_pretrained(out)
    char_tokenizer().save_pretrained(out)
    return out
