"""The streaming split writes what the in-memory split writes (same files, byte for byte, same manifest), for
every family, stored width, checkpoint layout (per-expert, already fused, fused and converted, sharded, tied) and
dtype."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wdmoe.model.safetensors_stream import Checkpoint, TensorShape, write_safetensors
from wdmoe.model.shards import Manifest
from wdmoe.model.split import load_hf_model, split_model
from wdmoe.model.stream_split import plan_checkpoint, split_checkpoint
from wdmoe.model.tiny import tiny_model
from wdmoe.model.zoo import newer_moe_types, tiny_any_model

FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3")


def assert_same_split(old: Path, new: Path) -> None:
    """Same manifest and the same bytes in every file it lists."""
    old_manifest, new_manifest = Manifest.read(old), Manifest.read(new)
    assert new_manifest.to_json() == old_manifest.to_json()
    for relative in old_manifest.files:
        assert (new / relative).read_bytes() == (old / relative).read_bytes(), relative


def both_splits(model_dir: Path, out: Path, devices: int = 3, **kwargs: object) -> tuple[Path, Path]:
    split_model(load_hf_model(model_dir), out / "old", devices, source_dir=model_dir, **kwargs)  # type: ignore[arg-type]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fallback to the in-memory split would warn: these layouts must stream
        split_checkpoint(model_dir, out / "new", devices, **kwargs)  # type: ignore[arg-type]
    return out / "old", out / "new"


@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_split_equals_the_in_memory_split(tiny_models, tmp_path: Path, family: str) -> None:
    tiny_models[family].save_pretrained(tmp_path / "hf")
    assert_same_split(*both_splits(tmp_path / "hf", tmp_path))


@pytest.mark.parametrize("bits", [8, 4, {(0, 0): 4, (0, 1): 8, (1, 2): 16}])
def test_quantized_experts_stream_to_the_same_bytes(tiny_models, tmp_path: Path, bits: object) -> None:
    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")
    assert_same_split(*both_splits(tmp_path / "hf", tmp_path, 2, bits=bits))


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3"])
def test_bf16_checkpoints_stream_with_transformers_dtypes(tmp_path: Path, family: str) -> None:
    # deepseek_v3 keeps its router's score-correction bias in fp32 when loaded in bf16 (the dtype plan)
    tiny_model(family, seed=3).to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    old, new = both_splits(tmp_path / "hf", tmp_path, 4, bits=16)
    assert_same_split(old, new)


def test_sharded_and_tied_checkpoints_stream(tmp_path: Path) -> None:
    model = tiny_model("mixtral", seed=5, tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "hf", max_shard_size="40KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert len(Checkpoint(tmp_path / "hf").files) > 2
    assert_same_split(*both_splits(tmp_path / "hf", tmp_path))


def test_a_checkpoint_already_in_the_fused_layout_streams_expert_rows(tiny_models, tmp_path: Path) -> None:
    model = tiny_models["olmoe"]
    model.save_pretrained(tmp_path / "hf")
    fused = {k: v.contiguous() for k, v in model.state_dict().items()}  # experts.gate_up_proj (E, 2I, H) as is
    (tmp_path / "hf" / "model.safetensors").unlink()
    save_file(fused, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    plan = plan_checkpoint(tmp_path / "hf")
    assert plan.sources["model.layers.1.mlp.experts.gate_up_proj"].converter is None
    assert_same_split(*both_splits(tmp_path / "hf", tmp_path))


@pytest.mark.parametrize(
    ("model_type", "operations"),
    [
        ("inkling2_text", ["Interleave"]),
        pytest.param(
            "inkling2_loop_text", ["Inkling2LoopDequantizeExperts", "Interleave"], marks=pytest.mark.slow
        ),
    ],
)
def test_fused_experts_converted_along_later_dims_stream_expert_rows(
    tmp_path: Path, model_type: str, operations: list[str]
) -> None:
    """Inkling2 checkpoints hold each layer's experts fused (w13_weight (E, 2I, H)) and transformers interleaves
    gate and up rows on load (Interleave(dim=1), after its fp4/fp8 dequantization for inkling2_loop): each
    expert's rows go through the converter alone, and the split is the one made from the loaded model."""
    if model_type in newer_moe_types():  # not in transformers 5.17
        pytest.skip(newer_moe_types()[model_type])
    tiny_any_model(model_type, seed=1).save_pretrained(tmp_path / "hf")
    source = plan_checkpoint(tmp_path / "hf").sources["model.layers.0.mlp.experts.gate_up_proj"]
    assert source.keys == ("model.llm.layers.0.mlp.experts.w13_weight",)
    assert source.converter is not None
    assert [type(op).__name__ for op in source.converter.operations] == operations
    assert_same_split(*both_splits(tmp_path / "hf", tmp_path, 4))


def test_a_layout_it_cannot_stream_falls_back_with_a_warning(tiny_models, tmp_path: Path) -> None:
    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")
    weights = Checkpoint(tmp_path / "hf")
    kept = {k: weights.read(k) for k in weights.tensors if k != "model.norm.weight"}
    save_file(kept, str(tmp_path / "hf" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match=r"no tensor for \['model.norm.weight'\].*whole model loaded in memory"):
        manifest = split_checkpoint(tmp_path / "hf", tmp_path / "split", 2)
    assert manifest.family == "mixtral"
    assert (tmp_path / "split" / "devices" / "device-1.safetensors").is_file()


def test_writer_matches_save_file_and_hashes_what_it_wrote(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "b.w": torch.randn(3, 5, generator=generator), "a.q": torch.randint(-7, 7, (4, 6), dtype=torch.int8),
        "c": torch.randn(7, generator=generator).to(torch.bfloat16), "h": torch.randn(2, generator=generator).half(),
        "u": torch.randint(0, 255, (9,), dtype=torch.uint8), "s": torch.tensor(1.5),
    }
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    specs = {k: TensorShape(v.dtype, tuple(v.shape)) for k, v in tensors.items()}
    (tmp_path / "ours").mkdir()
    digest = write_safetensors(tmp_path / "ours" / "model.safetensors", specs, tensors.__getitem__, {"format": "pt"})
    ours = (tmp_path / "ours" / "model.safetensors").read_bytes()
    assert ours == (tmp_path / "ref.safetensors").read_bytes()
    assert digest == hashlib.sha256(ours).hexdigest()
    back = Checkpoint(tmp_path / "ours")
    assert all(torch.equal(back.read(k), v) for k, v in tensors.items())
    assert torch.equal(back.read_row("a.q", 2), tensors["a.q"][2])
