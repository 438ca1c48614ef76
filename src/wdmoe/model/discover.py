"""Discovery: where a Hugging Face model's routed experts sit, found from the model's own structure.

Contract. `experts_sites(model)` returns one `ExpertsSite` per experts module of transformers' standard interface,
wherever it sits (`model.layers.3.mlp.experts`, `...block_sparse_moe.experts`, `...feed_forward.experts`,
`...mixer.experts`): a module whose class is decorated by `@use_experts_implementation` and is called as
`experts(hidden (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)`. It is recognised by what the
decorator gives every instance (`has_gate`, `is_concatenated`, `is_transposed`, `has_bias`; transformers 5.24 adds
`has_post_expert_norm`) and its class (`_apply_gate`), never by a family's path. Its layer is the index of the
decoder layer list it sits in; its router is the sibling module whose weight has one row per expert; its
per-expert tensors are every parameter and buffer whose first dimension is the expert count (weights, biases,
scales, norms).

`param_split(model)` says, for every entry of the model's state dict, whether it goes to the devices (and as which
(layer, tensor), dimension 0 being the expert) or stays at the BS, and which BS entries transformers keeps in fp32.
It works on a model built on the meta device, so a split can be planned from the config alone.

Dense layers (DeepSeek's leading ones), MoE every n-th layer and hybrid attention / SSM models are handled by
construction: a layer without an experts module has no site and stays whole at the BS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wdmoe.errors import UnsupportedModelError

# What `@use_experts_implementation` sets on every instance. transformers 5.17 sets the first four; 5.24 adds
# `has_post_expert_norm` (False when absent: 5.17's experts classes have no post-expert norm).
DECORATOR_FLAGS = ("has_gate", "is_concatenated", "is_transposed", "has_bias")
OPTIONAL_FLAGS = ("has_post_expert_norm",)
ROUTER_NAMES = ("gate", "router")  # preferred names of the router among the block's children


@dataclass(frozen=True)
class ExpertsSite:
    """One experts module of the standard interface.

    Attributes:
        layer: the index of the decoder layer it sits in.
        path: its module path in the model, e.g. "model.layers.3.mlp.experts".
        router_path: the module path of its router (None where no sibling has one weight row per expert).
        num_experts: E, the first dimension of every per-expert tensor.
        tensors: names (inside the experts module) of its per-expert parameters and buffers, first dim E.
        flags: the decorator's layout flags ({"has_bias": True, ...}).
        class_name: the experts class, e.g. "MixtralExperts".
    """

    layer: int
    path: str
    router_path: str | None
    num_experts: int
    tensors: tuple[str, ...]
    flags: Mapping[str, bool]
    class_name: str

    @property
    def block_path(self) -> str:
        """The module that calls the experts (the MoE block): the experts module's parent."""
        return self.path.rpartition(".")[0]


@dataclass(frozen=True)
class ExpertTensor:
    """A state-dict entry that goes to the devices: tensor `name` of layer `layer`'s experts, dim 0 = expert."""

    layer: int
    name: str
    num_experts: int


@dataclass(frozen=True)
class ParamSplit:
    """Where each state-dict entry of a model goes (`param_split`).

    Attributes:
        experts: {state-dict name: ExpertTensor}: split along dimension 0; expert e of it goes into the shard of
            the devices holding (layer, e), under `wdmoe.model.shards.expert_key(layer, e, name)`.
        bs: the state-dict names that stay at the BS (everything else), in state-dict order.
        keep_fp32: the BS names transformers keeps in float32 when the model is loaded in `dtype`.
        dtype: the model's own dtype (its config's), the BS part's dtype.
    """

    experts: Mapping[str, ExpertTensor]
    bs: tuple[str, ...]
    keep_fp32: frozenset[str]
    dtype: torch.dtype


def is_standard_experts(module: nn.Module) -> bool:
    """True for an instance of a class decorated by transformers' `@use_experts_implementation`."""
    return all(hasattr(module, flag) for flag in DECORATOR_FLAGS) and hasattr(type(module), "_apply_gate")


