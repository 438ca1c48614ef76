"""Updating, the weights side: rebuild the whole Hugging Face model from a split (the BS part + every shard).

Contract: `assemble_model(split_dir)` returns a transformers model equal to the one that was split: the BS
weights from `bs/model.safetensors`, each (layer, expert) from the first device shard that holds it (verified
against the manifest's sha256), every per-expert tensor of the model's experts modules (weights, biases, scales:
found by `wdmoe.model.discover`, whatever the family's layout). A quantized expert (int8 / int4) is dequantized to
the model's dtype (its vectors, e.g. biases, are stored float), so a re-split at the same width re-quantizes the
dequantized values (per-row absmax: the same codes up to rounding).

Why the split and not the HF directory: a server may run from a split alone (`wdmoe serve --model SPLIT`), and
the BS keeps that split on its disk; it is the source the replanner's migration cost assumes for experts that no
live device holds ("from the BS's split", wdmoe.plan.replan). torch and transformers are imported lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wdmoe.errors import ShardError
from wdmoe.model.shards import Manifest, expert_key


def _expert_tensor(tensors: dict[str, Any], key: str, bits: int | None, dtype: Any) -> Any:
    """One expert's slice of a per-expert tensor from a device shard: stored as is, or quantized (a matrix at 8 /
    4 bits, `key.qweight` + `key.scale`; its vectors, e.g. biases, stay float) and dequantized to `dtype`."""
    from wdmoe.model.quantize import QUANTIZED_BITS, QuantizedTensor

    if key in tensors:
        return tensors[key].to(dtype)
    if f"{key}.qweight" in tensors and bits in QUANTIZED_BITS:
        return QuantizedTensor.from_tensors(tensors, key, int(bits or 0)).dequantize(dtype)
    raise ShardError(f"the device shard has no {key} (nor {key}.qweight at {bits} bits): the split is incomplete")


def assemble_model(split_dir: Path) -> Any:
    """The HF model that `split_dir` was split from (module docstring). The experts modules, their per-expert
    tensors (weights, biases, scales, norms) and what stays at the BS are found from the model's own structure
    (`wdmoe.model.discover.param_split`), whatever the family's layout."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from wdmoe.model.discover import config_dtype, experts_sites, param_split

    split_dir = Path(split_dir)
    manifest = Manifest.read(split_dir)
    state = load_file(str(manifest.verified_path(split_dir, "bs/model.safetensors")))
    config = AutoConfig.from_pretrained(split_dir / "bs", local_files_only=True)
    named = getattr(config, "dtype", None) is not None or getattr(config, "torch_dtype", None) is not None
    first = next((t.dtype for t in state.values() if t.is_floating_point()), torch.float32)
    dtype = config_dtype(config) if named else first  # the model's own dtype; a format-1 split: its first tensor's
    model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype).eval()
    missing = model.load_state_dict(state, strict=False).missing_keys
    routed = param_split(model).experts
    not_experts = [k for k in missing if k not in routed]
    if not_experts:
        raise ShardError(f"{split_dir}/bs/model.safetensors lacks {len(not_experts)} BS weights, e.g. {not_experts[0]}")
    sites = {site.layer: site for site in experts_sites(model)}
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
                site, bits = sites[layer], manifest.expert_bits(layer, expert)
                held = model.get_submodule(site.path).state_dict(keep_vars=True)  # its parameters and buffers
                for name in site.tensors:
                    target = held[name]
                    value = _expert_tensor(tensors, expert_key(layer, expert, name), bits, target.dtype)
                    if value.shape != target[expert].shape:
                        raise ShardError(f"{shard}: {expert_key(layer, expert, name)} has shape {tuple(value.shape)}; "
                                         f"the model's expert slice has {tuple(target[expert].shape)}")
                    target[expert].copy_(value)
                done.add((layer, expert))
    lost = len(placement.moe_layers) * placement.num_experts - len(done)
    if lost:
        raise ShardError(f"{split_dir}: {lost} experts are in no shard; the split is incomplete")
    return model
