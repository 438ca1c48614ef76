"""Tiny random MoE models of every supported family, built from configs (no download).

Used by the tests, the benchmarks and `wdmoe demo` until a trained model ships. The routers get a larger weight
scale than the default initializer so that routing is decisive (no near-ties between experts), and DeepSeek's
score-correction bias is randomized so that the test really exercises it.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

TINY_FAMILIES = ("mixtral", "qwen2_moe", "olmoe", "qwen3_moe", "deepseek_v3")


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """A small config of `model_type` (hidden 32, 2-3 layers, 8 experts, top-2, vocab 128)."""
    common: dict[str, Any] = dict(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, num_experts_per_tok=2, tie_word_embeddings=False, initializer_range=0.1,
        bos_token_id=0, eos_token_id=None, pad_token_id=0,
    )
    per_family: dict[str, dict[str, Any]] = {
        "mixtral": dict(intermediate_size=64, num_local_experts=8),
        "qwen2_moe": dict(
            intermediate_size=64, moe_intermediate_size=48, shared_expert_intermediate_size=64, num_experts=8,
            norm_topk_prob=False, decoder_sparse_step=1, mlp_only_layers=[],
        ),
        "olmoe": dict(intermediate_size=64, num_experts=8, norm_topk_prob=False),
        "qwen3_moe": dict(
            intermediate_size=64, moe_intermediate_size=48, num_experts=8, norm_topk_prob=True, head_dim=8,
            decoder_sparse_step=1, mlp_only_layers=[],
        ),
        "deepseek_v3": dict(
            num_hidden_layers=3, intermediate_size=64, moe_intermediate_size=32, n_routed_experts=8,
            n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
            norm_topk_prob=True, kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=8, qk_nope_head_dim=8,
            v_head_dim=8, num_key_value_heads=4,
        ),
    }
    if model_type not in per_family:
        raise ValueError(f"no tiny config for model_type {model_type!r}; choose one of {', '.join(TINY_FAMILIES)}")
    return AutoConfig.for_model(model_type, **{**common, **per_family[model_type], **overrides})


def tiny_model(model_type: str = "mixtral", seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny random fp32 model of `model_type`, in eval mode, with decisive routers."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides), dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("mlp.gate") and hasattr(module, "weight"):
                module.weight.normal_(0.0, 1.0, generator=generator)
            bias = getattr(module, "e_score_correction_bias", None)
            if bias is not None:
                bias.copy_(torch.rand(bias.shape, generator=generator) * 0.2)
    return model.eval()
