"""The device side of one MoE layer: the model's own experts class, holding only this device's experts.

Contract. `LocalExperts.run(hidden (m, H), expert (m,)) -> (m, H)`: row i is expert `expert[i]`'s output for
`hidden[i]`, computed by the model's experts class (transformers' `@use_experts_implementation` module: its gate
function, weight layout, biases, activation, post-expert norm and the experts implementation its config selects).
The class is called as `experts(hidden, top_k_index (m, 1), top_k_weights (m, 1) = 1)` with its per-expert tensors
replaced (`torch.func.functional_call`) by this device's experts stacked along dimension 0, and `top_k_index` the
slot of each row's expert in that stack. Multiplying by a weight of one is exact and each row is its own token, so
the class's `index_add_` onto zeros adds nothing: the output is the expert's output as the unsplit model computes
it before weighting; the BS weights and sums (`wdmoe.runtime.grouping.combine`).

A quantized expert (`wdmoe.model.quantize`: each 2-D per-expert tensor, vectors stay float) stays quantized in
memory and is dequantized to the compute dtype for the call, as the SwiGLU path does; the class then computes
with the dequantized tensors (its math is unchanged, only the weights are approximate).

Why module replacement rather than transformers' `ExpertsInterface.register`: the interface chooses one function
for every experts module of a model by the config's `_experts_implementation`, and a registered function would
still receive the full module (all E experts' weights) on the BS; wdmoe needs the BS to hold no expert weights at
all (the model is built on the meta device and the experts module is replaced by `RemoteExperts`), and the device
to hold only its own experts. Replacing the module keeps the call signature, so the router, the shared experts
and the residual stay the model's own code, and the class's own forward (through the interface, whatever
implementation the config selects) runs on the device.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from wdmoe.errors import ShardError
from wdmoe.model.compat import config_for_model
from wdmoe.model.discover import experts_sites
from wdmoe.model.quantize import QuantizedTensor
from wdmoe.model.shards import expert_key

# Experts classes whose forward is the plain SwiGLU of `wdmoe.model.expert.expert_ffn` (concatenated gate_up_proj
# (E, 2I, H), down_proj (E, H, I), act_fn = ACT2FN[config.hidden_act], no bias, no norm): their experts run there,
# with its fast paths (Triton, CUDA graphs, the GPU decode step); tests/unit/model/test_families_zoo.py checks both.
SWIGLU_CLASSES = frozenset(
    {"MixtralExperts", "Qwen2MoeExperts", "OlmoeExperts", "Qwen3MoeExperts", "DeepseekV3Experts"}
)

ExpertTensors = Mapping[str, torch.Tensor | QuantizedTensor]  # one expert's tensors by name in the experts module


class LocalExperts:
    """One layer's experts held by one device, run by the model's experts class (module docstring)."""

    def __init__(self, module: nn.Module, experts: Mapping[int, ExpertTensors], dtype: torch.dtype | None) -> None:
        """`module`: the model's experts module (on the meta device: only its code and attributes are used);
        `experts`: {expert id: its tensors}; `dtype`: the compute dtype (None: the stored floating dtype)."""
        self.module = copy.deepcopy(module)
        self.names = tuple(name for name, _ in _tensors(module))
        self.ids = tuple(sorted(experts))
        self.slot = {e: i for i, e in enumerate(self.ids)}
        self.quantized = any(isinstance(t, QuantizedTensor) for one in experts.values() for t in one.values())
        floats = [t for one in experts.values() for t in one.values() if isinstance(t, torch.Tensor)]
        stored = next((t.dtype for t in floats if t.is_floating_point()), torch.float32)
        self.dtype = dtype or stored
        self.experts = {e: {n: _cast(t, self.dtype) for n, t in one.items()} for e, one in experts.items()}
        self.stacked: dict[str, torch.Tensor] | None = None
        if not self.quantized:  # stacked once: a call then indexes slots, no copy
            self.stacked = {n: torch.stack([self.experts[e][n] for e in self.ids]) for n in self.names}  # type: ignore[misc]

    @property
    def nbytes(self) -> int:
        total = 0
        for one in self.experts.values():
            for t in one.values():
                total += t.nbytes if isinstance(t, QuantizedTensor) else t.numel() * t.element_size()
        return total

    def run(self, hidden: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:  # (m, H), (m,) on the CPU -> (m, H)
        ids = expert.tolist()
        if self.stacked is not None:
            tensors, slots = self.stacked, [self.slot[e] for e in ids]
            count = len(self.ids)
        else:
            distinct = sorted(set(ids))
            position = {e: i for i, e in enumerate(distinct)}
            tensors = {n: torch.stack([_dense(self.experts[e][n], self.dtype) for e in distinct]) for n in self.names}
            slots, count = [position[e] for e in ids], len(distinct)
        if hasattr(self.module, "num_experts"):  # grouped / batched implementations count experts with it
            setattr(self.module, "num_experts", count)  # noqa: B010 (an int attribute of an nn.Module)
        x = hidden.to(self.dtype)
        index = torch.tensor(slots, dtype=torch.long, device=x.device).unsqueeze(1)  # (m, 1)
        ones = torch.ones((x.shape[0], 1), dtype=x.dtype, device=x.device)  # (m, 1)
        out = functional_call(self.module, tensors, (x, index, ones))  # (m, H)
        return out.to(hidden.dtype)


def load_layer(
    module: nn.Module,
    layer: int,
    experts: list[int],
    shard: Mapping[str, torch.Tensor],
    bits: Mapping[int, int | None],
    dtype: torch.dtype | None,
) -> LocalExperts:
    """The `LocalExperts` of `layer` from a device shard's tensors (`bits[e]`: 8 / 4 for quantized experts)."""
    held: dict[int, dict[str, torch.Tensor | QuantizedTensor]] = {}
    for e in experts:
        one: dict[str, torch.Tensor | QuantizedTensor] = {}
        for name, _ in _tensors(module):
            key = expert_key(layer, e, name)
            width = bits.get(e)
            if key in shard:
                one[name] = shard[key]
            elif f"{key}.qweight" in shard and width is not None:
                one[name] = QuantizedTensor.from_tensors(dict(shard), key, width)
            else:
                raise ShardError(f"the device shard has no {key} (nor {key}.qweight): the split is incomplete")
        held[e] = one
    return LocalExperts(module, held, dtype)


