"""Perception's calibration run (uses torch; import it lazily): a model's `ModelRequirement`, measured.

Contract: `requirement_of(hf_model)` counts the parameters (routed experts vs everything else) and reads the
shapes; `calibrate(model_dir)` also runs the model on held-out text (the shipped model's `heldout.txt`, tokenized
with the model's own tokenizer; seeded random ids when the directory has no tokenizer, e.g. a tiny random model)
and hooks every MoE router, whose outputs are (logits, top-k weights, top-k indices) in every supported family:

    popularity[l, e] = (tokens whose top-k at layer l includes e) / tokens          (rows sum to top_k)
    importance[l, e] = mean top-k combine weight of e over the tokens routed to it  (0 if none)

(papers.md §4.4 [R] proposes importance = mean gate weight x output-norm contribution; we keep the gate weight.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from wdmoe.model.shipped import HELDOUT_TEXT
from wdmoe.model.split import load_hf_model, moe_layout
from wdmoe.plan.requirement import ModelRequirement

DOC_END = "<|endofdoc|>"


def requirement_of(hf_model: Any, model_id: str = "model") -> ModelRequirement:
    """The requirement from the model's parameters alone: popularity uniform, no calibration."""
    _, blocks, num_experts = moe_layout(hf_model)
    first = next(iter(blocks.values())).experts
    expert_params = int(first.gate_up_proj[0].numel() + first.down_proj[0].numel())
    total = sum(int(p.numel()) for p in hf_model.parameters())
    dtype_bits = int(first.gate_up_proj.element_size() * 8)
    config = hf_model.config
    return ModelRequirement.build(
        model_id,
        tuple(sorted(blocks)),
        num_experts,
        int(config.num_experts_per_tok),
        int(config.hidden_size),
        dtype_bits,
        expert_params,
        total - expert_params * num_experts * len(blocks),
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
    _, blocks, num_experts = moe_layout(model)
    layers = sorted(blocks)
    counts = np.zeros((len(layers), num_experts))
    weights = np.zeros((len(layers), num_experts))

    def hook(pos: int) -> Any:
        def record(_module: Any, _inputs: Any, output: Any) -> None:
            index = output[2].reshape(-1).cpu().numpy()  # (T * k,)
            weight = output[1].reshape(-1).float().cpu().numpy()
            counts[pos] += np.bincount(index, minlength=num_experts)
            weights[pos] += np.bincount(index, weights=weight, minlength=num_experts)

        return record

    handles = [blocks[layer].gate.register_forward_hook(hook(pos)) for pos, layer in enumerate(layers)]
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
    )
    return requirement, source
