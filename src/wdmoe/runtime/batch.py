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
everything else. A sequence's cache is a slot of the model's `KVArena` (one zero-filled buffer per layer for all
sequences), so admitting and retiring a sequence is adding and dropping an object (its slot is freed with it), and
the decode attention reads every cache padded to the longest (masked) with one gather, so that one call serves
every sequence.

Exactness: sampling and every per-token operation see the same numbers as a run alone; the dense matrix products
(projections, experts, LM head) see more rows and the decode attention more (masked) keys, and a BLAS may round a
row differently with another row count (fp32, ~1e-6 relative). Tokens are then identical and log-probabilities
agree to ~1e-6 (tests/unit/runtime/test_batch.py checks 1e-4).
"""

from __future__ import annotations

import contextvars
import weakref
from dataclasses import dataclass
from typing import Any

import torch

NAME = "wdmoe_segments"  # the attention implementation's name while a batched step runs


class KVArena:
    """The KV caches of many sequences in one buffer per attention layer: keys (slots, capacity, kv_heads, d), values
    (slots, capacity, kv_heads, d_v); a sequence owns one slot, its position p is row [slot, p].

    Why one buffer: a decode step then writes every sequence's new key with one indexed write and reads every cache
    padded to the longest with one gather, where per-sequence buffers took two writes per sequence and a
    `pad_sequence` of all of them in every layer. The buffers are zero-filled and a slot is zeroed when it is taken
    again, so the padding a decode step reads past a cache's length is zeros, as `pad_sequence`'s was: the
    attention sees the same tensors. Slots and capacity grow by doubling (every slot as long as the longest
    sequence: the price of padding once instead of every layer); a slot is free again when its sequence retires
    (`SequenceCache.release`) or its cache is garbage collected. One arena serves one model, from its engine
    thread."""

    def __init__(self) -> None:
        self.key: dict[int, torch.Tensor] = {}  # layer -> (slots, capacity, kv_heads, d)
        self.value: dict[int, torch.Tensor] = {}  # layer -> (slots, capacity, kv_heads, d_v)
        self.slots = 0  # slots every layer's buffers hold (grown lazily, in `reserve`)
        self.free: list[int] = []  # slots no live cache owns

    def take(self) -> int:
        """A free slot, zeroed; more slots when none is free."""
        if not self.free:  # the list itself stays: caches hold its `append` to give their slot back
            grown = max(8, 2 * self.slots)
            self.free.extend(range(grown - 1, self.slots - 1, -1))  # never written: zeros when the buffers grow
            self.slots = grown
            return self.free.pop()
        slot = self.free.pop()
        for buffers in (self.key, self.value):
            for buffer in buffers.values():
                if slot < buffer.shape[0]:
                    buffer[slot].zero_()
        return slot

    def reserve(self, layer: int, key: torch.Tensor, value: torch.Tensor, length: int) -> None:
        """Buffers of `layer` for every slot and at least `length` positions, shaped like the (t, kv_heads, d) rows
        `key` and `value`."""
        have = self.key.get(layer)
        if have is not None and have.shape[0] >= self.slots and have.shape[1] >= length:
            return
        if have is None:
            capacity = max(length, 16)
        else:
            capacity = have.shape[1] if have.shape[1] >= length else max(length, 2 * have.shape[1])
        for buffers, like in ((self.key, key), (self.value, value)):
            old = buffers.get(layer)
            new = like.new_zeros((self.slots, capacity, *like.shape[1:]))
            if old is not None:
                new[: old.shape[0], : old.shape[1]] = old
            buffers[layer] = new


@dataclass(eq=False)
class SequenceCache:
    """One sequence's KV cache: a slot of a `KVArena` (taken at its first step) whose first `length` positions hold
    positions 0..length-1 of every attention layer."""

    length: int = 0  # tokens already in the cache (positions 0..length-1), all layers
    arena: KVArena | None = None
    slot: int = -1
    freed: weakref.finalize | None = None  # gives the slot back, once: at `release` or when garbage collected

    def bind(self, arena: KVArena) -> None:
        """Take a slot of `arena` (once); it is free again at `release` or when this cache is garbage collected."""
        if self.arena is arena:
            return
        if self.arena is not None:
            raise ValueError("this sequence's cache belongs to another model's KV arena; a cache serves one model")
        self.arena, self.slot = arena, arena.take()
        self.freed = weakref.finalize(self, arena.free.append, self.slot)

    def release(self) -> None:
        """Give the slot back (its sequence retired; a result may keep the sequence alive): the cache is empty."""
        if self.freed is not None:
            self.freed()
        self.arena, self.slot, self.freed, self.length = None, -1, None, 0


@dataclass(frozen=True)
class Segment:
    """Rows start..stop of the step's tokens belong to `cache`'s sequence."""

    start: int
    stop: int
    cache: SequenceCache


@dataclass(frozen=True)
class _Step:
    """The running step's segments, and what its attention computes once for every layer: every layer writes the
    same positions of the same slots, so the decode segments' rows, slots, positions and key mask are the same in
    all layers."""

    arena: KVArena
    length: int  # the longest cache after the step: the arena's buffers hold at least this many positions
    prompts: tuple[Segment, ...]  # segments attending to themselves (and their cache), causally
    decode: tuple[Segment, ...]  # segments of one token attending to a cache
    rows: torch.Tensor | None  # (B,) the decode segments' rows among the step's tokens; None: all rows, in order
    slots: torch.Tensor | None  # (B,) their slots
    positions: torch.Tensor | None  # (B,) the position of their new token
    valid: torch.Tensor | None  # (B, 1, 1, L_max) key mask of their padded caches

    @staticmethod
    def plan(arena: KVArena, segments: list[Segment], num_tokens: int, device: torch.device) -> _Step:
        """The step of `segments` (their caches bound to `arena`, lengths before the step)."""
        decode = tuple(s for s in segments if s.stop - s.start == 1 and s.cache.length > 0)
        prompts = tuple(s for s in segments if not (s.stop - s.start == 1 and s.cache.length > 0))
        length = max(s.cache.length + s.stop - s.start for s in segments)
        if not decode:
            return _Step(arena, length, prompts, decode, None, None, None, None)
        starts = [s.start for s in decode]
        rows = None if starts == list(range(num_tokens)) else torch.tensor(starts, device=device)
        lengths = torch.tensor([s.cache.length + 1 for s in decode], device=device)
        slots = torch.tensor([s.cache.slot for s in decode], device=device)
        longest = max(s.cache.length for s in decode) + 1
        valid = (torch.arange(longest, device=device) < lengths[:, None])[:, None, None, :]
        return _Step(arena, length, prompts, decode, rows, slots, lengths - 1, valid)


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
    step.arena.reserve(layer, k_rows, v_rows, step.length)
    keys, values = step.arena.key[layer], step.arena.value[layer]  # (slots, capacity, kv_heads, d)
    out = query.new_empty((1, query.shape[2], query.shape[1], value.shape[-1]))  # (1, T, heads, d_v)
    for seg in step.prompts:
        slot, begin, length = seg.cache.slot, seg.cache.length, seg.cache.length + seg.stop - seg.start
        keys[slot, begin:length] = k_rows[seg.start : seg.stop]
        values[slot, begin:length] = v_rows[seg.start : seg.stop]
        k = keys[slot, :length].transpose(0, 1).unsqueeze(0)  # (1, kv_heads, L, d)
        v = values[slot, :length].transpose(0, 1).unsqueeze(0)
        q = query[:, :, seg.start : seg.stop]
        out[:, seg.start : seg.stop] = sdpa_attention_forward(module, q, k, v, None, **kwargs)[0]
    if step.decode:
        assert step.slots is not None and step.positions is not None
        if step.rows is None:
            keys[step.slots, step.positions], values[step.slots, step.positions] = k_rows, v_rows
            out[0] = _decode_attention(module, query[0].transpose(0, 1), step, layer, kwargs)
        else:
            keys[step.slots, step.positions] = k_rows[step.rows]
            values[step.slots, step.positions] = v_rows[step.rows]
            out[0, step.rows] = _decode_attention(module, query[0, :, step.rows].transpose(0, 1), step, layer,
                                                  kwargs)
    return out, None


def _decode_attention(module: Any, query: torch.Tensor, step: _Step, layer: int,
                      kwargs: dict[str, Any]) -> torch.Tensor:
    """query (B, heads, d) -> (B, heads, d_v): one decode token per sequence against its padded, masked cache.

    Grouped-query attention without repeating the keys: the `groups` query heads sharing a key/value head are
    that head's `groups` query rows (head h reads kv head h // groups, as transformers' repeat_kv lays them out)."""
    assert step.slots is not None and step.valid is not None
    longest = step.valid.shape[-1]
    keys = step.arena.key[layer][:, :longest].index_select(0, step.slots)  # (B, L_max, kv_heads, d), zero-padded
    values = step.arena.value[layer][:, :longest].index_select(0, step.slots)
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
def forward_segments(hf_model: Any, tokens: list[list[int]], caches: list[SequenceCache],
                     arena: KVArena) -> torch.Tensor:
    """One forward step of `hf_model` over the new `tokens` of each sequence (module docstring); each cache (a slot
    of `arena`, the model's) grows by its sequence's tokens. Returns (N, V) fp32 logits of each sequence's last new
    token."""
    if not tokens or any(not t for t in tokens):
        raise ValueError(f"every sequence of a step brings at least one token; got lengths {[len(t) for t in tokens]}")
    _register()
    device = hf_model.device
    flat = [t for seq in tokens for t in seq]
    positions = [cache.length + i for seq, cache in zip(tokens, caches, strict=True) for i in range(len(seq))]
    segments, start = [], 0
    for seq, cache in zip(tokens, caches, strict=True):
        cache.bind(arena)
        segments.append(Segment(start, start + len(seq), cache))
        start += len(seq)
    last = torch.tensor([s.stop - 1 for s in segments], device=device)
    before = hf_model.config._attn_implementation
    token = _STEP.set(_Step.plan(arena, segments, len(flat), device))
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
