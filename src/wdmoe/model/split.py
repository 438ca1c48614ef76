"""Split a Hugging Face MoE model into the BS part and one expert shard per device (`wdmoe split`).

The whole output is written to a temporary sibling directory and renamed into place only when complete, so an
error never leaves a partial split behind.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from wdmoe.errors import PlacementError, UnsupportedModelError
from wdmoe.model.families import Family, family_for
from wdmoe.model.shards import MANIFEST, Manifest, config_sha256, device_shard_name, expert_key, sha256_file
from wdmoe.placement import Placement

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "generation_config.json", "chat_template.jinja",
)


def load_hf_model(model_dir: Path) -> Any:
    """Load a local HF model after checking, from its config alone, that its family is supported."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (model_dir / "config.json").is_file():
        raise UnsupportedModelError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    family_for(AutoConfig.from_pretrained(model_dir, local_files_only=True))
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True).eval()


def moe_layout(hf_model: Any) -> tuple[Family, dict[int, Any], int]:
    """(family, MoE blocks by layer, routed experts per layer); refuses a model with no MoE layer."""
    family = family_for(hf_model.config)
    blocks = family.moe_blocks(hf_model)
    if not blocks:
        raise UnsupportedModelError(
            f"this {family.name} model is dense: none of its {len(family.decoder_layers(hf_model))} layers has "
            "routed experts, so there is nothing to put on devices"
        )
    num_experts = {int(block.experts.gate_up_proj.shape[0]) for block in blocks.values()}
    if len(num_experts) != 1:
        raise UnsupportedModelError(f"MoE layers differ in expert count {sorted(num_experts)}; not supported")
    return family, blocks, num_experts.pop()


def check_placement(placement: Placement, layers: list[int], num_experts: int) -> None:
    if sorted(placement.devices) != sorted(layers) or placement.num_experts != num_experts:
        raise PlacementError(
            f"placement covers layers {list(placement.moe_layers)} with {placement.num_experts} experts each; "
            f"the model's MoE layers are {sorted(layers)} with {num_experts} experts each"
        )


def split_model(
    model: Any,
    out: Path,
    num_devices: int,
    placement: Placement | None = None,
    source_dir: Path | None = None,
) -> Manifest:
    """Write the split of an in-memory HF MoE model to `out` and return its manifest.

    Args:
        model: a transformers `PreTrainedModel` of a supported family.
        out: the split directory to create (replaced if it already holds a split).
        num_devices: D >= 1.
        placement: (layer, expert) -> devices; default expert e on device e mod D.
        source_dir: where tokenizer files are copied from, if any.
    """
    family, blocks, num_experts = moe_layout(model)
    if placement is None:
        placement = Placement.round_robin(blocks, num_experts, num_devices)
    elif placement.num_devices != num_devices:
        raise PlacementError(f"placement is for {placement.num_devices} devices, but num_devices = {num_devices}")
    check_placement(placement, list(blocks), num_experts)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} exists and is not a split directory; choose an empty or new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        manifest = _write_split(model, staging, family, blocks, placement, source_dir)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_split(
    model: Any, root: Path, family: Family, blocks: dict[int, Any], placement: Placement, source_dir: Path | None
) -> Manifest:
    (root / "bs").mkdir()
    (root / "devices").mkdir()
    model.config.save_pretrained(root / "bs")
    expert_prefixes = tuple(f"model.layers.{layer}.mlp.experts." for layer in blocks)
    bs_state = {
        k: v.detach().contiguous().clone()
        for k, v in model.state_dict().items()
        if not k.startswith(expert_prefixes)
    }
    save_file(bs_state, str(root / "bs" / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if source_dir is not None and (source_dir / name).is_file():
            shutil.copy2(source_dir / name, root / "bs" / name)
    for device in range(placement.num_devices):
        tensors: dict[str, torch.Tensor] = {}
        for layer, expert in placement.experts_on(device):
            experts = blocks[layer].experts
            tensors[expert_key(layer, expert, "gate_up_proj")] = experts.gate_up_proj[expert].detach().clone()
            tensors[expert_key(layer, expert, "down_proj")] = experts.down_proj[expert].detach().clone()
        if tensors:
            save_file(tensors, str(root / device_shard_name(device)), metadata={"format": "pt"})
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    manifest = Manifest(
        family=family.name,
        model_type=model.config.model_type,
        config_sha256=config_sha256(model.config.to_dict()),
        hidden_act=str(getattr(model.config, "hidden_act", "silu")),
        placement=placement,
        files=files,
    )
    manifest.write(root)
    return manifest
