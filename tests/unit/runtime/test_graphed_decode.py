"""The graphed decode's steps (static KV cache, 4D mask from the position, the routing on the device), run eagerly on
the CPU: the unsplit transformers model's greedy tokens, and the same per-layer telemetry as the runtime's path.
On CUDA the same steps are replayed from a graph (tests/unit/gpu/test_graphed_decode_cuda.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe.model.split import split_model
from wdmoe.runtime.device_moe import DeviceMoE
from wdmoe.runtime.graphed_decode import GraphedDecoder, cache_length, plain_greedy
from wdmoe.runtime.model import DistributedMoE

NEW_TOKENS = 10


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_graphed_steps_give_the_unsplit_models_tokens_and_the_runtimes_records(tiny_models, tmp_path: Path,
                                                                               family: str) -> None:
    reference = tiny_models[family]
    split_model(reference, tmp_path / "split", 3)
    ours = DistributedMoE.from_pretrained(tmp_path / "split")
    prompt = torch.tensor([[3, 17, 42, 5, 99]])
    with torch.inference_mode():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW_TOKENS,
                                      do_sample=False, pad_token_id=0)
    ours.generate(prompt, max_new_tokens=NEW_TOKENS, do_sample=False)  # the runtime's path (CPU: not graphed)
    eager_steps = list(ours.steps)
    ours.telemetry.clear()
    moe = DeviceMoE.for_runtime(ours.runtime, ours.device, ours.hf_model.dtype)
    assert moe is not None and not moe.on_gpu  # the CPU computes each assignment with the devices' FFN
    decoder = GraphedDecoder(ours.hf_model, ours.runtime, moe, cache_length(prompt.shape[1], NEW_TOKENS), False)

    with torch.inference_mode():
        first = decoder.generate(prompt, NEW_TOKENS, [])
        again = decoder.generate(prompt, NEW_TOKENS, [])  # the cache is reset in place between requests

    assert torch.equal(first, expected) and torch.equal(again, expected)
    steps = ours.steps[: len(eager_steps)]
    assert [s.phase for s in steps] == [s.phase for s in eager_steps] == ["prefill"] + ["decode"] * (NEW_TOKENS - 1)
    for graphed, eager in zip(steps[1:], eager_steps[1:], strict=True):
        assert [r.layer for r in graphed.layers] == [r.layer for r in eager.layers]
        for g, e in zip(graphed.layers, eager.layers, strict=True):
            assert np.array_equal(g.topk_index, e.topk_index)
            # attention over the masked static cache sums in another order: the last bits differ
            assert np.allclose(g.topk_weight, e.topk_weight, rtol=1e-4)
            assert np.array_equal(g.tokens_down, e.tokens_down) and np.array_equal(g.assignments, e.assignments)
            assert np.array_equal(g.bits_up, e.bits_up)
            assert g.logits is not None and np.allclose(g.logits, e.logits, rtol=1e-4, atol=1e-5)
    ours.close()


def test_a_policy_or_compression_leaves_the_step_to_the_host(mixtral_split: Path) -> None:
    ours = DistributedMoE.from_pretrained(mixtral_split)
    assert DeviceMoE.for_runtime(ours.runtime, ours.device, torch.float32) is not None
    ours.set_compression("int8")
    assert DeviceMoE.for_runtime(ours.runtime, ours.device, torch.float32) is None
    ours.set_compression(None)
    from wdmoe.policy.topk import TopK

    ours.set_policy(TopK())
    assert DeviceMoE.for_runtime(ours.runtime, ours.device, torch.float32) is None
    ours.close()


def test_only_plain_greedy_search_is_graphed(tiny_models) -> None:
    config = tiny_models["mixtral"].generation_config
    assert plain_greedy(config, {"max_new_tokens": 4, "do_sample": False}) == (4, [])
    assert plain_greedy(config, {"max_new_tokens": 4, "do_sample": True}) is None
    assert plain_greedy(config, {"max_new_tokens": 4, "repetition_penalty": 1.3}) is None
    assert plain_greedy(config, {"max_length": 9}) is None
    config = config.__class__(**{**config.to_dict(), "eos_token_id": [2, 5]})
    assert plain_greedy(config, {"max_new_tokens": 4}) == (4, [2, 5])
    assert plain_greedy(config, {"max_new_tokens": 4, "min_new_tokens": 2}) is None
