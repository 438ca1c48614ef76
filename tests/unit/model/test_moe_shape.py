"""The cost side on any family: `wdmoe plan`'s requirement (requirement_of, calibrate), the plan source
(assemble_model) and the runtime's modeled costs (DistributedMoE.model_costs) derive the experts' bytes, FLOPs,
MoE layers, E, top-k and the BS's layers from the model's experts modules, not from Mixtral's names.

References are counted here independently of `wdmoe.model.discover`: a routed expert's tensors are the state-dict
entries with ".experts." in their name (shared experts are named "shared_expert(s)"), a layer's BS parameters the
rest of "model.layers.{i}.", and the FLOPs are worked by hand.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.model.moe_shape import moe_shape, moe_shape_of_config
from wdmoe.model.shipped import SHIPPED_DIR, has_shipped_model
from wdmoe.model.split import load_hf_model, split_model
from wdmoe.model.zoo import tiny_any_model
from wdmoe.plan.calibrate import calibrate, requirement_of
from wdmoe.plan.source import assemble_model
from wdmoe.radio.costs import ModelCosts

E, H = 8, 32  # the zoo's tiny models: 8 experts, hidden 32, top-2
# biases + interleaved gate_up (gpt_oss), shared experts + a leading dense layer + sigmoid routing (deepseek_v3),
# a shared expert (qwen2_moe), MoE every 2nd layer in a hybrid Mamba model with a dense layer after the last MoE
# layer (jamba, 3 layers: MoE at 1), a hybrid Mamba/attention MoE (granitemoehybrid), plain olmoe and mixtral
CASES: dict[str, dict[str, Any]] = {
    "gpt_oss": {},
    "deepseek_v3": dict(num_hidden_layers=3, first_k_dense_replace=1),
    "qwen2_moe": {},
    "jamba": dict(num_hidden_layers=3),
    "granitemoehybrid": {},
    "olmoe": {},
    "mixtral": {},
}
EXPERTS = re.compile(r"^model\.layers\.(\d+)\..*\.experts\.")


def _randomized(model_type: str) -> Any:
    """The tiny model with every routed expert's tensor random (biases too: zeros would hide a dropped bias)."""
    model = tiny_any_model(model_type, seed=3, **CASES[model_type])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if EXPERTS.match(name):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.1)
    return model


def _expert_entries(model: Any) -> dict[str, torch.Tensor]:
    return {k: t for k, t in model.state_dict().items() if EXPERTS.match(k)}


