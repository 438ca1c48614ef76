"""Every MoE model type of the installed transformers, as tiny random models built from configs (no download).

`moe_model_types()` lists the model types that have a `*ForCausalLM` and whose modeling module uses transformers'
standard experts module (`@use_experts_implementation`); `tiny_any_model(model_type)` builds one with 2 decoder
layers, hidden 32, 8 experts, top-2 (where the config has those fields) and decisive routers (see
`wdmoe.model.tiny`); EXTRA holds, per model type, what else its config needs to be tiny and valid (layer-type
lists, sizes SMALL does not name; inkling2_loop_text has 3 layers, its loop cannot start at layer 0). A multimodal
model type gets the tiny config of its text model type as `text_config`, and the model is what
`AutoModelForCausalLM` builds from it (see `tiny_any_config`). Used by tests/unit/model/test_families_zoo.py and
`wdmoe families`.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

from wdmoe.model.compat import NEWER_MOE_TYPES, newer_note
from wdmoe.model.discover import experts_sites

SMALL: dict[str, Any] = dict(
    vocab_size=128, hidden_size=32, intermediate_size=64, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
    shared_expert_intermediate_size=64, num_experts=8, num_local_experts=8, n_routed_experts=8, moe_num_experts=8,
    num_experts_per_tok=2, top_k=2, moe_topk=2, n_group=2, topk_group=1, kv_lora_rank=16, q_lora_rank=24,
    qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, first_k_dense_replace=0, tie_word_embeddings=False,
    initializer_range=0.1, pad_token_id=0, bos_token_id=0, eos_token_id=1,
)
# model types whose config needs more than SMALL to be tiny and valid (each line says why)
HYBRID = ["linear_attention", "full_attention"]  # a hybrid's 2 tiny layers: one of each (generate needs attention)
INKLING2: dict[str, Any] = dict(  # every size SMALL does not reach: the real vocabulary (6.4M parameters), SWA heads
    unpadded_vocab_size=120, swa_num_attention_heads=4, swa_num_key_value_heads=2, swa_head_dim=8,
    sliding_window_size=8, d_rel=4, rel_extent=16, n_layers_per_attn_res_block=1,
    layer_types=["hybrid_sliding", "hybrid"],  # must have num_hidden_layers entries: one of each
)
EXTRA: dict[str, dict[str, Any]] = {
    "zaya": dict(num_experts_per_tok=1),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=0),
    "qwen3_next": dict(layer_types=HYBRID),
    "qwen3_5_moe_text": dict(layer_types=HYBRID),
    "bailing_hybrid": dict(layer_group_size=2),
    "beam": dict(mlp_layer_types=["dense", "sparse"]),
    "granitemoehybrid": dict(
        mamba_n_heads=8, mamba_d_state=16, mamba_chunk_size=16, layer_types=["mamba", "attention"]
    ),
    "dots1": dict(n_shared_experts=1),  # the default leaves it None and the model multiplies it
    "flint": dict(mlp_only_layers=[]),  # the default makes layers 0 and 1 dense: none of 2 tiny layers has experts
    # the default leaves layer_types None (it must name each layer) and makes the first 2 layers dense
    "lfm2_moe": dict(layer_types=["conv", "full_attention"], num_dense_layers=0),
    # "full_attention" layers are indexed (QSA) attention, whose indexer sizes the default leaves None; the
    # linear-attention and hyper-connection sizes are not SMALL's fields
    "qwen4_exp_text": dict(
        layer_types=HYBRID, indexer_n_heads=2, indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=4,
        indexer_compress_ratio=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2,
        linear_num_value_heads=4, hc_lowrank=8,
    ),
    # per_layer_config: per-layer attention sizes of the real 46 layers (keys "02".."44"); {} makes the tiny
    # layers homogeneous. The SWA head_dim must be qk_nope + qk_rope (8 + 8); its indexer sizes are not SMALL's
    "dots3_note_text": dict(
        per_layer_config={}, head_dim=16, layer_types=["indexed_attention", "sliding_attention"],
        mlp_layer_types=["sparse", "sparse"], index_topk=4, index_head_dim=8, index_n_heads=2,
        shared_experts_intermediate_size=32,
    ),
    # per_layer_config as above (wider heads on the real full-attention layers); the MoE block is off by default;
    # the per-layer input embedding is as large as the vocabulary (262144 x 256)
    "gemma4_text": dict(
        per_layer_config={}, layer_types=["sliding_attention", "full_attention"], enable_moe_block=True,
        num_experts=8, top_k_experts=2, moe_intermediate_size=32, vocab_size_per_layer_input=128,
        hidden_size_per_layer_input=8,
    ),
    # the composite config checks that its towers' adapters output the text hidden size (AutoModelForCausalLM
    # builds only the text model: the towers are never made)
    "dots3_note": dict(vision_config=dict(adapter_out_dim=32), audio_config=dict(adapter_out_dim=32)),
    "inkling2_text": INKLING2,
    # the loop must start after layer 0 (its config checks loop_layer_index_start > 0): 3 layers, 1 and 2 looped
    "inkling2_loop_text": dict(
        INKLING2, num_hidden_layers=3, layer_types=["hybrid_sliding", "hybrid", "hybrid_sliding"],
        loop_layer_index_start=1, loop_layer_index_end=3, loop_num_passes=2, loop_gate_rank=4,
    ),
    # the MoE sits in layers 1.. by default; the linear-attention (KDA) heads are not SMALL's fields
    "kimi_linear": dict(
        num_experts_per_token=2, mlp_layer_types=["sparse", "sparse"], layer_types=HYBRID, linear_head_dim=8,
        linear_num_heads=4, qk_head_dim=16,
    ),
}
# model types whose tiny model is not built (yet), and why; the test skips them with this reason
NOT_BUILT: dict[str, str] = {}
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


def newer_moe_types() -> dict[str, str]:
    """{model type: why it is not here}: the types with the standard experts module in a newer transformers than
    the installed one (`wdmoe.model.compat.NEWER_MOE_TYPES`) that `moe_model_types()` does not list; tests skip them
    with this reason (empty with transformers 5.24)."""
    here = set(moe_model_types())
    return {t: newer_note(t).strip() for t in sorted(NEWER_MOE_TYPES - here)}


def tiny_any_config(model_type: str, **overrides: Any) -> Any:
    """A tiny config of `model_type`: SMALL's fields where the default config has them, then EXTRA, overrides.

    A multimodal config (one with a `text_config`) gets the tiny config of its text model type as `text_config`
    (with `overrides`) and keeps its own defaults otherwise: no vision or audio tower is made tiny, so a type
    whose `*ForCausalLM` needed one would exceed MAX_PARAMS (none does in transformers 5.24: `AutoModelForCausalLM`
    builds the text model from it, or, for gemma4, the composite model without the towers its config leaves None).
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    config_class = CONFIG_MAPPING[model_type]
    text_class = getattr(config_class, "sub_configs", {}).get("text_config")
    if text_class is not None:
        text = tiny_any_config(text_class.model_type, **overrides)
        return AutoConfig.for_model(model_type, text_config=text.to_dict(), **EXTRA.get(model_type, {}))
    default = config_class()
    fields = {k: v for k, v in SMALL.items() if _has_field(default, k)}
    if _has_field(default, "kv_lora_rank"):  # multi-head latent attention: one KV head per attention head
        fields["num_key_value_heads"] = fields.get("num_attention_heads", 4)
    return AutoConfig.for_model(model_type, **{**fields, **EXTRA.get(model_type, {}), **overrides})


def _has_field(config: Any, name: str) -> bool:
    try:
        return hasattr(config, name)
    except AmbiguousGlobalPerLayerAttributeError:  # a per-layer field (it varies across layers): the config has it
        return True


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
