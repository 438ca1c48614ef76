"""Fixtures of the server tests: a tiny random Mixtral with a character tokenizer, split over 3 devices.

The tokenizer maps each printable ASCII character (and newline) to one id, so text prompts work and a prompt's
tokens are easy to reason about; the model stays the tiny random one of `wdmoe.model.tiny` (hidden 32, 2 layers).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wdmoe.serve import Engine, Limits, create_app

NUM_DEVICES = 3
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


def load_engine(model_dir: Path, **policy: Any) -> Engine:
    from wdmoe.config import Scenario
    from wdmoe.policy.factory import make_policy
    from wdmoe.runtime.model import DistributedMoE

    model = DistributedMoE.from_pretrained(model_dir, num_devices=NUM_DEVICES)
    model.set_policy(make_policy(policy.pop("name", "topk"), **policy), Scenario.default(NUM_DEVICES))
    return Engine(model, name="tiny-mixtral")


@pytest.fixture(scope="session")
def engine(text_model_dir: Path) -> Iterator[Engine]:
    engine = load_engine(text_model_dir)
    yield engine
    engine.close()
    engine.model.close()


@pytest.fixture(scope="session")
def ids_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The same kind of model without a tokenizer: prompts are token ids."""
    from wdmoe.model.tiny import tiny_model

    out = tmp_path_factory.mktemp("serve-ids-model") / "hf"
    tiny_model("mixtral", seed=4).save_pretrained(out)
    engine = load_engine(out)
    yield engine
    engine.close()
    engine.model.close()


LIMITS = Limits(max_prompt_tokens=64, max_tokens=16, max_prompts=8, max_queue=32)


@pytest.fixture(scope="session")
def client(engine: Engine) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    with TestClient(create_app(engine, limits=LIMITS)) as test_client:
        yield test_client
