"""Every MoE model type of the installed transformers, as tiny random models built from configs (no download).

`moe_model_types()` lists the model types that have a `*ForCausalLM` and whose modeling module uses transformers'
standard experts module (`@use_experts_implementation`); `tiny_any_model(model_type)` builds one with 2 decoder
layers, hidden 32, 8 experts, top-2 (where the config has those fields) and decisive routers (see
`wdmoe.model.tiny`). Used by tests/unit/model/test_families_zoo.py and `wdmoe families`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from wdmoe.model.discover import experts_sites

SMALL: dict[str, Any] = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
    shared_expert_intermediate_size=64, num_experts=8, num_local_experts=8, n_routed_experts=8, moe_num_experts=8,
    num_experts_per_tok=2, top_k=2, moe_topk=2, n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24,
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=0, tie_word_embeddings=False,
    initializer_range=0.1, pad_token_id=0, bos_token_id=0, eos_token_id=1,
)
# model types whose config needs more than SMALL to be tiny and valid
HYBRID = ["linear_attention", "full_attention"]  # a hybrid's 2 tiny layers: one of each (generate needs attention)
EXTRA: dict[str, dict[str, Any]] = {
    "zaya": dict(num_experts_per_tok=1),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=0),
    "qwen3_next": dict(layer_types=HYBRID),
    "qwen3_5_moe_text": dict(layer_types=HYBRID),
    "qwen4_exp_text": dict(layer_types=HYBRID),
    "bailing_hybrid": dict(layer_group_size=2),
    "beam": dict(mlp_layer_types=["dense", "sparse"]),
    "granitemoehybrid": dict(
        mamba_n_heads=8, mamba_d_state=16, mamba_chunk_size=16, layer_types=["mamba", "attention"]
    ),
}
# model types whose tiny model is not built (yet), and why; the test skips them with this reason
NOT_BUILT: dict[str, str] = {
    "flint": "the tiny config's 2 layers have no experts module (where its config puts them: not investigated)",
    "dots1": "the default config leaves a size None that the model multiplies",
    "dots3_note": "a multimodal config whose text part SMALL does not reach",
    "dots3_note_text": "per-layer attention fields (per_layer_config) that SMALL does not set",
    "gemma4": "a multimodal config whose text part SMALL does not reach",
    "gemma4_text": "per-layer attention fields (per_layer_config) that SMALL does not set",
    "inkling2_loop_text": "fields SMALL does not shrink (vocabulary of 6.4M parameters)",
    "inkling2_text": "fields SMALL does not shrink (vocabulary of 6.4M parameters)",
    "kimi_linear": "linear-attention fields SMALL does not shrink",
    "lfm2_moe": "a layer-type list the default config leaves None",
    "qwen3_5_moe": "a multimodal config whose text part SMALL does not reach",
    "qwen4_exp_text": "a size its default config leaves None (integer division of None)",
    "qwen4_exp": "a multimodal config whose text part SMALL does not reach",
}
MAX_PARAMS = 3_000_000  # a "tiny" model above this keeps a field SMALL does not shrink: refused, not built


def moe_model_types() -> tuple[str, ...]:
    """Model types with a `*ForCausalLM` whose modeling code uses `@use_experts_implementation`, sorted."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    found = []
    for model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        if model_type not in CONFIG_MAPPING:
            continue
        module = CONFIG_MAPPING[model_type].__module__.replace(".configuration_", ".modeling_")
        try:
            source = inspect.getsource(importlib.import_module(module))
        except (ImportError, OSError):
            continue
        if "@use_experts_implementation" in source:
            found.append(model_type)
    return tuple(sorted(found))


def tiny_any_config(model_type: str, **overrides: Any) -> Any:
    """A tiny config of `model_type`: SMALL's fields where the default config has them, then EXTRA, overrides."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    default = CONFIG_MAPPING[model_type]()
    fields = {k: v for k, v in SMALL.items() if hasattr(default, k)}
    if hasattr(default, "kv_lora_rank"):  # multi-head latent attention: one KV head per attention head
        fields["num_key_value_heads"] = fields.get("num_attention_heads", 4)
    return AutoConfig.for_model(model_type, **{**fields, **EXTRA.get(model_type, {}), **overrides})


def tiny_any_model(model_type: str, seed: int = 0, **overrides: Any) -> PreTrainedModel:
    """A tiny random fp32 model of `model_type`, in eval mode, with decisive routers (weights N(0, 1))."""
    config = tiny_any_config(model_type, **overrides)
    with torch.device("meta"):
        size = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    if size > MAX_PARAMS:
        raise ValueError(f"the tiny {model_type} config still has {size} parameters (> {MAX_PARAMS}): a field "
                         "that SMALL does not shrink; add it to EXTRA")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for site in experts_sites(model):
            if site.router_path is not None:
                model.get_submodule(site.router_path).weight.normal_(0.0, 1.0, generator=generator)
    return model.eval()
