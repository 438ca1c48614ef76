"""The one place where supported MoE families are registered."""

from __future__ import annotations

from typing import Any

from wdmoe.errors import UnsupportedModelError
from wdmoe.model.families.base import Family

FAMILIES: tuple[Family, ...] = (
    Family("mixtral", ("mixtral",), "softmax over all experts, top-k, renormalized to sum 1"),
    Family(
        "qwen2-moe",
        ("qwen2_moe",),
        "softmax over all experts, top-k, renormalized only if norm_topk_prob",
        shared_experts=("shared_expert", "shared_expert_gate"),
    ),
    Family("olmoe", ("olmoe",), "softmax over all experts, top-k, renormalized only if norm_topk_prob"),
    Family("qwen3-moe", ("qwen3_moe",), "softmax over all experts, top-k, renormalized only if norm_topk_prob"),
    Family(
        "deepseek-v3",
        ("deepseek_v3",),
        "sigmoid scores + score-correction bias, grouped top-k (topk_group of n_group groups), weights from the "
        "unbiased scores, renormalized if norm_topk_prob, times routed_scaling_factor",
        shared_experts=("shared_experts",),
    ),
)

_BY_MODEL_TYPE: dict[str, Family] = {t: f for f in FAMILIES for t in f.model_types}


def supported_families() -> str:
    return ", ".join(f"{f.name} ({'/'.join(f.model_types)})" for f in FAMILIES)


def family_for(config: Any) -> Family:
    """The family of a transformers config; refuses other architectures and dense models by name."""
    model_type = getattr(config, "model_type", None)
    family = _BY_MODEL_TYPE.get(str(model_type))
    if family is None:
        raise UnsupportedModelError(
            f"model_type {model_type!r} is not a supported MoE family (a dense model or another architecture); "
            f"wdmoe supports: {supported_families()}"
        )
    return family