def experts_sites(model: nn.Module) -> tuple[ExpertsSite, ...]:
    """Every experts module of the standard interface in `model`, in layer order (module docstring)."""
    layer_lists = {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    sites = []
    for path, module in model.named_modules():
        if not is_standard_experts(module):
            continue
        layer = _layer_index(path, layer_lists)
        num_experts = _num_experts(path, module)
        tensors = tuple(name for name, t in _own_tensors(module) if t.dim() >= 1 and t.shape[0] == num_experts)
        others = [name for name, t in _own_tensors(module) if name not in tensors]
        if others:
            raise UnsupportedModelError(
                f"{path} ({type(module).__name__}) holds {others[:3]}, whose first dimension is not the expert "
                f"count {num_experts}: wdmoe cannot say which device needs them; this family needs an adapter"
            )
        flags = {flag: bool(getattr(module, flag, False)) for flag in DECORATOR_FLAGS + OPTIONAL_FLAGS}
        router = _router_path(model, path, num_experts)
        sites.append(ExpertsSite(layer, path, router, num_experts, tensors, flags, type(module).__name__))
    layers = [s.layer for s in sites]
    if len(set(layers)) != len(layers):
        raise UnsupportedModelError(
            f"decoder layers {sorted({x for x in layers if layers.count(x) > 1})} hold more than one experts module; "
            "wdmoe places one experts module per layer: this family needs an adapter"
        )
    return tuple(sorted(sites, key=lambda s: s.layer))


def param_split(model: nn.Module) -> ParamSplit:
    """Which state-dict entries of `model` (real or on the meta device) go to the devices, and which stay."""
    sites = experts_sites(model)
    experts: dict[str, ExpertTensor] = {}
    for site in sites:
        for name in site.tensors:
            experts[f"{site.path}.{name}"] = ExpertTensor(site.layer, name, site.num_experts)
    names = list(model.state_dict().keys())
    bs = tuple(n for n in names if n not in experts)
    dtype = config_dtype(getattr(model, "config", None))
    fp32 = fp32_names(model, bs, dtype)
    return ParamSplit(experts, bs, fp32, dtype)


def config_dtype(config: Any) -> torch.dtype:
    """The model's own dtype: its config's `dtype` (transformers >= 5) or `torch_dtype`; float32 when unset."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and isinstance(getattr(torch, value, None), torch.dtype):
        return getattr(torch, value)  # type: ignore[no-any-return]
    return torch.float32


def fp32_names(model: nn.Module, names: tuple[str, ...] | list[str], dtype: torch.dtype) -> frozenset[str]:
    """The entries of `names` that transformers keeps in float32 when `model` is loaded in `dtype`: its own
    dtype plan (`_keep_in_fp32_modules` for fp16, `_keep_in_fp32_modules_strict` for fp16 and bf16), matched the
    way its loader matches it."""
    plan_of = getattr(model, "_get_dtype_plan", None)
    plan = plan_of(dtype) if plan_of is not None else {}
    patterns = [p for p, d in plan.items() if d == torch.float32]
    if not patterns:
        return frozenset()
    from transformers.core_model_loading import build_glob_alternation

    alternation, _, _ = build_glob_alternation(patterns)
    return frozenset(n for n in names if alternation.search(n))


def _own_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The experts module's parameters and persistent buffers, submodules included (a post-expert norm)."""
    params = list(module.named_parameters())
    buffers = [(n, b) for n, b in module.named_buffers() if _persistent(module, n)]
    return params + buffers


def _persistent(module: nn.Module, name: str) -> bool:
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    return leaf not in owner._non_persistent_buffers_set


def _num_experts(path: str, module: nn.Module) -> int:
    """E: the module's `num_experts` where it has one, else the first dimension its weights share."""
    declared = getattr(module, "num_experts", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    firsts = [t.shape[0] for _, t in module.named_parameters() if t.dim() >= 2]
    if not firsts or len(set(firsts)) != 1:
        raise UnsupportedModelError(
            f"{path} ({type(module).__name__}) has no num_experts and its weights' first dimensions {firsts} differ: "
            "the expert count cannot be derived; this family needs an adapter"
        )
    return int(firsts[0])


def _layer_index(path: str, layer_lists: set[str]) -> int:
    """The index, in the outermost module list on `path`, of the item that holds the experts module."""
    parts = path.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and ".".join(parts[:i]) in layer_lists:
            return int(part)
    raise UnsupportedModelError(f"experts module {path} is not inside a list of decoder layers; it needs an adapter")


def _router_path(model: nn.Module, path: str, num_experts: int) -> str | None:
    """The module of the block, outside the experts, whose weight has `num_experts` rows (the router): the
    shallowest first, "gate" / "router" first among equals."""
    block_path, _, own = path.rpartition(".")
    block = model.get_submodule(block_path) if block_path else model
    candidates = []
    for name, child in block.named_modules():
        weight = getattr(child, "weight", None)
        inside_experts = name == own or name.startswith(own + ".")
        if name and not inside_experts and isinstance(weight, torch.Tensor) and weight.dim() == 2 \
                and weight.shape[0] == num_experts:
            candidates.append(name)
    candidates.sort(key=lambda n: (n.count("."), n.rpartition(".")[2] not in ROUTER_NAMES, n))
    return f"{block_path}.{candidates[0]}" if candidates else None

