"""Perception's calibration run (uses torch; import it lazily): a model's `ModelRequirement`, measured.

Contract: `requirement_of(hf_model)` counts the parameters (routed experts vs everything else) and reads the
shapes from the model's experts modules, whatever the family's layout (`wdmoe.model.moe_shape`: every per-expert
tensor, biases included; FLOPs from the real tensors; MoE layers, E, top-k, H); `calibrate(model_dir)` also runs
the model on held-out text (the shipped model's `heldout.txt`, tokenized with the model's own tokenizer; seeded
random ids when the directory has no tokenizer, e.g. a tiny random model) and records the inputs of every experts
module, which transformers' standard interface fixes as `experts(hidden (T, H), top_k_index (T, k),
top_k_weights (T, k))` in every family (the router's own output format varies):

    popularity[l, e] = (tokens whose top-k at layer l includes e) / tokens          (rows sum to top_k)
    importance[l, e] = mean top-k combine weight of e over the tokens routed to it  (0 if none)

(papers.md §4.4 [R] proposes importance = mean gate weight x output-norm contribution; we keep the gate weight.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wdmoe.model.discover import experts_sites
from wdmoe.model.moe_shape import moe_shape
from wdmoe.model.shipped import HELDOUT_TEXT
from wdmoe.model.split import load_hf_model
from wdmoe.plan.requirement import ModelRequirement

DOC_END = "<|endofdoc|>"


def requirement_of(hf_model: Any, model_id: str = "model") -> ModelRequirement:
    """The requirement from the model's parameters alone: popularity uniform, no calibration."""
    shape = moe_shape(hf_model)
    total = sum(int(p.numel()) for p in hf_model.parameters())
    return ModelRequirement.build(
        model_id,
        shape.moe_layers,
        shape.num_experts,
        shape.top_k,
        shape.hidden_size,
        shape.expert_dtype_bits,
        shape.expert_params,
        total - shape.expert_params * shape.num_experts * len(shape.moe_layers),
        expert_flops_per_token=shape.expert_flops_per_token,
    )


def _token_ids(model_dir: Path, vocab_size: int, max_tokens: int, text: Path) -> tuple[torch.Tensor, str]:
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "tokenizer.model").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        ids: list[int] = []
        for doc in text.read_text(encoding="utf-8").split(DOC_END):
            if doc.strip():
                ids.extend(tokenizer(doc.strip())["input_ids"])
            if len(ids) >= max_tokens:
                break
        return torch.tensor(ids[:max_tokens]), str(text)
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab_size, (max_tokens,), generator=generator), "random token ids (no tokenizer)"


def calibrate(
    model_dir: Path, max_tokens: int = 4096, block_tokens: int = 256, text: Path = HELDOUT_TEXT
) -> tuple[ModelRequirement, str]:
    """The measured requirement of the model in `model_dir`, and what it was measured on (module docstring)."""
    model = load_hf_model(model_dir)
    base = requirement_of(model, str(model_dir))
    num_experts = base.num_experts
    sites = {site.layer: site for site in experts_sites(model)}
    counts = np.zeros((base.num_layers, num_experts))
    weights = np.zeros((base.num_layers, num_experts))

    def hook(pos: int) -> Any:
        def record(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            index_t = args[1] if len(args) > 1 else kwargs["top_k_index"]  # (T, k)
            weight_t = args[2] if len(args) > 2 else kwargs["top_k_weights"]  # (T, k)
            index = index_t.reshape(-1).cpu().numpy()
            weight = weight_t.reshape(-1).float().cpu().numpy()
            routed = (index >= 0) & (index < num_experts)  # a family may mark unused slots out of range
            counts[pos] += np.bincount(index[routed], minlength=num_experts)
            weights[pos] += np.bincount(index[routed], weights=weight[routed], minlength=num_experts)

        return record

    handles = [
        model.get_submodule(sites[layer].path).register_forward_pre_hook(hook(pos), with_kwargs=True)
        for pos, layer in enumerate(base.moe_layers)
    ]
    ids, source = _token_ids(model_dir, int(model.config.vocab_size), max_tokens, text)
    try:
        with torch.no_grad():
            for start in range(0, ids.shape[0], block_tokens):
                model(ids[start : start + block_tokens][None, :])
    finally:
        for handle in handles:
            handle.remove()
    tokens = int(ids.shape[0])
    popularity = counts / max(tokens, 1)
    importance = np.divide(weights, counts, out=np.zeros_like(weights), where=counts > 0)
    requirement = ModelRequirement.build(
        base.model_id,
        base.moe_layers,
        base.num_experts,
        base.top_k,
        base.hidden_size,
        base.dtype_bits,
        base.expert_params,
        base.non_expert_params,
        popularity,
        importance,
        tokens,
        base.expert_flops_per_token,
    )
    return requirement, source
