"""What the radio model needs to know of a MoE model: its costs per token (pure values, no torch).

Contract: `ModelCosts` is built by the runtime from a model's config and BS weights (`DistributedMoE.model_costs`),
stored in traces (`wdmoe.sim.trace`), synthesized for Mixtral-shaped studies (`wdmoe.sim.synthesize`), and read by
the radio model's callers; it lives here so that none of them imports the runtime for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from wdmoe.radio.compute import dense_flops_per_token


@dataclass(frozen=True)
class ModelCosts:
    """What the radio model needs to know of the model (from its config and BS weights).

    Attributes:
        hidden_size: H, values per token on the air.
        expert_flops_per_token: FLOPs of one expert on one token: 2 per weight of its matrices, 1 per element of
            its biases (2 * 3 * H * I for a gated FFN without biases).
        expert_weight_bytes: bytes of one expert's tensors (matrices, biases, ...) at the devices' dtype.
        bs_params_per_layer: {MoE layer: BS parameters of the decoder layers since the previous MoE layer}
            (attention, norms, router, shared experts, leading dense MLPs).
        bytes_per_param: bytes of one BS weight.
    """

    hidden_size: int
    expert_flops_per_token: float
    expert_weight_bytes: float
    bs_params_per_layer: dict[int, float]
    bytes_per_param: float

    @classmethod
    def of_experts(cls, hidden_size: int, expert_params: int, expert_flops_per_token: float, bytes_per_param: float,
                   bs_params_per_layer: dict[int, float]) -> ModelCosts:
        """The costs of a model whose experts have `expert_params` elements each (any layout, biases included)."""
        return cls(hidden_size, float(expert_flops_per_token), float(expert_params) * bytes_per_param,
                   bs_params_per_layer, bytes_per_param)

    @classmethod
    def gated(cls, hidden_size: int, intermediate_size: int, bytes_per_param: float,
              bs_params_per_layer: dict[int, float]) -> ModelCosts:
        """The costs of a model whose experts are gated FFNs of H x I (gate, up, down: 3 H I weights each)."""
        weights = 3 * hidden_size * intermediate_size
        return cls(hidden_size, dense_flops_per_token(weights), float(weights) * bytes_per_param,
                   bs_params_per_layer, bytes_per_param)
