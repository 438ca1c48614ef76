"""Streaming split (`wdmoe split`): a Hugging Face checkpoint directory -> a split directory, one tensor at a time.

Contract: the output is the split `split_model` writes from the loaded model (same files, same bytes, same
manifest), while memory holds one checkpoint tensor (or one expert's slice of it) at a time plus an empty model
on the meta device, never the weights of the model. Hashes are computed while the shards are written.

How a model tensor is found in the checkpoint is transformers' own business: the model is instantiated on the meta
device as `from_pretrained` does (same dtype rule, same fp32-kept modules), and every checkpoint key goes through
transformers' conversion mapping (`get_model_conversion_mapping`, `rename_source_key`). A model tensor is either a
checkpoint tensor (renamed, cast) or made by a `WeightConverter` (e.g. Mixtral's per-expert w1/w3 -> fused
`gate_up_proj` (E, 2I, H)). For routed experts the converter runs per expert, on that expert's checkpoint tensors
only: valid when its operations act on each expert separately (stack along dim 0, then concatenate or transpose
along later dims; or, for a checkpoint that stores the experts fused (E, ...), operations along dims >= 1 only,
run on one expert's rows as a (1, ...) tensor), which is checked; any other layout raises `NotStreamable`, and
`split_checkpoint` then falls back to loading the whole model, with a warning.
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM
from transformers.conversion_mapping import get_model_conversion_mapping
from transformers.core_model_loading import (
    Concatenate,
    Interleave,
    MergeModulelist,
    Transpose,
    WeightConverter,
    WeightRenaming,
    build_glob_alternation,
    dot_natural_key,
    rename_source_key,
)

from wdmoe.errors import UnsupportedModelError
from wdmoe.model.compat import newer_note
from wdmoe.model.discover import param_split
from wdmoe.model.families import Family, family_for, supported_families
from wdmoe.model.quantize import DEFAULT_GROUP_SIZE
from wdmoe.model.safetensors_stream import Checkpoint, TensorShape, write_safetensors
from wdmoe.model.shards import (
    MANIFEST,
    Manifest,
    config_sha256,
    device_shard_name,
    expert_key,
    record_verified,
    sha256_file,
)
from wdmoe.model.split import (
    TOKENIZER_FILES,
    ExpertBits,
    expert_bits,
    expert_tensor,
    load_hf_model,
    quantization_record,
    read_hf_config,
    resolve_placement,
    split_model,
    staged_split,
)
from wdmoe.placement import Placement


class NotStreamable(UnsupportedModelError):
    """A checkpoint layout the streaming split cannot read tensor by tensor (it falls back to loading the model)."""


@dataclass(frozen=True)
class TensorPlacement:
    """Which model tensors the BS keeps and which go to devices, by state-dict name.

    Attributes:
        bs: the names the BS part stores.
        experts: name of a routed-experts tensor (E, ...) -> (MoE layer index, its name in a device shard).
    """

    bs: tuple[str, ...]
    experts: dict[str, tuple[int, str]]


def tensor_placement(model: Any, family: Family) -> TensorPlacement:
    """Where each tensor goes: `wdmoe.model.discover.param_split` (every per-expert tensor of every experts module
    to the devices), what `split_model` does with a loaded model, applied to the meta-device model."""
    split = param_split(model)
    experts = {name: (where.layer, where.name) for name, where in split.experts.items()}
    return TensorPlacement(split.bs, experts)


@dataclass(frozen=True)
class Source:
    """How one model tensor is made from the checkpoint: checkpoint `keys` (one, unless a converter merges several;
    `patterns[i]` is the converter source pattern of `keys[i]`), cast to `dtype` as transformers loads them."""

    target: str
    dtype: torch.dtype
    keys: tuple[str, ...]
    patterns: tuple[str, ...] = ()
    converter: WeightConverter | None = None


@dataclass(frozen=True)
class CheckpointPlan:
    """An HF checkpoint directory ready to stream: its meta-device model, and the source of every model tensor."""

    model_dir: Path
    model: Any
    family: Family
    checkpoint: Checkpoint
    sources: dict[str, Source]
    shapes: dict[str, TensorShape]  # every state-dict tensor as loaded (dtype, shape)
    placement: TensorPlacement

    def read(self, name: str) -> torch.Tensor:
        """The whole model tensor `name`, as `from_pretrained` would load it."""
        source = self.sources[name]
        if source.converter is None:
            return self.checkpoint.read(source.keys[0]).to(source.dtype)
        return self._convert(source, source.keys, source.patterns)

    def read_expert(self, name: str, expert: int) -> torch.Tensor:
        """`tensor[expert]` of a routed-experts tensor, reading only that expert's checkpoint bytes."""
        source = self.sources[name]
        if source.converter is None:
            return self.checkpoint.read_row(source.keys[0], expert).to(source.dtype)
        if not _stacks_experts(source.converter):  # fused (E, ...) checkpoint tensors, converted along dims >= 1
            rows = [_row_reader(self.checkpoint, key, expert, source.dtype) for key in source.keys]
            return self._convert(source, source.keys, source.patterns, rows)[0]  # (1, ...) -> one expert
        per_pattern = {p: [k for k, q in zip(source.keys, source.patterns, strict=True) if q == p]
                       for p in dict.fromkeys(source.patterns)}
        keys = tuple(keys[expert] for keys in per_pattern.values())
        return self._convert(source, keys, tuple(per_pattern))[0]  # the converter's (1, ...) stack of one expert

    def _convert(
        self,
        source: Source,
        keys: tuple[str, ...],
        patterns: tuple[str, ...],
        readers: list[Callable[[], torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        converter = copy.deepcopy(source.converter)  # each target gets its own instance, as transformers does
        assert converter is not None
        if readers is None:
            readers = [_reader(self.checkpoint, key, source.dtype) for key in keys]
        for key, pattern, reader in zip(keys, patterns, readers, strict=True):
            # a callable is what transformers' own synchronous loading hands a converter (materialize_tensors)
            converter.add_tensor(source.target, key, pattern, reader)  # type: ignore[arg-type]
        out = converter.convert(source.target, model=self.model, config=self.model.config)
        tensor = out[source.target]
        return tensor[0] if isinstance(tensor, list) else tensor


def _reader(checkpoint: Checkpoint, key: str, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: checkpoint.read(key).to(dtype)


def _row_reader(checkpoint: Checkpoint, key: str, row: int, dtype: torch.dtype) -> Callable[[], torch.Tensor]:
    return lambda: checkpoint.read_row(key, row).to(dtype).unsqueeze(0)  # (1, ...): a one-expert fused tensor


def plan_checkpoint(model_dir: Path) -> CheckpointPlan:
    """Read the config and the checkpoint headers of `model_dir` (no weights) and find every model tensor's source.

    Raises UnsupportedModelError for a model wdmoe does not split at all, NotStreamable for a layout this module
    cannot read tensor by tensor."""
    model_dir = Path(model_dir)
    config = read_hf_config(model_dir)  # readable, supported family, known activation
    family = family_for(config)
    if getattr(config, "quantization_config", None) is not None:
        raise NotStreamable("the checkpoint is pre-quantized (config.quantization_config)")
    checkpoint = Checkpoint(model_dir) if any(model_dir.glob("*.safetensors")) else None
    if checkpoint is None:
        raise NotStreamable("the weights are not in safetensors files")
    dtype = _load_dtype(config, checkpoint)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    meta = model.state_dict()
    dtypes = _load_dtypes(model, meta, dtype)
    placement = tensor_placement(model, family)
    if not placement.experts:
        raise UnsupportedModelError(
            f"this {config.model_type} model is dense: no layer has an experts module of transformers' standard "
            f"interface (@use_experts_implementation), so there is nothing to put on devices (registered router "
            f"semantics: {supported_families()}).{newer_note(config.model_type)}"
        )
    sources = _sources(model, meta, checkpoint, dtypes)
    for name, (_, _) in placement.experts.items():
        _check_per_expert(sources[name], int(meta[name].shape[0]), checkpoint)
    shapes = {name: TensorShape(dtypes[name], tuple(t.shape)) for name, t in meta.items()}
    return CheckpointPlan(model_dir, model, family, checkpoint, sources, shapes, placement)


def _load_dtype(config: Any, checkpoint: Checkpoint) -> torch.dtype:
    """`from_pretrained(dtype="auto")`'s dtype: the config's, else the first floating tensor's of the first file."""
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(dtype, torch.dtype):
        return dtype
    first = checkpoint.files[0]
    for stored in checkpoint.tensors.values():
        if stored.path == first and stored.dtype.is_floating_point:
            return stored.dtype
    return torch.get_default_dtype()


def _load_dtypes(model: Any, meta: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.dtype]:
    """The dtype each tensor is loaded as: fp32 where transformers keeps the module in fp32 (its dtype plan),
    else the meta parameter's dtype (transformers' loading rule)."""
    plan = model._get_dtype_plan(dtype)  # transformers' own keep-in-fp32 table, as from_pretrained builds it
    if not plan:
        return {name: t.dtype for name, t in meta.items()}
    alternation, by_group, _ = build_glob_alternation(list(plan))
    out = {}
    for name, t in meta.items():
        match = alternation.search(name)
        out[name] = plan[by_group[str(match.lastgroup)]] if match is not None else t.dtype
    return out


def _sources(
    model: Any, meta: dict[str, torch.Tensor], checkpoint: Checkpoint, dtypes: dict[str, torch.dtype]
) -> dict[str, Source]:
    """The source of every model tensor, found as `convert_and_load_state_dict_in_model` finds them."""
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    by_pattern = {p: c for c in converters for p in c.source_patterns}
    direct: dict[str, str] = {}
    merged: dict[str, list[tuple[str, str]]] = {}
    for key in sorted(checkpoint.tensors, key=dot_natural_key):
        renamed, pattern = rename_source_key(key, renamings, converters, model.base_model_prefix, meta)
        if renamed not in meta and key in meta:
            renamed, pattern = key, None
        if renamed not in meta:
            continue  # transformers reports it as unexpected and ignores it; so does the split
        if pattern is None:
            direct[renamed] = key
        else:
            merged.setdefault(renamed, []).append((key, pattern))
    sources = {name: Source(name, dtypes[name], (key,)) for name, key in direct.items()}
    for name, pairs in merged.items():
        keys, patterns = zip(*pairs, strict=True)
        sources[name] = Source(name, dtypes[name], keys, patterns, by_pattern[patterns[0]])
    tied = getattr(model, "all_tied_weights_keys", {}) or {}
    for target, origin in tied.items():
        if origin in sources:  # tied after loading: the target holds the origin's tensor
            sources[target] = Source(target, dtypes[target], sources[origin].keys, sources[origin].patterns,
                                     sources[origin].converter)
    missing = sorted(set(meta) - set(sources))
    if missing:
        raise NotStreamable(f"the checkpoint has no tensor for {missing[:3]} (transformers would initialize "
                            f"{len(missing)} tensor(s) at random)")
    return sources


def _stacks_experts(converter: WeightConverter) -> bool:
    """Whether the converter stacks per-expert checkpoint tensors (its first operation), rather than converting
    fused (E, ...) checkpoint tensors."""
    first = converter.operations[0]
    return isinstance(first, MergeModulelist) and first.dim == 0


def _acts_per_expert(op: Any) -> bool:
    """An operation on (E, ...) tensors that acts on each expert separately: it only touches dims >= 1."""
    return (
        (isinstance(op, Concatenate) and op.dim >= 1)
        or (isinstance(op, Transpose) and min(op.dim0, op.dim1) >= 1 and not op.check_dims)
        or (isinstance(op, Interleave) and op.dim >= 1)  # e.g. inkling2's fused w13 -> interleaved gate_up
        # transformers' own (temporary, hence matched by name) dequantization of Inkling2Loop's fp4/fp8 experts:
        # each expert from its own rows, block scales and (E,) factors; one float tensor passes through
        or type(op).__name__ == "Inkling2LoopDequantizeExperts"
    )


def _check_per_expert(source: Source, num_experts: int, checkpoint: Checkpoint) -> None:
    """Refuse a converter that does not act on each expert separately, or a checkpoint whose tensors are neither
    E per-expert tensors per pattern (stacked by the converter) nor one fused (E, ...) tensor per pattern."""
    converter = source.converter
    if converter is None:
        return
    ops = converter.operations
    stacked = _stacks_experts(converter)
    if not all(_acts_per_expert(op) for op in (ops[1:] if stacked else ops)):
        raise NotStreamable(f"{source.target} is made by {[type(op).__name__ for op in ops]}, which does not act "
                            "on each expert separately")
    counts = {p: source.patterns.count(p) for p in source.patterns}
    if stacked and set(counts.values()) != {num_experts}:
        raise NotStreamable(f"{source.target}: the checkpoint holds {counts} tensors per pattern, not {num_experts}")
    rows = {key: checkpoint.tensors[key].shape[:1] for key in source.keys}
    if not stacked and (set(counts.values()) != {1} or set(rows.values()) != {(num_experts,)}):
        raise NotStreamable(f"{source.target}: the checkpoint holds {counts} tensors per pattern of first dims "
                            f"{rows}, not one fused tensor of {num_experts} experts each")


def split_checkpoint(
    model_dir: Path,
    out: Path,
    num_devices: int,
    placement: Placement | None = None,
    bits: ExpertBits = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Manifest:
    """`split_model(load_hf_model(model_dir), out, ...)`'s split, streamed from the checkpoint files (see the
    module docstring); falls back to exactly that call, with a warning, for a layout it cannot stream."""
    try:
        plan = plan_checkpoint(model_dir)
    except NotStreamable as exc:
        warnings.warn(f"{model_dir}: {exc}; splitting from the whole model loaded in memory instead", stacklevel=2)
        return split_model(load_hf_model(model_dir), out, num_devices, placement, model_dir, bits, group_size)
    layers = sorted({layer for layer, _ in plan.placement.experts.values()})
    first = next(iter(plan.placement.experts))
    num_experts = plan.shapes[first].shape[0]
    placement = resolve_placement(placement, layers, num_experts, num_devices)
    widths = expert_bits(bits, placement)
    return staged_split(Path(out), lambda root: _write(plan, root, placement, widths, group_size))


def _write(
    plan: CheckpointPlan, root: Path, placement: Placement, bits: dict[tuple[int, int], int], group_size: int
) -> Manifest:
    (root / "bs").mkdir()
    (root / "devices").mkdir()
    config = plan.model.config
    config.save_pretrained(root / "bs")
    files: dict[str, str] = {}
    bs_specs = {name: plan.shapes[name] for name in plan.placement.bs}
    files["bs/model.safetensors"] = write_safetensors(root / "bs" / "model.safetensors", bs_specs, plan.read,
                                                      {"format": "pt"})
    for name in TOKENIZER_FILES:
        if (plan.model_dir / name).is_file():
            shutil.copy2(plan.model_dir / name, root / "bs" / name)
    by_layer = {(layer, short): name for name, (layer, short) in plan.placement.experts.items()}
    for device in range(placement.num_devices):
        shard = _DeviceShard(plan, by_layer, bits, group_size, placement.experts_on(device))
        if shard.specs:
            files[device_shard_name(device)] = write_safetensors(root / device_shard_name(device), shard.specs,
                                                                 shard.produce, {"format": "pt"})
    for path in sorted((root / "bs").iterdir()):
        relative = str(path.relative_to(root))
        if relative not in files:
            files[relative] = sha256_file(path)
    first_tensor = by_layer[min(by_layer)]
    manifest = Manifest(
        family=plan.family.name,
        model_type=config.model_type,
        config_sha256=config_sha256(config.to_dict()),
        hidden_act=str(getattr(config, "hidden_act", "silu")),
        placement=placement,
        files=files,
        quantization=quantization_record(bits, group_size, plan.shapes[first_tensor].dtype),
        config=config.to_dict(),
    )
    manifest.write(root)
    record_verified(root, files)
    return manifest


class _DeviceShard:
    """The tensors of one device shard: their shapes up front (for the header), then each made on demand.

    safetensors orders a file by dtype, so a quantized expert's float32 scales come long before its int8 weights;
    the last expert matrix made is kept (one, not a file), and a matrix asked for again is simply made again."""

    def __init__(
        self,
        plan: CheckpointPlan,
        by_layer: dict[tuple[int, str], str],
        bits: dict[tuple[int, int], int],
        group_size: int,
        held: list[tuple[int, int]],
    ) -> None:
        self.plan, self.by_layer, self.bits, self.group_size = plan, by_layer, bits, group_size
        self.origin: dict[str, tuple[int, int, str]] = {}
        self.specs: dict[str, TensorShape] = {}
        names: dict[int, list[str]] = {}
        for layer, short in by_layer:
            names.setdefault(layer, []).append(short)
        for layer, expert in held:
            for short in names[layer]:
                shape = plan.shapes[by_layer[(layer, short)]]
                empty = torch.empty(shape.shape[1:], dtype=shape.dtype, device="meta")
                for key, t in self._make(layer, expert, short, empty).items():
                    self.specs[key] = TensorShape(t.dtype, tuple(t.shape))
                    self.origin[key] = (layer, expert, short)
        self.last: tuple[tuple[int, int, str], dict[str, torch.Tensor]] | None = None

    def _make(self, layer: int, expert: int, short: str, weight: torch.Tensor) -> dict[str, torch.Tensor]:
        return expert_tensor(expert_key(layer, expert, short), weight, self.bits.get((layer, expert)), self.group_size)

    def produce(self, key: str) -> torch.Tensor:
        origin = self.origin[key]
        if self.last is None or self.last[0] != origin:
            layer, expert, short = origin
            self.last = None  # drop the previous matrix before reading the next
            weight = self.plan.read_expert(self.by_layer[(layer, short)], expert)
            self.last = (origin, self._make(layer, expert, short, weight))
        return self.last[1][key]


def split_dir_for(
    path: Path, num_devices: int | None = None, placement: Placement | None = None
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """`path` if it is a split directory, else a split of the HF model at `path` over `num_devices` (default 8;
    `placement`: default expert e on device e mod D) in a new temporary directory, returned second: whoever
    holds it removes it (`DistributedMoE` takes it as `temporary=` and removes it on close())."""
    path = Path(path)
    if (path / MANIFEST).exists():  # a split (Manifest.read names what is wrong with its manifest)
        return path, None
    tmp = tempfile.TemporaryDirectory(prefix="wdmoe-split-")
    try:
        split_checkpoint(path, Path(tmp.name) / "split", num_devices or 8, placement)
    except BaseException:
        tmp.cleanup()
        raise
    return Path(tmp.name) / "split", tmp
