"""Telemetry: the router trace equals the model's router, and bits on air add up to what was sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wdmoe import DistributedMoE


def test_layer_records_count_tokens_and_bits(mixtral_split: Path, tiny_models) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    ids = torch.arange(3, 13).unsqueeze(0)  # 10 tokens
    model(ids)
    (step,) = model.steps
    hidden, k = model.config.hidden_size, model.config.num_experts_per_tok
    assert step.phase == "prefill" and step.num_tokens == 10
    assert [rec.layer for rec in step.layers] == list(model.placement.moe_layers)
    for rec in step.layers:
        assert rec.topk_index.shape == (10, k) and rec.keep.all()
        assert rec.assignments.sum() == 10 * k
        # Each device receives each token once, however many of its experts the token uses.
        device_of = model.placement.primary_table(rec.layer)[rec.topk_index]
        for device in range(model.num_devices):
            assert rec.tokens_down[device] == np.any(device_of == device, axis=1).sum()
        np.testing.assert_array_equal(rec.bits_down, rec.tokens_down * hidden * 32)
        np.testing.assert_array_equal(rec.bits_up, rec.assignments * hidden * 32)
        assert ((rec.device_time_s > 0) == (rec.assignments > 0)).all()
        assert rec.bs_time_s > 0 and rec.dispatch_time_s > 0
        np.testing.assert_allclose(rec.weight.sum(axis=1), 1.0, rtol=1e-6)  # Mixtral renormalizes its top-2


def test_router_trace_equals_the_hf_router(mixtral_split: Path, tiny_models) -> None:
    reference = tiny_models["mixtral"]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    hooks = [
        reference.model.layers[i].mlp.gate.register_forward_hook(
            lambda _m, _i, out, i=i: seen.__setitem__(i, tuple(t.detach() for t in out))
        )
        for i in range(len(reference.model.layers))
    ]
    ids = torch.arange(20, 27).unsqueeze(0)
    with torch.no_grad():
        reference(ids)
    for hook in hooks:
        hook.remove()
    model = DistributedMoE.from_pretrained(mixtral_split)
    model(ids)
    for rec in model.steps[0].layers:
        logits, weights, index = seen[rec.layer]
        np.testing.assert_array_equal(rec.topk_index, index.numpy())
        np.testing.assert_allclose(rec.topk_weight, weights.numpy(), atol=1e-6)
        assert rec.logits is not None
        np.testing.assert_allclose(rec.logits, logits.numpy(), atol=1e-5)


def test_summary_reports_two_experts_per_token_under_topk(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, do_sample=False)
    summary = model.summary()
    assert len(model.steps) == 4
    assert summary["experts_per_token_mean"] == 2.0
    total_tokens = (3 + 3) * len(model.placement.moe_layers)  # prefill 3 + 3 decode steps, per MoE layer
    assert sum(summary["bits_up_per_device"]) == total_tokens * 2 * model.config.hidden_size * 32
