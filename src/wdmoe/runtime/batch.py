"""One forward step over the new tokens of many sequences: the batched step continuous batching runs on.

    segments: sequence i brings t_i new tokens (its whole prompt at prefill, one token at decode) and its KV cache
    input_ids (1, sum t_i), position_ids (1, sum t_i): the tokens laid end to end, each at its own position
    every layer: projections, norms, routers, the LM head on all tokens at once; the MoE layer step
                 (`Runtime.run`) dispatches all of them to each device together, so the policy decides over the
                 whole batch and shares the bandwidth over it
    attention:   a prompt against itself, causally; the decode tokens of all sequences in one call, each against
                 its own cache (`segmented_attention`)
    out:         (N, V) the logits of each segment's last token

Why this shape and not transformers' own continuous batching (`generate_batch`, `ContinuousBatchingManager`, the
paged caches): that machinery owns the generation loop (its scheduler, its sampling from one `GenerationConfig`,
its request ids) and changed between 5.17, the device image's transformers, and 5.24, installed here; per-request
sampling, stop strings, cancellation and the per-request telemetry would have to be bolted on from outside, and its
paged attention kernels compute each sequence's attention with other shapes than a run alone does. Here the only
hook is transformers' `AttentionInterface` (stable across both versions): the model's own modules compute
everything else. A sequence's cache is its own per-layer key/value buffers (`SequenceCache`), so admitting and
retiring a sequence is adding and dropping an object; only the decode attention pads the caches (to the longest,
masked) so that one call serves every sequence.

Exactness: sampling and every per-token operation see the same numbers as a run alone; the dense matrix products
(projections, experts, LM head) see more rows and the decode attention more (masked) keys, and a BLAS may round a
row differently with another row count (fp32, ~1e-6 relative). Tokens are then identical and log-probabilities
agree to ~1e-6 (tests/unit/runtime/test_batch.py checks 1e-4).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

import torch

NAME = "wdmoe_segments"  # the attention implementation's name while a batched step runs


@dataclass
class SequenceCache:
    """One sequence's KV cache: per attention layer, key and value buffers (capacity, kv_heads, head_dim) whose
    first `length` rows hold positions 0..length-1 (grown by doubling, so a decode token is one in-place write)."""

    key: dict[int, torch.Tensor] = field(default_factory=dict)
    value: dict[int, torch.Tensor] = field(default_factory=dict)
    length: int = 0  # tokens already in the cache (positions 0..length-1), all layers

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> int:
        """Write the step's (t, kv_heads, d) keys and values after the cached ones; returns the new length."""
        start, stop = self.length, self.length + key.shape[0]
        if layer not in self.key or self.key[layer].shape[0] < stop:
            self.key[layer] = _grown(self.key.get(layer), key, start, stop)
            self.value[layer] = _grown(self.value.get(layer), value, start, stop)
        self.key[layer][start:stop] = key
        self.value[layer][start:stop] = value
        return stop


def _grown(old: torch.Tensor | None, like: torch.Tensor, keep: int, need: int) -> torch.Tensor:
    new = like.new_empty((max(need, 2 * (0 if old is None else old.shape[0]), 16), *like.shape[1:]))
    if old is not None and keep:
        new[:keep] = old[:keep]
    return new


@dataclass(frozen=True)
class Segment:
    """Rows start..stop of the step's tokens belong to `cache`'s sequence."""

    start: int
    stop: int
    cache: SequenceCache


@dataclass
class _Step:
    """The running step's segments, and what its decode attention computes once for every layer: every layer
    appends one key per decode segment, so their rows, cache lengths and key mask are the same in all layers."""

    segments: tuple[Segment, ...]
    decode: list[Segment] | None = None  # the segments of one token attending to a cache
    rows: torch.Tensor | None = None  # (B,) their rows among the step's tokens; None: rows 0..B-1, all of them
    lengths: list[int] = field(default_factory=list)  # their cache lengths, this step's key included
    valid: torch.Tensor | None = None  # (B, 1, 1, L_max) key mask of the padded caches


_STEP: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("wdmoe_step", default=None)


