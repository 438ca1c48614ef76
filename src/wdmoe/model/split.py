"""Split a Hugging Face MoE model into the BS part and one expert shard per device (`wdmoe split`).

The whole output is written to a hidden staging sibling and swapped into place only when complete
(`wdmoe.atomic.write_dir_atomic`), so an error or a kill never leaves a partial split behind, nor loses the old
one. Experts may be stored quantized (`bits`, `wdmoe.model.quantize`): 8 or 4 bits (weight-only), or 16 (float16);
the manifest records each expert's width.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from wdmoe.atomic import write_dir_atomic
from wdmoe.errors import PlacementError, UnsupportedModelError
from wdmoe.input_files import load_json, load_toml
from wdmoe.model.compat import config_from_dir, newer_note
from wdmoe.model.discover import ExpertsSite, experts_sites, param_split
from wdmoe.model.families import Family, family_for, supported_families
from wdmoe.model.quantize import DEFAULT_GROUP_SIZE, QUANTIZED_BITS, quantize
from wdmoe.model.shards import (
    MANIFEST,
    Manifest,
    Quantization,
    config_sha256,
    device_shard_name,
    expert_key,
    record_verified,
    sha256_file,
)
from wdmoe.placement import Placement

ExpertBits = int | Mapping[tuple[int, int], int] | None  # one width for all experts, per (layer, expert), or none
STORED_BITS = (*QUANTIZED_BITS, 16, 32)  # 16: float16; 32: as the model has it (fp32 or bf16, never upcast)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
    "tokenizer.model", "generation_config.json", "chat_template.jinja",
)


WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)


def read_hf_config(model_dir: Path) -> Any:
    """The config of a local HF model, checked: readable, of a supported family, with an activation transformers
    knows (a bad directory is named, never a traceback)."""
    from transformers.activations import ACT2FN

    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise UnsupportedModelError(f"{model_dir} has no config.json: not a Hugging Face model directory")
    try:
        config = config_from_dir(model_dir)
    except OSError as exc:  # transformers' "not a valid JSON file" and unreadable files
        raise UnsupportedModelError(f"{config_file}: not a readable Hugging Face config ({exc})") from None
    family_for(config)
    act = getattr(config, "hidden_act", "silu")
    if not isinstance(act, str) or act not in ACT2FN:
        raise UnsupportedModelError(
            f"{config_file}: field 'hidden_act' = {act!r}: not an activation transformers knows (e.g. silu, gelu)"
        )
    return config


def load_hf_model(model_dir: Path) -> Any:
    """Load a local HF model after checking its config (`read_hf_config`) and that it has weights."""
    from transformers import AutoModelForCausalLM

    read_hf_config(model_dir)
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise UnsupportedModelError(f"{model_dir} has a config.json but no weights: none of {', '.join(WEIGHT_FILES)}")
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True).eval()


@dataclass(frozen=True)
class MoeLayout:
    """The routed experts of a model: its family (router semantics), its experts sites by layer, E."""

    family: Family
    sites: dict[int, ExpertsSite]
    num_experts: int


def experts_layout(hf_model: Any) -> MoeLayout:
    """The model's experts sites (`wdmoe.model.discover`); refuses a model with none, or with layers that differ
    in expert count."""
    family = family_for(hf_model.config)
    sites = {site.layer: site for site in experts_sites(hf_model)}
    if not sites:
        raise UnsupportedModelError(
            f"this {hf_model.config.model_type} model is dense: no layer has an experts module of transformers' "
            f"standard interface (@use_experts_implementation), so there is nothing to put on devices (registered "
            f"router semantics: {supported_families()}).{newer_note(hf_model.config.model_type)}"
        )
    num_experts = {site.num_experts for site in sites.values()}
    if len(num_experts) != 1:
        raise UnsupportedModelError(f"MoE layers differ in expert count {sorted(num_experts)}; not supported")
    return MoeLayout(family, sites, num_experts.pop())


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
    bits: ExpertBits = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Manifest:
    """Write the split of an in-memory HF MoE model to `out` and return its manifest.

    Args:
        model: a transformers `PreTrainedModel` of a supported family.
        out: the split directory to create (replaced if it already holds a split).
        num_devices: D >= 1.
        placement: (layer, expert) -> devices; default expert e on device e mod D.
        source_dir: where tokenizer files are copied from, if any.
        bits: the stored width of the experts: 8 or 4 (quantized), 16 (float16) or 32 (as the model has it), for
            all of them (an int) or per (layer, expert) (a mapping; experts not listed stay as the model has them).
        group_size: input columns per scale of int4 experts.
    """
    layout = experts_layout(model)
    placement = resolve_placement(placement, list(layout.sites), layout.num_experts, num_devices)
    widths = expert_bits(bits, placement)
    return staged_split(
        Path(out), lambda root: _write_split(model, root, layout, placement, source_dir, widths, group_size)
    )


def resolve_placement(
    placement: Placement | None, layers: list[int], num_experts: int, num_devices: int
) -> Placement:
    """`placement`, checked against the model's MoE layers and D; default expert e on device e mod D."""
    if placement is None:
        return Placement.round_robin(layers, num_experts, num_devices)
    if placement.num_devices != num_devices:
        raise PlacementError(f"placement is for {placement.num_devices} devices, but num_devices = {num_devices}")
    check_placement(placement, layers, num_experts)
    return placement


