"""`split_model`: what lands in each shard, the manifest, and the errors that refuse bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from wdmoe import DistributedMoE
from wdmoe.errors import PlacementError, ShardError, UnsupportedModelError
from wdmoe.model.shards import VERIFIED, Manifest, sha256_file
from wdmoe.model.split import split_model
from wdmoe.model.tiny import tiny_model
from wdmoe.placement import Placement


def copy_split(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "split"
    shutil.copytree(src, dst)
    return dst


def test_default_placement_is_expert_mod_devices_and_shards_hold_exactly_their_experts(
    mixtral_split: Path, tiny_models
) -> None:
    reference = tiny_models["mixtral"]
    manifest = Manifest.read(mixtral_split)
    assert manifest.family == "mixtral"
    for layer in manifest.placement.moe_layers:
        assert [ids for ids in manifest.placement.devices[layer]] == [(e % 3,) for e in range(8)]
    for device in range(3):
        tensors = load_file(str(mixtral_split / f"devices/device-{device}.safetensors"))
        experts = reference.model.layers[0].mlp.experts
        held = {(int(k.split(".")[1]), int(k.split(".")[3])) for k in tensors}
        assert held == {(layer, e) for layer in (0, 1) for e in range(8) if e % 3 == device}
        for layer, expert in held:
            experts = reference.model.layers[layer].mlp.experts
            assert torch.equal(tensors[f"layers.{layer}.experts.{expert}.gate_up_proj"], experts.gate_up_proj[expert])
            assert torch.equal(tensors[f"layers.{layer}.experts.{expert}.down_proj"], experts.down_proj[expert])


def test_manifest_lists_the_sha256_of_every_file_and_bs_part_has_no_routed_expert(mixtral_split: Path) -> None:
    manifest = Manifest.read(mixtral_split)
    on_disk = {str(p.relative_to(mixtral_split)) for p in mixtral_split.rglob("*") if p.is_file()}
    assert set(manifest.files) == on_disk - {"manifest.json", VERIFIED}
    for relative, digest in manifest.files.items():
        assert sha256_file(mixtral_split / relative) == digest
    bs_keys = load_file(str(mixtral_split / "bs/model.safetensors")).keys()
    assert not [k for k in bs_keys if ".mlp.experts." in k]
    assert "model.layers.0.mlp.gate.weight" in bs_keys


def test_in_process_devices_hold_only_their_own_shards(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    for device, worker in enumerate(model.pool.workers):
        assert sorted(worker.weights) == model.placement.experts_on(device)


def test_replicas_put_one_expert_on_two_devices_and_stay_exact(tiny_models, tmp_path: Path) -> None:
    reference = tiny_models["olmoe"]
    rows = tuple((e % 4, (e + 1) % 4) for e in range(8))
    placement = Placement(4, 8, {0: rows, 1: rows})
    split_model(reference, tmp_path / "split", 4, placement)
    for device in range(4):
        keys = load_file(str(tmp_path / f"split/devices/device-{device}.safetensors")).keys()
        assert f"layers.0.experts.{device}.gate_up_proj" in keys
        assert f"layers.0.experts.{(device - 1) % 4}.gate_up_proj" in keys
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    ids = torch.arange(4, 12).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)


def test_unsupported_architecture_is_refused_naming_the_families(tmp_path: Path) -> None:
    config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                  num_attention_heads=4, intermediate_size=64)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    with pytest.raises(UnsupportedModelError, match=r"llama.*mixtral.*qwen2_moe.*olmoe.*qwen3_moe.*deepseek_v3"):
        DistributedMoE.from_pretrained(tmp_path / "llama", num_devices=2)


def test_dense_model_of_a_supported_family_is_refused(tmp_path: Path) -> None:
    dense = tiny_model("qwen2_moe", mlp_only_layers=[0, 1])
    with pytest.raises(UnsupportedModelError, match="dense"):
        split_model(dense, tmp_path / "split", 2)
    assert not (tmp_path / "split").exists()


def test_corrupt_shard_is_refused_by_its_checksum(mixtral_split: Path, tmp_path: Path) -> None:
    split = copy_split(mixtral_split, tmp_path)
    shard = split / "devices/device-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum"):
        DistributedMoE.from_pretrained(split)


def test_missing_shard_is_refused(mixtral_split: Path, tmp_path: Path) -> None:
    split = copy_split(mixtral_split, tmp_path)
    (split / "devices/device-2.safetensors").unlink()
    with pytest.raises(ShardError, match=r"device-2\.safetensors is missing"):
        DistributedMoE.from_pretrained(split)


def test_placement_with_an_expert_on_no_device_is_refused(mixtral_split: Path, tmp_path: Path) -> None:
    rows = [(e % 2,) for e in range(8)]
    with pytest.raises(PlacementError, match="expert 5 of layer 1 on no device"):
        Placement(2, 8, {0: tuple(rows), 1: (*rows[:5], (), *rows[6:])})
    split = copy_split(mixtral_split, tmp_path)
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["placement"]["layers"]["0"][3] = []
    (split / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PlacementError, match="expert 3 of layer 0 on no device"):
        DistributedMoE.from_pretrained(split)


@pytest.mark.parametrize("num_devices", [0, -2])
def test_fewer_than_one_device_is_refused(tiny_models, tmp_path: Path, num_devices: int) -> None:
    with pytest.raises(ValueError, match=f"num_devices = {num_devices}"):
        split_model(tiny_models["mixtral"], tmp_path / "split", num_devices)
    with pytest.raises(ValueError, match=f"num_devices = {num_devices}"):
        DistributedMoE.from_pretrained(tmp_path / "nowhere", num_devices=num_devices)
    assert not (tmp_path / "split").exists()


def test_a_failed_split_leaves_no_partial_output(tiny_models, tmp_path: Path) -> None:
    wrong = Placement.round_robin([0, 1, 2], 8, 2)  # layer 2 does not exist
    with pytest.raises(PlacementError, match="layers"):
        split_model(tiny_models["mixtral"], tmp_path / "split", 2, wrong)
    assert list(tmp_path.iterdir()) == []
