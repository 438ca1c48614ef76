"""What a model family adapter declares, and the generic walk over a Hugging Face MoE model.

Every supported family (transformers >= 5) has the same module shapes: decoder layers in `model.model.layers`, an
MoE block at `layer.mlp` with a router at `.gate` (returning logits, top-k weights, top-k indices) and fused routed
experts at `.experts` (`gate_up_proj` (E, 2I, H), `down_proj` (E, H, I), `act_fn`). The BS keeps everything but
`.experts`. A family adapter only names its model types and documents its router semantics; a new family with the
same shapes costs one `Family(...)` line in `registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Family:
    """One supported MoE architecture family.

    Attributes:
        name: the family's short name, as users see it.
        model_types: the `config.model_type` values it covers.
        router: the router's semantics in words (what the top-k weights are).
        shared_experts: attribute names of the MoE block's always-on experts that stay at the BS.
    """

    name: str
    model_types: tuple[str, ...]
    router: str
    shared_experts: tuple[str, ...] = ()

    def expert_intermediate_size(self, config: Any) -> int:
        """I of one routed expert: `moe_intermediate_size` where the config has one, else `intermediate_size`."""
        return int(getattr(config, "moe_intermediate_size", None) or config.intermediate_size)

    def decoder_layers(self, hf_model: nn.Module) -> list[nn.Module]:
        return list(hf_model.model.layers)  # type: ignore[union-attr, arg-type]

    def moe_blocks(self, hf_model: nn.Module) -> dict[int, Any]:
        """The MoE blocks by layer index; dense layers (DeepSeek's leading ones, Qwen's mlp_only_layers) are absent."""
        blocks: dict[int, Any] = {}
        for index, layer in enumerate(self.decoder_layers(hf_model)):
            mlp = getattr(layer, "mlp", None)
            experts = getattr(mlp, "experts", None)
            if mlp is not None and hasattr(mlp, "gate") and hasattr(experts, "gate_up_proj"):
                blocks[index] = mlp
        return blocks
