"""One forward step over the new tokens of many sequences: the batched step continuous batching runs on.

    segments: sequence i brings t_i new tokens (its whole prompt at prefill, one token at decode) and its KV cache
    input_ids (1, sum t_i), position_ids (1, sum t_i): the tokens laid end to end, each at its own position
    every layer: projections, norms, routers, the LM head on all tokens at once; the MoE layer step
                 (`Runtime.run`) dispatches all of them to each device together, so the policy decides over the
                 whole batch and shares the bandwidth over it
    attention:   per segment, its queries against its own cache (`SegmentedAttention`)
    out:         (N, V) the logits of each segment's last token

Why this shape and not transformers' own continuous batching (`generate_batch`, `ContinuousBatchingManager`, the
paged caches): that machinery owns the generation loop (its scheduler, its sampling from one `GenerationConfig`,
its request ids) and changed between 5.17, the device image's transformers, and 5.24, installed here; per-request
sampling, stop strings, cancellation and the per-request telemetry would have to be bolted on from outside, and its
paged attention kernels compute each sequence's attention with other shapes than a run alone does. Here the only
hook is transformers' `AttentionInterface` (stable across both versions): the model's own modules compute
everything, and each segment's attention is transformers' `sdpa_attention_forward` on exactly the shapes a run of
that sequence alone gives it (prefill: causal over the prompt; decode: one query over the whole cache). A
sequence's cache is its own per-layer key/value tensors (`SequenceCache`), so admitting and retiring a sequence is
adding and dropping an object, with no padding and no attention mask.

Exactness: attention, sampling and every per-token operation see the same numbers as a run alone; the dense
matrix products (projections, experts, LM head) see more rows, and a BLAS may round a row differently with another
row count (fp32, ~1e-6 relative). Tokens are then identical and log-probabilities agree to ~1e-5
(tests/unit/runtime/test_batch.py states the bound it checks).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import torch

NAME = "wdmoe_segments"  # the attention implementation's name while a batched step runs


@dataclass
class SequenceCache:
    """One sequence's KV cache: per attention layer, keys and values (1, kv_heads, length, head_dim)."""

    key: dict[int, torch.Tensor] = field(default_factory=dict)
    value: dict[int, torch.Tensor] = field(default_factory=dict)
    length: int = 0  # tokens already in the cache (positions 0..length-1)


@dataclass(frozen=True)
class Segment:
    """Rows start..stop of the step's tokens belong to `cache`'s sequence."""

    start: int
    stop: int
    cache: SequenceCache


_STEP: contextvars.ContextVar[tuple[Segment, ...] | None] = contextvars.ContextVar("wdmoe_step", default=None)


def segmented_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature; query (1, heads, T, d), key/value (1, kv_heads, T, d) of the
    step's new tokens (rotary embedding applied). Returns (1, T, heads, d_v)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = _STEP.get()
    if segments is None:
        raise RuntimeError(f"attention implementation {NAME!r} runs only inside `forward_segments`")
    layer = int(module.layer_idx)
    kwargs.pop("is_causal", None)
    outs = []
    for seg in segments:
        cache = seg.cache
        k_new, v_new = key[:, :, seg.start : seg.stop], value[:, :, seg.start : seg.stop]
        if layer in cache.key:
            k_new = torch.cat([cache.key[layer], k_new], dim=2)
            v_new = torch.cat([cache.value[layer], v_new], dim=2)
        cache.key[layer], cache.value[layer] = k_new, v_new
        # a prompt (no past) is causal over itself; a decode token attends to the whole cache
        out, _ = sdpa_attention_forward(module, query[:, :, seg.start : seg.stop], k_new, v_new, None, **kwargs)
        outs.append(out)  # (1, t_i, heads, d_v)
    return torch.cat(outs, dim=1), None


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, segmented_attention)


@torch.inference_mode()
def forward_segments(hf_model: Any, tokens: list[list[int]], caches: list[SequenceCache]) -> torch.Tensor:
    """One forward step of `hf_model` over the new `tokens` of each sequence (module docstring); each cache grows
    by its sequence's tokens. Returns (N, V) fp32 logits of each sequence's last new token."""
    if not tokens or any(not t for t in tokens):
        raise ValueError(f"every sequence of a step brings at least one token; got lengths {[len(t) for t in tokens]}")
    _register()
    device = hf_model.device
    flat = [t for seq in tokens for t in seq]
    positions = [cache.length + i for seq, cache in zip(tokens, caches, strict=True) for i in range(len(seq))]
    segments, start = [], 0
    for seq, cache in zip(tokens, caches, strict=True):
        segments.append(Segment(start, start + len(seq), cache))
        start += len(seq)
    last = torch.tensor([s.stop - 1 for s in segments], device=device)
    config = hf_model.config
    before = config._attn_implementation
    token = _STEP.set(tuple(segments))
    config._attn_implementation = NAME
    try:
        out = hf_model(input_ids=torch.tensor([flat], device=device), position_ids=torch.tensor([positions],
                       device=device), use_cache=False, logits_to_keep=last)
    finally:
        config._attn_implementation = before
        _STEP.reset(token)
    for seq, cache in zip(tokens, caches, strict=True):
        cache.length += len(seq)
    return out.logits[0].float()  # (N, V)