@functools.lru_cache(maxsize=4)
def _meta_experts(config_json: str) -> dict[int, nn.Module]:
    from transformers import AutoModelForCausalLM

    data = json.loads(config_json)
    config = config_for_model(data.pop("model_type"), **data)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return {site.layer: model.get_submodule(site.path) for site in experts_sites(model)}


def meta_experts(config: Mapping[str, Any]) -> dict[int, nn.Module]:
    """{layer: the model's experts module, on the meta device}, built from a config dict (cached per config)."""
    return _meta_experts(json.dumps(dict(config), sort_keys=True))


def runs_as_swiglu(module: nn.Module) -> bool:
    """True when `module`'s class is one of SWIGLU_CLASSES with exactly gate_up_proj and down_proj."""
    names = {name for name, _ in _tensors(module)}
    return type(module).__name__ in SWIGLU_CLASSES and names == {"gate_up_proj", "down_proj"}


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())


def _cast(t: torch.Tensor | QuantizedTensor, dtype: torch.dtype) -> torch.Tensor | QuantizedTensor:
    if isinstance(t, QuantizedTensor) or not t.is_floating_point():
        return t
    return t.to(dtype)


def _dense(t: torch.Tensor | QuantizedTensor, dtype: torch.dtype) -> torch.Tensor:
    return t.dequantize(dtype) if isinstance(t, QuantizedTensor) else t
