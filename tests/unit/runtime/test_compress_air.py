"""Compression on the air (wdmoe.runtime.air): activation dtype, token fusion, and token pruning (GateThreshold)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.policy.prune import GateThreshold
from wdmoe.policy.topk import TopK
from wdmoe.runtime.air import AirCompression, fuse_rows
from wdmoe.runtime.telemetry import LayerRecord

IDS = torch.tensor([[3, 17, 5, 99, 42, 7, 8, 11, 64, 2]])


def _bits(model: DistributedMoE) -> tuple[int, int]:
    summary = model.summary()
    return sum(summary["bits_down_per_device"]), sum(summary["bits_up_per_device"])


@pytest.mark.parametrize("air_dtype", ["fp16", "int8"])
def test_air_dtype_scales_the_bits_by_the_exact_factor(mixtral_split: Path, air_dtype: str) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    hidden = int(model.config.hidden_size)
    reference = model(IDS).logits
    base_down, base_up = _bits(model)
    model.set_compression(air_dtype)
    model.telemetry.clear()
    logits = model(IDS).logits
    down, up = _bits(model)
    per_token = 16 * hidden if air_dtype == "fp16" else 8 * hidden + 32  # int8: one float32 scale per token
    assert down * 32 * hidden == base_down * per_token and up * 32 * hidden == base_up * per_token
    assert torch.allclose(logits, reference, atol=0.05) and not torch.equal(logits, reference)


def test_the_radio_model_counts_the_air_bits(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=TopK())
    model.set_compression("int8")
    model(IDS)
    record = model.steps[-1].layers[0]
    hidden = int(model.config.hidden_size)
    assert np.array_equal(record.modeled.bits_dl, record.bits_down.astype(float))
    assert np.array_equal(record.modeled.bits_ul, record.bits_up.astype(float))
    assert record.bits_down.sum() == record.tokens_down.sum() * (8 * hidden + 32)
    model.set_compression()
    assert model.wireless is not None and model.wireless.bits_per_token == hidden * 16  # the scenario's again


def test_fusion_of_exact_duplicates_changes_nothing_but_the_tokens_sent(mixtral_split: Path) -> None:
    # Built at the layer, not from a batch of two equal prompts: a multithreaded GEMM may round the two copies of a
    # batch row differently, and tau = 1 merges bit-equal rows only.
    model = DistributedMoE.from_pretrained(mixtral_split)
    layer, hidden_size = model.runtime.placement.moe_layers[0], int(model.config.hidden_size)
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(6, hidden_size, generator=gen)
    index = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(6)])
    weight = torch.softmax(torch.randn(6, 2, generator=gen), dim=-1)
    hidden, index, weight = torch.cat([rows, rows]), torch.cat([index, index]), torch.cat([weight, weight])

    def layer_step() -> tuple[torch.Tensor, LayerRecord]:
        step = model.telemetry.start("prefill", hidden.shape[0])
        out = model.runtime.run(layer, hidden, index, weight, None)
        (record,) = step.layers
        model.telemetry.finish(0.0, 0.0)
        return out, record

    reference, plain = layer_step()
    model.set_compression(fusion_tau=1.0)
    fused_out, fused = layer_step()
    assert torch.allclose(fused_out, reference, atol=1e-6, rtol=0)
    sent = int(plain.tokens_down.sum())
    assert fused.fused_tokens == sent - int(fused.tokens_down.sum()) == sent // 2


def test_fusion_below_one_merges_near_duplicates() -> None:
    x = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [1.0, 0.0]])
    fused, member = fuse_rows(x, 0.95)
    assert member.tolist() == [0, 0, 1, 0]
    assert torch.allclose(fused, torch.tensor([[2.99 / 3, 0.1 / 3], [0.0, 1.0]]))
    rows = torch.tensor([0, 1, 2, 3, 3])
    sent, token_index, saved = AirCompression(fusion_tau=0.95).down(x, rows)
    assert saved == 2 and sent.shape == (2, 2) and token_index.tolist() == [0, 0, 1, 0, 0]


def test_air_options_are_checked() -> None:
    with pytest.raises(ValueError, match="air_dtype = 'int4'"):
        AirCompression("int4")
    with pytest.raises(ValueError, match=r"fusion tau = 0\.0"):
        AirCompression(fusion_tau=0.0)


def test_pruning_with_threshold_zero_equals_topk(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=TopK())
    topk = model(IDS).logits
    model.set_policy(GateThreshold(0.0))
    assert torch.equal(model(IDS).logits, topk)
    model.set_policy(GateThreshold(0.5))  # k = 2: only the top expert carries half the weight or more
    model.telemetry.clear()
    pruned = model(IDS).logits
    assert model.summary()["experts_per_token_mean"] < 2.0 and not torch.equal(pruned, topk)
