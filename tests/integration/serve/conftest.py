"""Fixtures of the server tests: a tiny random Mixtral with a character tokenizer (`text_model_dir`, from
tests/integration/conftest.py), split over 3 devices.

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
