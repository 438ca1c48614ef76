"""The one place where router semantics are registered, and where families that need an adapter are refused.

A model type not listed in FAMILIES still runs (its experts are found and run by `wdmoe.model.discover` and
`wdmoe.model.device_experts`); it gets `Family.generic`. REFUSED names the model types whose experts module
cannot run split exactly, with the reason, measured by tests/unit/model/test_families_zoo.py.
"""

from __future__ import annotations

from typing import Any

from wdmoe.errors import UnsupportedModelError
from wdmoe.model.families.base import Family, Scoring

_SOFTMAX_NORM_IF = "softmax over all experts, top-k, renormalized only if norm_topk_prob"

FAMILIES: tuple[Family, ...] = (
    Family("mixtral", ("mixtral",), Scoring.SOFTMAX, "softmax over all experts, top-k, renormalized to sum 1"),
    Family(
        "qwen2-moe",
        ("qwen2_moe",),
        Scoring.SOFTMAX,
        _SOFTMAX_NORM_IF,
        shared_experts=("shared_expert", "shared_expert_gate"),
    ),
    Family("olmoe", ("olmoe",), Scoring.SOFTMAX, _SOFTMAX_NORM_IF),
    Family("qwen3-moe", ("qwen3_moe",), Scoring.SOFTMAX, _SOFTMAX_NORM_IF),
    Family(
        "deepseek-v3",
        ("deepseek_v3",),
        Scoring.SIGMOID,
        "sigmoid scores + score-correction bias, grouped top-k (topk_group of n_group groups), weights from the "
        "unbiased scores, renormalized if norm_topk_prob, times routed_scaling_factor",
        shared_experts=("shared_experts",),
    ),
)

# model_type -> why it is refused (the experts module's call does not split into per-expert outputs times weights)
REFUSED: dict[str, str] = {}

_BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def supported_families() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_for(config: Any) -> Family:
    """The registered family of a transformers config, else the generic default; refuses REFUSED types by name
    and reason. Whether the model has routed experts at all is found from the model (`wdmoe.model.discover`)."""
    model_type = str(getattr(config, "model_type", None))
    if model_type in REFUSED:
        raise UnsupportedModelError(f"model_type {model_type!r} needs an adapter: {REFUSED[model_type]}")
    return _BY_MODEL_TYPE.get(model_type) or Family.generic(config)