def staged_split(out: Path, fill: Callable[[Path], Manifest]) -> Manifest:
    """Run `fill(staging)` on a hidden staging sibling of `out`, then swap it in (`write_dir_atomic`, replacing an
    older split): an error or a kill never leaves a partial split behind, nor loses the old one."""
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise FileExistsError(f"{out} exists and is not a split directory; choose an empty or new --out")
    written: list[Manifest] = []
    write_dir_atomic(out, lambda staging: written.append(fill(staging)))  # old or new split survives a kill
    return written[0]


def expert_bits(bits: ExpertBits, placement: Placement) -> dict[tuple[int, int], int]:
    """{(layer, expert): width} of every expert of `placement` given `bits` (split_model's argument), checked."""
    pairs = [(layer, e) for layer in placement.moe_layers for e in range(placement.num_experts)]
    table = {} if bits is None else dict.fromkeys(pairs, bits) if isinstance(bits, int) else dict(bits)
    source = f"{bits.source}: " if isinstance(bits, BitsTable) else ""
    unknown = sorted(set(table) - set(pairs))
    if unknown:
        layer, expert = unknown[0]
        raise PlacementError(
            f"{source}bit widths are given for {unknown[:3]}, which are not experts of this model: its MoE layers are "
            f"{list(placement.moe_layers)} (decoder indices) with experts 0..{placement.num_experts - 1}"
            + (f"; bits file field 'experts.\"{layer}:{expert}\"'" if source else "")
        )
    default = bits.default if isinstance(bits, BitsTable) else None
    if default is not None:
        table = {pair: table.get(pair, default) for pair in pairs}
    bad = sorted({b for b in table.values() if b not in STORED_BITS})
    if bad:
        raise ValueError(f"{source}expert bit width {bad[0]} is not supported; choose from {list(STORED_BITS)}")
    return table


class BitsTable(dict[tuple[int, int], int]):
    """Per-expert widths read from a file: its `default` (or None) and its `source` (the file, for messages)."""

    def __init__(self, table: dict[tuple[int, int], int], default: int | None, source: str) -> None:
        super().__init__(table)
        self.default = default
        self.source = source

    def __missing__(self, key: tuple[int, int]) -> int:
        if self.default is None:
            raise KeyError(key)
        return self.default


