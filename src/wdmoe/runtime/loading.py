"""Build the BS part of a split model: the HF model class with every experts module replaced by `RemoteExperts`.

The model is first built on the meta device, so the BS never allocates the routed experts' weights; only the
BS weights of `bs/model.safetensors` (checksum-verified) are materialized, on `torch_device`, in `dtype`.
`device_options` turns the CLI's `--device` / `--dtype` strings into checked torch values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wdmoe.errors import ShardError, WdmoeError
from wdmoe.model.compat import config_from_dir
from wdmoe.model.discover import config_dtype, experts_sites, fp32_names
from wdmoe.model.families import family_for
from wdmoe.model.shards import Manifest, config_sha256, read_safetensors
from wdmoe.model.split import check_placement
from wdmoe.runtime.layer_step import Runtime
from wdmoe.runtime.moe_layer import RemoteExperts

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DeviceOptions:
    """Where and in what precision the BS and the in-process devices compute.

    Attributes:
        torch_device: "cpu", "cuda" or "cuda:N", checked against the GPUs torch sees.
        dtype: the floating-point dtype weights are cast to at load; None keeps the dtype stored in the split.
    """

    torch_device: str = "cpu"
    dtype: torch.dtype | None = None


def device_options(device: str = "cpu", dtype: str = "fp32") -> DeviceOptions:
    """Check the CLI's `--device cpu|cuda[:N]` and `--dtype fp32|bf16|fp16|auto` (auto: as stored)."""
    if dtype != "auto" and dtype not in DTYPES:
        raise WdmoeError(f"--dtype {dtype!r} is unknown; choose one of {', '.join(DTYPES)} or auto (as stored)")
    return DeviceOptions(check_torch_device(device, "--device"), None if dtype == "auto" else DTYPES[dtype])


def check_torch_device(torch_device: str, option: str = "torch_device") -> str:
    """`torch_device` if this process can compute there; a CUDA device without a visible GPU is refused."""
    kind, _, index = torch_device.partition(":")
    if kind == "cpu" and not index:
        return torch_device
    if kind != "cuda" or (index and not index.isdigit()):
        raise WdmoeError(f"{option} = {torch_device!r} is not a device wdmoe runs on; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise WdmoeError(
            f"{option} = {torch_device!r}, but torch.cuda.is_available() is False: torch {torch.__version__} sees "
            f"no CUDA GPU (CUDA build: {torch.version.cuda or 'none'}); use {option} cpu, or run on a machine with "
            "an NVIDIA GPU and a CUDA build of torch"
        )
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise WdmoeError(f"{option} = {torch_device!r}, but torch sees {count} GPU(s): cuda:0..cuda:{count - 1}")
    return torch_device


def check_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None and dtype not in DTYPES.values():
        names = ", ".join(f"torch.{str(d).removeprefix('torch.')}" for d in DTYPES.values())
        raise WdmoeError(f"dtype = {dtype}: wdmoe computes in {names} (or None: as stored in the split)")
    return dtype


def cast_floating(
    tensors: dict[str, torch.Tensor], dtype: torch.dtype | None, keep_fp32: frozenset[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """`tensors` with every floating-point tensor in `dtype` (unchanged if None), but those named in `keep_fp32`
    (what transformers keeps in float32 at `dtype`) in float32; integer tensors stay as they are."""
    if dtype is None:
        return tensors
    return {
        name: t.to(torch.float32 if name in keep_fp32 else dtype) if t.is_floating_point() else t
        for name, t in tensors.items()
    }


def build_bs_model(
    root: Path, manifest: Manifest, runtime: Runtime, torch_device: str = "cpu", dtype: torch.dtype | None = None
) -> Any:
    """The BS model of split directory `root`, with every experts module served by `runtime`; its weights are
    cast to `dtype` (None: the model's own dtype, its config's), except the modules transformers keeps in float32
    at that dtype (`wdmoe.model.discover.fp32_names`)."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    config_path = manifest.verified_path(root, "bs/config.json")
    weights_path = manifest.verified_path(root, "bs/model.safetensors")
    config = config_from_dir(config_path.parent)
    if config_sha256(config.to_dict()) != manifest.config_sha256:
        raise ShardError(f"{config_path} does not match the manifest's config sha256; the split is inconsistent")
    family = family_for(config)
    state = read_safetensors(weights_path, torch_device)
    dtype = check_dtype(dtype) or _stored_dtype(config, state)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    sites = experts_sites(model)
    check_placement(manifest.placement, [s.layer for s in sites], manifest.placement.num_experts)
    # fp32 at load: transformers' dtype plan, and the tensors a module creates in fp32 whatever the model's dtype
    # (HunYuan's router `gate.wg`): the meta model built in `dtype` holds those in fp32, as from_pretrained does
    built_fp32 = {n for n, t in model.state_dict().items() if t.dtype == torch.float32 and n in state}
    state = cast_floating(state, dtype, fp32_names(model, list(state), dtype) | built_fp32)
    for site in sites:
        remote = RemoteExperts(site.layer, manifest.placement.num_experts, runtime)
        parent, _, attribute = site.path.rpartition(".")
        setattr(model.get_submodule(parent), attribute, remote)
        if site.router_path is not None:
            model.get_submodule(site.router_path).register_forward_hook(_logits_hook(remote, site.num_experts))
    model.to_empty(device=torch_device)
    _init_non_persistent_buffers(model)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or missing:
        raise ShardError(
            f"bs/model.safetensors does not fit the {family.name} model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    model.tie_weights()
    if (root / "bs" / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(root / "bs", local_files_only=True)
    return model.eval()


def _stored_dtype(config: Any, state: dict[str, torch.Tensor]) -> torch.dtype:
    """The BS part's dtype when none is asked: the model's own (its config's); a format-1 split whose config
    names none: the dtype most of its floating-point tensors have (not merely the first, which may be fp32)."""
    if getattr(config, "dtype", None) is not None or getattr(config, "torch_dtype", None) is not None:
        return config_dtype(config)
    counts: dict[torch.dtype, int] = {}
    for t in state.values():
        if t.is_floating_point():
            counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
    return max(counts, key=lambda d: counts[d]) if counts else torch.float32


def _init_non_persistent_buffers(model: Any) -> None:
    """Recompute buffers that checkpoints do not store (rotary inverse frequencies) with the model's own init."""
    for module in model.modules():
        if getattr(module, "_non_persistent_buffers_set", None):
            model._init_weights(module)


def _logits_hook(remote: RemoteExperts, num_experts: int) -> Any:
    """Records the router's logits (T, E) for the step's telemetry and policies: its output, or the first item
    of it, when that is a (T, E) tensor; routers that return something else leave the logits unrecorded."""

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        if not remote.runtime.record_logits:
            return
        logits = output[0] if isinstance(output, tuple | list) else output
        if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[-1] == num_experts:
            remote.logits = logits

    return hook