def _bs_layer_params(model: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    for name, p in model.named_parameters():
        found = re.match(r"^model\.layers\.(\d+)\.", name)
        if found and not EXPERTS.match(name):
            out[int(found[1])] = out.get(int(found[1]), 0) + int(p.numel())
    return out


@pytest.mark.parametrize("model_type", list(CASES))
def test_expert_bytes_and_layers_are_the_models_own_per_expert_tensors(model_type: str) -> None:
    model = _randomized(model_type)
    entries = _expert_entries(model)
    layers = sorted({int(EXPERTS.match(k)[1]) for k in entries})  # type: ignore[index]
    assert all(t.shape[0] == E for t in entries.values())
    per_expert_bytes = sum(t.numel() * t.element_size() for t in entries.values()) / (E * len(layers))
    per_expert_params = sum(t.numel() for t in entries.values()) // (E * len(layers))
    total = sum(p.numel() for p in model.parameters())

    requirement = requirement_of(model)

    assert requirement.moe_layers == tuple(layers)
    assert (requirement.num_experts, requirement.top_k, requirement.hidden_size) == (E, 2, H)
    assert requirement.expert_params == per_expert_params
    assert np.all(requirement.expert_bytes[32] == per_expert_bytes)
    assert requirement.non_expert_params == total - per_expert_params * E * len(layers)
    assert moe_shape_of_config(model.config) == moe_shape(model)  # the meta build the runtime uses agrees


def test_gpt_oss_counts_its_biases_and_flops_by_hand() -> None:
    # per expert: gate_up_proj (H, 2I) + gate_up_proj_bias (2I) + down_proj (I, H) + down_proj_bias (H), I = 64
    inter = 64
    shape = moe_shape(_randomized("gpt_oss"))
    assert shape.expert_params == H * 2 * inter + 2 * inter + inter * H + H == 6304
    # 2 FLOPs per matrix weight (a multiply-add), 1 per bias element (an add)
    assert shape.expert_flops_per_token == 2 * (H * 2 * inter + inter * H) + 2 * inter + H == 12448


def test_a_gated_ffn_without_biases_keeps_the_2_times_3HI_count() -> None:
    shape = moe_shape(_randomized("deepseek_v3"))  # moe_intermediate_size 32
    assert shape.expert_flops_per_token == ModelCosts.gated(H, 32, 4.0, {}).expert_flops_per_token == 2 * 3 * H * 32


@pytest.mark.parametrize("model_type", ["gpt_oss", "deepseek_v3", "jamba"])
def test_model_costs_derive_bytes_flops_and_the_bs_layers(model_type: str, tmp_path: Path) -> None:
    reference = _randomized(model_type)
    split_model(reference, tmp_path / "split", 3)
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    layer_params = _bs_layer_params(reference)
    moe_layers = sorted({int(EXPERTS.match(k)[1]) for k in _expert_entries(reference)})  # type: ignore[index]
    expected: dict[int, float] = {}
    previous = -1
    for i, layer in enumerate(moe_layers):  # the layers since the previous MoE layer; the trailing ones with the last
        stop = len(layer_params) if i == len(moe_layers) - 1 else layer + 1
        expected[layer] = float(sum(layer_params[j] for j in range(previous + 1, stop)))
        previous = layer
    shape = moe_shape(reference)

    costs = model.model_costs()

    assert costs.bs_params_per_layer == expected
    assert costs.hidden_size == H and costs.bytes_per_param == 4.0
    assert costs.expert_weight_bytes == shape.expert_params * 4.0
    assert costs.expert_flops_per_token == shape.expert_flops_per_token
    model.close()


def test_deepseek_and_jamba_bs_layers_by_hand() -> None:
    deepseek = moe_shape(_randomized("deepseek_v3"))
    assert deepseek.moe_layers == (1, 2)  # first_k_dense_replace = 1: layer 0 is dense, at the BS
    per_layer = deepseek.bs_params_per_layer()
    assert per_layer[1] == deepseek.layer_params[0] + deepseek.layer_params[1] > 2 * deepseek.layer_params[2]
    jamba = moe_shape(_randomized("jamba"))
    assert jamba.moe_layers == (1,)
    assert jamba.bs_params_per_layer() == {1: float(sum(jamba.layer_params.values()))}


@pytest.mark.parametrize("model_type", ["gpt_oss", "jamba", "granitemoehybrid", "deepseek_v3"])
def test_calibrate_and_assemble_run_on_other_layouts(model_type: str, tmp_path: Path) -> None:
    reference = _randomized(model_type)
    reference.save_pretrained(tmp_path / "hf")
    requirement, _ = calibrate(tmp_path / "hf", max_tokens=96, block_tokens=32)
    # every token routed to top_k experts in every MoE layer, whatever the router returns
    np.testing.assert_allclose(requirement.popularity.sum(axis=1), requirement.top_k)
    assert requirement.calibration_tokens == 96 and (requirement.importance > 0).any()
    assert requirement.expert_flops_per_token == moe_shape(reference).expert_flops_per_token
    split_model(reference, tmp_path / "split", 3, bits=16)
    assembled = assemble_model(tmp_path / "split")
    want, got = reference.state_dict(), assembled.state_dict()
    assert sorted(want) == sorted(got)
    for name, tensor in want.items():  # experts stored in fp16: exact up to fp16 rounding; the BS exact
        tol = 1e-3 if EXPERTS.match(name) else 0.0
        torch.testing.assert_close(got[name], tensor, rtol=tol, atol=tol, msg=name)
        assert not EXPERTS.match(name) or not torch.equal(got[name], torch.zeros_like(tensor)), name


def test_assemble_dequantizes_int8_matrices_and_keeps_the_biases(tmp_path: Path) -> None:
    reference = _randomized("gpt_oss")
    split_model(reference, tmp_path / "split", 3, bits=8)
    assembled = assemble_model(tmp_path / "split").state_dict()
    for name, tensor in _expert_entries(reference).items():
        if name.endswith("_bias"):  # vectors are stored float: exact
            assert torch.equal(assembled[name], tensor), name
        else:  # per-row absmax int8: within half a step of the row's largest weight
            step = tensor.abs().amax(dim=-1, keepdim=True) / 127
            assert bool(((assembled[name] - tensor).abs() <= step / 2 + 1e-7).all()), name
            assert not torch.equal(assembled[name], tensor), name


def _mixtral_only_requirement(hf: Any) -> tuple[int, int, int]:
    """What the Mixtral-only code computed: (expert params, non-expert params, dtype bits)."""
    layers = [layer.mlp.experts for layer in hf.model.layers]
    expert = int(layers[0].gate_up_proj[0].numel() + layers[0].down_proj[0].numel())
    total = sum(int(p.numel()) for p in hf.parameters())
    bits = int(layers[0].gate_up_proj.element_size() * 8)
    return expert, total - expert * len(layers) * int(hf.config.num_local_experts), bits


def _mixtral_only_costs(model: DistributedMoE) -> ModelCosts:
    config = model.config
    per_layer: dict[int, float] = {}
    for index, layer in enumerate(model.hf_model.model.layers):
        per_layer[index] = float(sum(p.numel() for p in layer.parameters()))
    return ModelCosts.gated(int(config.hidden_size), int(config.intermediate_size),
                            float(next(model.hf_model.parameters()).element_size()), per_layer)


@pytest.mark.parametrize("source", ["tiny", "shipped"])
def test_mixtral_numbers_are_those_of_the_mixtral_only_code(source: str, tmp_path: Path,
                                                           tiny_models: dict[str, Any]) -> None:
    if source == "shipped" and not has_shipped_model():
        pytest.skip("no shipped model in this checkout")
    hf = tiny_models["mixtral"] if source == "tiny" else load_hf_model(SHIPPED_DIR)
    requirement = requirement_of(hf)
    expert, non_expert, bits = _mixtral_only_requirement(hf)
    assert requirement.expert_params == expert and requirement.non_expert_params == non_expert
    assert requirement.dtype_bits == bits
    assert requirement.expert_flops_per_token == 2.0 * expert
    assert requirement.moe_layers == tuple(range(len(hf.model.layers)))
    assert requirement.top_k == hf.config.num_experts_per_tok
    split_model(hf, tmp_path / "split", 3)
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    assert model.model_costs() == _mixtral_only_costs(model)
    model.close()