def read_bits_file(path: Path) -> BitsTable:
    """Per-expert widths from a TOML or JSON file: `default = 8` and an `[experts]` table (`"0:3" = 4`), both
    optional (`default`: every expert not listed; without it they stay as the model has them). Layers are decoder
    indices. Unknown keys, widths other than 4/8/16/32 and keys not of the form "layer:expert" are refused by name."""
    what = "bits"
    data = load_json(path, what) if Path(path).suffix == ".json" else load_toml(path, what)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a bits file holds a table (default, experts); this one holds a "
                         f"{type(data).__name__}")
    from wdmoe.model.schemas import check_bits_file  # pydantic: lazy, the runtime core imports without it

    spec = check_bits_file(data, str(path))
    table: dict[tuple[int, int], int] = {
        (int(k.split(":")[0]), int(k.split(":")[1])): int(width) for k, width in spec.experts.items()
    }
    return BitsTable(table, spec.default, str(path))


def expert_tensor(key: str, weight: torch.Tensor, bits: int | None, group_size: int) -> dict[str, torch.Tensor]:
    """The shard entries of one expert's tensor `weight` (one expert's slice) stored at width `bits`: quantized
    (8 / 4) if it is a matrix (vectors such as biases stay as the model has them; more dimensions are refused),
    float16 (16), or as the model has it (None / 32)."""
    if bits in QUANTIZED_BITS and weight.dim() == 2:
        return quantize(weight, bits, group_size).tensors(key)
    if bits in QUANTIZED_BITS and weight.dim() > 2:
        raise UnsupportedModelError(
            f"expert tensor {key} has {weight.dim()} dimensions per expert: wdmoe quantizes matrices only; store "
            "these experts at 16 or 32 bits"
        )
    if bits == 16 and weight.is_floating_point() and weight.element_size() > 2:
        return {key: weight.detach().to(torch.float16)}
    return {key: weight.detach().clone()}


def _write_split(
    model: Any,
    root: Path,
    layout: MoeLayout,
    placement: Placement,
    source_dir: Path | None,
    bits: dict[tuple[int, int], int],
    group_size: int,
) -> Manifest:
    (root / "bs").mkdir()
    (root / "devices").mkdir()
    if isinstance(getattr(model, "dtype", None), torch.dtype):  # as save_pretrained does: a model cast after loading
        model.config.dtype = str(model.dtype).removeprefix("torch.")  # (`.to(bf16)`) is saved as what it now is
    model.config.save_pretrained(root / "bs")
    split = param_split(model)
    state = model.state_dict()
    bs_state = {k: state[k].detach().contiguous().clone() for k in split.bs}
    save_file(bs_state, str(root / "bs" / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if source_dir is not None and (source_dir / name).is_file():
            shutil.copy2(source_dir / name, root / "bs" / name)
    by_layer: dict[int, dict[str, torch.Tensor]] = {}
    for name, where in split.experts.items():
        by_layer.setdefault(where.layer, {})[where.name] = state[name]
    for device in range(placement.num_devices):
        tensors: dict[str, torch.Tensor] = {}
        for layer, expert in placement.experts_on(device):
            width = bits.get((layer, expert))
            for name, weight in by_layer[layer].items():
                tensors.update(expert_tensor(expert_key(layer, expert, name), weight[expert], width, group_size))
        if tensors:
            save_file(tensors, str(root / device_shard_name(device)), metadata={"format": "pt"})
    files = {str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}
    first = next(iter(layout.sites.values()))
    manifest = Manifest(
        family=layout.family.name,
        model_type=model.config.model_type,
        config_sha256=config_sha256(model.config.to_dict()),
        hidden_act=str(getattr(model.config, "hidden_act", "silu")),
        placement=placement,
        files=files,
        quantization=quantization_record(bits, group_size, by_layer[first.layer][first.tensors[0]].dtype),
        config=model.config.to_dict(),
    )
    manifest.write(root)
    record_verified(root, files)
    return manifest


def quantization_record(bits: dict[tuple[int, int], int], group_size: int, dtype: torch.dtype) -> Quantization | None:
    """The manifest's record of the experts not stored as the model has them (None when there is none)."""
    stored = {pair: b for pair, b in bits.items() if b in QUANTIZED_BITS or (b == 16 and dtype.itemsize > 2)}
    return Quantization(stored, group_size, str(dtype).removeprefix("torch.")) if stored else None
