"""With the model's own top-k, the split runtime is the unsplit Hugging Face model (logits and tokens)."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from transformers import DynamicCache, MixtralForCausalLM

from tests.conftest import FAMILIES
from wdmoe import DistributedMoE
from wdmoe.model.split import split_model

DECODE_STEPS = 16
# the forward's cache argument: `past_key_values` up to transformers 5.23, `cache` from 5.24 (the old name warns)
CACHE = "cache" if "cache" in inspect.signature(MixtralForCausalLM.forward).parameters else "past_key_values"


def prompt(seed: int = 3, length: int = 9) -> torch.Tensor:
    return torch.randint(3, 128, (1, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_unsplit_on_prefill_and_each_decode_step(family, tiny_models, tmp_path: Path) -> None:
    reference = tiny_models[family]
    split_model(reference, tmp_path / "split", 3)
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    ids = prompt()
    ref_cache, our_cache = DynamicCache(config=reference.config), DynamicCache(config=reference.config)
    with torch.no_grad():
        expected = reference(ids, **{CACHE: ref_cache}, use_cache=True).logits
    actual = model(ids, **{CACHE: our_cache}, use_cache=True).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    for _ in range(DECODE_STEPS):
        token = expected[:, -1:].argmax(-1)
        with torch.no_grad():
            expected = reference(token, **{CACHE: ref_cache}, use_cache=True).logits
        actual = model(token, **{CACHE: our_cache}, use_cache=True).logits
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)
    phases = [step.phase for step in model.steps]
    assert phases == ["prefill"] + ["decode"] * DECODE_STEPS


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generation_is_token_identical(family, tiny_models, tmp_path: Path) -> None:
    reference = tiny_models[family]
    split_model(reference, tmp_path / "split", 4)
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    ids = prompt(seed=11, length=5)
    expected = reference.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=DECODE_STEPS, do_sample=False, pad_token_id=0
    )
    actual = model.generate(ids, max_new_tokens=DECODE_STEPS, do_sample=False)
    assert actual.shape == (1, 5 + DECODE_STEPS)
    assert torch.equal(actual, expected)


def test_sampling_follows_the_seed_like_hf(tiny_models, mixtral_split: Path) -> None:
    reference = tiny_models["mixtral"]
    model = DistributedMoE.from_pretrained(mixtral_split)
    ids = prompt(seed=5, length=4)
    kwargs = dict(max_new_tokens=12, do_sample=True, temperature=0.8, top_p=0.9)
    torch.manual_seed(123)
    expected = reference.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kwargs)
    torch.manual_seed(123)
    actual = model.generate(ids, **kwargs)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_directory_saved_to_disk_loads_offline_and_splits_on_the_fly(
    family, tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reference = tiny_models[family]
    reference.save_pretrained(tmp_path / "hf")
    model = DistributedMoE.from_pretrained(tmp_path / "hf", num_devices=2)
    ids = prompt(seed=1, length=6)
    expected = reference.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=DECODE_STEPS, do_sample=False, pad_token_id=0
    )
    assert torch.equal(model.generate(ids, max_new_tokens=DECODE_STEPS, do_sample=False), expected)
    assert model.num_devices == 2
    model.close()
