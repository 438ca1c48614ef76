"""Build the BS part of a split model: the HF model class with its routed experts replaced by `RemoteExperts`.

The model is first built on the meta device, so the BS never allocates the routed experts' weights; only the
BS weights of `bs/model.safetensors` (checksum-verified) are materialized.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from wdmoe.errors import ShardError
from wdmoe.model.families import family_for
from wdmoe.model.shards import Manifest, config_sha256
from wdmoe.model.split import check_placement
from wdmoe.runtime.moe_layer import Dispatcher, RemoteExperts


def build_bs_model(root: Path, manifest: Manifest, dispatcher: Dispatcher, torch_device: str = "cpu") -> Any:
    """The BS model of split directory `root`, with every MoE block's experts served by `dispatcher`."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    config_path = manifest.verified_path(root, "bs/config.json")
    weights_path = manifest.verified_path(root, "bs/model.safetensors")
    config = AutoConfig.from_pretrained(config_path.parent, local_files_only=True)
    if config_sha256(config.to_dict()) != manifest.config_sha256:
        raise ShardError(f"{config_path} does not match the manifest's config sha256; the split is inconsistent")
    family = family_for(config)
    state = load_file(str(weights_path), device=torch_device)
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    blocks = family.moe_blocks(model)
    check_placement(manifest.placement, list(blocks), manifest.placement.num_experts)
    for layer, block in blocks.items():
        remote = RemoteExperts(layer, manifest.placement.num_experts, dispatcher)
        block.experts = remote
        block.gate.register_forward_hook(_logits_hook(remote))
    model.to_empty(device=torch_device)
    _init_non_persistent_buffers(model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or missing:
        raise ShardError(
            f"bs/model.safetensors does not fit the {family.name} model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    if (root / "bs" / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(root / "bs", local_files_only=True)
    return model.eval()


def _init_non_persistent_buffers(model: Any) -> None:
    """Recompute buffers that checkpoints do not store (rotary inverse frequencies) with the model's own init."""
    for module in model.modules():
        if getattr(module, "_non_persistent_buffers_set", None):
            model._init_weights(module)


def _logits_hook(remote: RemoteExperts) -> Any:
    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if remote.dispatcher.record_logits:
            remote.logits = output[0]

    return hook
