"""Updating, the weights side: rebuild the whole Hugging Face model from a split (the BS part + every shard).

Contract: `assemble_model(split_dir)` returns a transformers model equal to the one that was split: the BS
weights from `bs/model.safetensors`, each (layer, expert) from the first device shard that holds it (verified
against the manifest's sha256). A quantized expert (int8 / int4) is dequantized to the model's dtype, so a
re-split at the same width re-quantizes the dequantized values (per-row absmax: the same codes up to rounding).

Why the split and not the HF directory: a server may run from a split alone (`wdmoe serve --model SPLIT`), and
the BS keeps that split on its disk; it is the source the replanner's migration cost assumes for experts that no
live device holds ("from the BS's split", wdmoe.plan.replan). torch and transformers are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wdmoe.errors import ShardError
from wdmoe.model.shards import Manifest, expert_key


def _expert_weights(tensors: dict[str, Any], manifest: Manifest, layer: int, expert: int, dtype: Any) -> list[Any]:
    from wdmoe.model.quantize import QUANTIZED_BITS, QuantizedTensor

    bits = manifest.expert_bits(layer, expert)
    out = []
    for name in ("gate_up_proj", "down_proj"):
        key = expert_key(layer, expert, name)
        if bits in QUANTIZED_BITS:
            out.append(QuantizedTensor.from_tensors(tensors, key, int(bits or 0)).dequantize(dtype))
        else:
            out.append(tensors[key].to(dtype))
    return out


def assemble_model(split_dir: Path) -> Any:
    """The HF model that `split_dir` was split from (module docstring)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from wdmoe.model.split import moe_layout

    split_dir = Path(split_dir)
    manifest = Manifest.read(split_dir)
    state = load_file(str(manifest.verified_path(split_dir, "bs/model.safetensors")))
    dtype = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    config = AutoConfig.from_pretrained(split_dir / "bs", local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).eval()
    missing = model.load_state_dict(state, strict=False).missing_keys
    _, blocks, num_experts = moe_layout(model)
    not_experts = [k for k in missing if ".mlp.experts." not in k]
    if not_experts:
        raise ShardError(f"{split_dir}/bs/model.safetensors lacks {len(not_experts)} BS weights, e.g. {not_experts[0]}")
    placement, done = manifest.placement, set()
    with torch.no_grad():
        for device in range(placement.num_devices):
            shard = manifest.device_shard(split_dir, device)
            if shard is None:
                continue
            tensors = load_file(str(shard))
            for layer, expert in placement.experts_on(device):
                if (layer, expert) in done:
                    continue
                gate_up, down = _expert_weights(tensors, manifest, layer, expert, dtype)
                blocks[layer].experts.gate_up_proj[expert].copy_(gate_up)
                blocks[layer].experts.down_proj[expert].copy_(down)
                done.add((layer, expert))
    lost = len(placement.moe_layers) * num_experts - len(done)
    if lost:
        raise ShardError(f"{split_dir}: {lost} experts are in no shard; the split is incomplete")
    return model
