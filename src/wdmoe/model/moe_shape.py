"""What the cost models need of a MoE model, derived from its experts modules and config (any family).

Contract: `moe_shape(model)` reads a transformers model (real or on the meta device) through
`wdmoe.model.discover.experts_sites`, never through a family's path or tensor names:

- MoE layers: the decoder-layer indices that hold an experts module; E: their expert count (one for all);
- one expert's parameters: the sum, over every per-expert tensor of the experts module (weights, biases, scales,
  norms: everything whose first dimension is E), of the elements of one expert's slice;
- one expert's FLOPs on one token: 2 per element of each per-expert matrix (a slice of 2 or more dimensions: one
  multiply-add per weight) + 1 per element of each per-expert vector or scalar (a bias add, a norm's scale);
  the activation, the gate product and the combine are not counted (as the dense FFN count, `radio.compute`);
  for a gated FFN of H x I without biases this is 2 * 3 * H * I, the count `ModelCosts.gated` always used;
- top-k: the router's `top_k` (or the MoE block's), else the config's field (`num_experts_per_tok`, ...);
- H: the config's `hidden_size`, else the router weight's input width;
- each decoder layer's parameters outside its experts module (attention, norms, routers, shared experts, dense
  MLPs, SSM mixers): what the BS computes for that layer.

`moe_shape_of_config(config)` builds the model on the meta device (no weights allocated) and reads it: the
runtime's BS model has its experts replaced by remote ones, so their shapes come from the config.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from wdmoe.errors import UnsupportedModelError
from wdmoe.model.discover import ExpertsSite, experts_sites

TOP_K_FIELDS = ("num_experts_per_tok", "moe_topk", "top_k", "moe_k", "num_experts_per_token", "experts_per_token")


@dataclass(frozen=True)
class MoeShape:
    """A MoE model's routed experts and backbone, as the cost models count them (module docstring).

    Attributes:
        moe_layers: decoder-layer indices of the MoE layers, ascending.
        num_experts: E routed experts per MoE layer. top_k: experts per token.
        hidden_size: H, values per token on the air.
        expert_params: elements of one routed expert's tensors (weights, biases, scales, norms).
        expert_flops_per_token: FLOPs of one routed expert on one token.
        expert_dtype_bits: bits of one element of the experts' tensors as the model holds them.
        layer_params: {decoder layer index: parameters of that layer outside its experts module}, every layer.
    """

    moe_layers: tuple[int, ...]
    num_experts: int
    top_k: int
    hidden_size: int
    expert_params: int
    expert_flops_per_token: float
    expert_dtype_bits: int
    layer_params: dict[int, int]

    def bs_params_per_layer(self) -> dict[int, float]:
        """{MoE layer: BS parameters of the decoder layers since the previous MoE layer, itself included}; the
        layers after the last MoE layer count with it (the BS computes them in that step's wake)."""
        per_layer: dict[int, float] = {}
        pending = 0.0
        for index in sorted(self.layer_params):
            pending += float(self.layer_params[index])
            if index in self.moe_layers:
                per_layer[index], pending = pending, 0.0
        if pending and self.moe_layers:
            per_layer[self.moe_layers[-1]] += pending
        return per_layer


def moe_shape(model: nn.Module) -> MoeShape:
    """The `MoeShape` of a transformers model with experts modules of the standard interface (real or meta)."""
    sites = experts_sites(model)
    config = getattr(model, "config", None)
    if not sites:
        raise UnsupportedModelError(
            f"this {getattr(config, 'model_type', '?')} model has no experts module of transformers' standard "
            "interface (@use_experts_implementation): it has no routed experts to cost"
        )
    counts = {s.num_experts for s in sites}
    if len(counts) != 1:
        raise UnsupportedModelError(f"MoE layers differ in expert count {sorted(counts)}; not supported")
    per_expert = {_per_expert(model, s) for s in sites}
    if len(per_expert) != 1:
        raise UnsupportedModelError(
            f"MoE layers differ in their experts' tensors {sorted(per_expert)}: one expert size per model is assumed"
        )
    params, flops, bits = per_expert.pop()
    first = sites[0]
    return MoeShape(
        tuple(s.layer for s in sites), counts.pop(), _top_k(model, first), _hidden_size(model, first),
        params, flops, bits, _layer_params(model, sites),
    )


def moe_shape_of_config(config: Any) -> MoeShape:
    """`moe_shape` of the model `config` describes, built on the meta device (no weights allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(copy.deepcopy(config))  # from_config may set fields of its config
    return moe_shape(model)


def expert_flops(slices: list[torch.Size]) -> float:
    """FLOPs of one expert on one token from the shapes of its per-expert slices (module docstring)."""
    return float(sum(2 * s.numel() if len(s) >= 2 else s.numel() for s in slices))


def _per_expert(model: nn.Module, site: ExpertsSite) -> tuple[int, float, int]:
    """(elements, FLOPs per token, bits per element) of one expert of `site`: slices of its per-expert tensors."""
    module = model.get_submodule(site.path)
    tensors = [_tensor(module, name) for name in site.tensors]
    slices = [t.shape[1:] for t in tensors]
    largest = max(tensors, key=lambda t: t[0].numel())
    return sum(s.numel() for s in slices), expert_flops(slices), int(largest.element_size() * 8)


def _tensor(module: nn.Module, name: str) -> torch.Tensor:
    owner_path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    tensor = getattr(owner, leaf)
    assert isinstance(tensor, torch.Tensor), name  # discover listed it among the module's parameters and buffers
    return tensor


def _top_k(model: nn.Module, site: ExpertsSite) -> int:
    """The router's `top_k`, else the MoE block's, else the config's top-k field (TOP_K_FIELDS)."""
    owners: list[Any] = [model.get_submodule(site.router_path)] if site.router_path else []
    owners += [model.get_submodule(site.block_path), getattr(model, "config", None)]
    for owner in owners:
        for field in ("top_k", *TOP_K_FIELDS):
            value = getattr(owner, field, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    raise UnsupportedModelError(
        f"{site.path}: experts per token not found (no top_k on the router or block, none of {TOP_K_FIELDS} in the "
        "config); this family needs an adapter"
    )


def _hidden_size(model: nn.Module, site: ExpertsSite) -> int:
    """H: the config's hidden_size, else the router weight's input width."""
    value = getattr(getattr(model, "config", None), "hidden_size", None)
    if isinstance(value, int) and value > 0:
        return value
    weight = getattr(model.get_submodule(site.router_path), "weight", None) if site.router_path else None
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[1])
    raise UnsupportedModelError(f"{site.path}: the hidden size is in neither the config nor a router weight")


def _layer_params(model: nn.Module, sites: tuple[ExpertsSite, ...]) -> dict[int, int]:
    """{index: parameters of decoder layer `index` outside its experts module} over the whole decoder list."""
    layers_path = _layers_path(model, sites[0])
    layers = model.get_submodule(layers_path)
    assert isinstance(layers, nn.ModuleList), layers_path  # _layers_path returns a module list's path
    experts = {s.layer: s.path.removeprefix(f"{layers_path}.{s.layer}.") for s in sites}
    out = {}
    for index, layer in enumerate(layers):
        own = experts.get(index)
        out[index] = sum(
            int(p.numel()) for name, p in layer.named_parameters()
            if own is None or not (name == own or name.startswith(own + "."))
        )
    return out


def _layers_path(model: nn.Module, site: ExpertsSite) -> str:
    """The decoder layer list holding `site` ("model.layers" of "model.layers.3.mlp.experts"): the outermost
    module list on its path, as `discover` finds the site's layer index."""
    lists = {name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)}
    parts = site.path.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit() and ".".join(parts[:i]) in lists:
            return ".".join(parts[:i])
    raise UnsupportedModelError(f"{site.path}: its decoder layer list is not on its path")
