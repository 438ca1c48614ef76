"""What a model family adapter declares: the router's semantics, which the policies need and the model cannot say.

Where the experts sit, which tensors go to the devices and what the devices compute are found from the model
itself (`wdmoe.model.discover`), for every family alike. The router and the combine are the model's own code, so
the split model equals the unsplit one whatever the router does. What code cannot derive is what the top-k weights
*mean*, which a policy that drops experts relies on: softmax or sigmoid scores, renormalized or not, grouped
top-k, a routed scaling factor. A `Family` records that in words and flags; a model type that is not registered
gets the generic default (`Family.generic`), whose flags come from the config's own fields where it has them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class Scoring(Enum):
    """How the router turns its logits into expert scores."""

    SOFTMAX = "softmax"
    SIGMOID = "sigmoid"
    UNREGISTERED = "the model's own (not registered)"


@dataclass(frozen=True)
class Family:
    """One MoE architecture family.

    Attributes:
        name: the family's short name, as users see it.
        model_types: the `config.model_type` values it covers.
        scoring: softmax or sigmoid scores (UNREGISTERED for the generic default).
        router: the router's semantics in words (what the top-k weights are).
        shared_experts: attribute names of the MoE block's always-on experts (they stay at the BS).
    """

    name: str
    model_types: tuple[str, ...]
    scoring: Scoring
    router: str
    shared_experts: tuple[str, ...] = ()

    @classmethod
    def generic(cls, config: Any) -> Family:
        """The default for a model type not registered: the router is the model's own code; its flags in words
        from the config fields it has (norm_topk_prob, n_group / topk_group, routed_scaling_factor)."""
        model_type = str(getattr(config, "model_type", "unknown"))
        scoring = str(getattr(config, "scoring_func", "") or "")
        parts = [f"{scoring} scores" if scoring else "the model's own router (scoring not registered)", "top-k"]
        if getattr(config, "topk_group", None) and getattr(config, "n_group", None):
            parts.append("grouped top-k")
        if getattr(config, "norm_topk_prob", None) is not None:
            parts.append("renormalized if norm_topk_prob")
        if getattr(config, "routed_scaling_factor", None) not in (None, 1, 1.0):
            parts.append("times routed_scaling_factor")
        known = {s.value: s for s in Scoring}
        return cls(model_type, (model_type,), known.get(scoring, Scoring.UNREGISTERED), ", ".join(parts))