def segmented_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-interface signature; query (1, heads, T, d), key/value (1, kv_heads, T, d) of the
    step's new tokens (rotary embedding applied). Returns (1, T, heads, d_v).

    A prompt attends causally to itself (transformers' `sdpa_attention_forward`, as in a run alone); the decode
    tokens of every sequence attend to their caches in one call, the caches padded to the longest and masked."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    step = _STEP.get()
    if step is None:
        raise RuntimeError(f"attention implementation {NAME!r} runs only inside `forward_segments`")
    layer = int(module.layer_idx)
    kwargs.pop("is_causal", None)
    k_rows, v_rows = key[0].transpose(0, 1), value[0].transpose(0, 1)  # (T, kv_heads, d)
    out = query.new_empty((1, query.shape[2], query.shape[1], value.shape[-1]))  # (1, T, heads, d_v)
    first = step.decode is None  # the step's first attention layer: which segments decode
    decode: list[Segment] = []
    for seg in step.segments:
        length = seg.cache.append(layer, k_rows[seg.start : seg.stop], v_rows[seg.start : seg.stop])
        if seg.stop - seg.start == 1 and length > 1:
            if first:
                decode.append(seg)
                step.lengths.append(length)
            continue
        k = seg.cache.key[layer][:length].transpose(0, 1).unsqueeze(0)  # (1, kv_heads, L, d)
        v = seg.cache.value[layer][:length].transpose(0, 1).unsqueeze(0)
        q = query[:, :, seg.start : seg.stop]
        out[:, seg.start : seg.stop] = sdpa_attention_forward(module, q, k, v, None, **kwargs)[0]
    if first:
        step.decode = decode
        if decode:
            starts = [seg.start for seg in decode]
            if starts != list(range(query.shape[2])):  # a step of decode tokens only writes `out` whole
                step.rows = torch.tensor(starts, device=query.device)
            lengths = torch.tensor(step.lengths, device=query.device)
            step.valid = (torch.arange(max(step.lengths), device=query.device) < lengths[:, None])[:, None, None, :]
    if step.decode:
        if step.rows is None:
            out[0] = _decode_attention(module, query[0].transpose(0, 1), step, layer, kwargs)
        else:
            out[0, step.rows] = _decode_attention(module, query[0, :, step.rows].transpose(0, 1), step, layer,
                                                  kwargs)
    return out, None


def _decode_attention(module: Any, query: torch.Tensor, step: _Step, layer: int,
                      kwargs: dict[str, Any]) -> torch.Tensor:
    """query (B, heads, d) -> (B, heads, d_v): one decode token per sequence against its padded, masked cache.

    Grouped-query attention without repeating the keys: the `groups` query heads sharing a key/value head are
    that head's `groups` query rows (head h reads kv head h // groups, as transformers' repeat_kv lays them out)."""
    from torch.nn.utils.rnn import pad_sequence

    assert step.decode is not None and step.valid is not None
    keys = pad_sequence([s.cache.key[layer][:n] for s, n in zip(step.decode, step.lengths, strict=True)],
                        batch_first=True)
    values = pad_sequence([s.cache.value[layer][:n] for s, n in zip(step.decode, step.lengths, strict=True)],
                          batch_first=True)  # (B, L_max, kv_heads, d)
    batch, heads, dim = query.shape
    kv_heads = keys.shape[2]
    q = query.reshape(batch, kv_heads, heads // kv_heads, dim)  # (B, kv_heads, groups, d)
    out = torch.nn.functional.scaled_dot_product_attention(
        q, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=step.valid, scale=kwargs.get("scaling"))
    return out.reshape(batch, heads, -1)  # (B, heads, d_v)


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
    before = hf_model.config._attn_implementation
    token = _STEP.set(_Step(tuple(segments)))
    hf_model.set_attn_implementation(NAME)  # transformers' own switch (checks NAME is registered)
    try:
        out = hf_model(input_ids=torch.tensor([flat], device=device), position_ids=torch.tensor([positions],
                       device=device), use_cache=False, logits_to_keep=last)
    finally:
        hf_model.set_attn_implementation(before)
        _STEP.reset(token)
    for seq, cache in zip(tokens, caches, strict=True):
        cache.length += len(seq)
    return out.logits[0].float()  # (N, V)
