"""The distributed MoE layer: router output -> policy -> dispatch to devices -> combine (the heart of wdmoe).

`RemoteExperts` takes the place of a Hugging Face block's `.experts` module and keeps its signature
`(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)`, so the router, the shared experts
and the residual stay the model's own code. With the model's own top-k (no policy) the output equals the unsplit
model's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from wdmoe.backends.base import DeviceBatch, DevicePool
from wdmoe.placement import Placement
from wdmoe.runtime.telemetry import LayerRecord, Telemetry

# decide(layer, topk_index (T,k), topk_weight (T,k), logits (T,E) | None) -> (keep (T,k) bool, weight (T,k), modeled)
Decider = Callable[[int, np.ndarray, np.ndarray, "np.ndarray | None"], tuple[np.ndarray, np.ndarray, Any]]


class Dispatcher:
    """Groups each layer's (token, expert) assignments by device, runs them on the pool, and combines."""

    def __init__(self, pool: DevicePool, placement: Placement, telemetry: Telemetry) -> None:
        self.pool = pool
        self.placement = placement
        self.telemetry = telemetry
        self.decider: Decider | None = None
        self.record_logits = True
        self.mark_s = time.perf_counter()
        self.dead: frozenset[int] = frozenset()
        self.primary = {layer: placement.primary_table(layer) for layer in placement.moe_layers}

    def run(
        self,
        layer: int,
        hidden: torch.Tensor,  # (T, H)
        topk_index: torch.Tensor,  # (T, k)
        topk_weight: torch.Tensor,  # (T, k)
        logits: torch.Tensor | None,  # (T, E)
    ) -> torch.Tensor:  # (T, H)
        start = time.perf_counter()
        bs_time_s = start - self.mark_s
        num_tokens, k = topk_index.shape
        index = topk_index.detach().cpu().numpy()
        weight_np = topk_weight.detach().float().cpu().numpy()
        logits_np = None if logits is None else logits.detach().float().cpu().numpy()
        modeled = None
        if self.decider is None:
            keep, weight, weight_t = np.ones_like(index, dtype=bool), weight_np, topk_weight
        else:
            keep, weight, modeled = self.decider(layer, index, weight_np, logits_np)
            weight_t = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(hidden.device)
        device_of = np.where(keep, self.primary[layer][index], -1).ravel()  # (T*k,)
        order = np.argsort(device_of, kind="stable")
        num_devices = self.placement.num_devices
        counts = np.bincount(device_of[device_of >= 0], minlength=num_devices)
        batches, positions = [], []
        tokens_down = np.zeros(num_devices, dtype=np.int64)
        cursor = int((device_of < 0).sum())  # dropped assignments sort first
        flat_expert = index.ravel()
        for device in np.flatnonzero(counts).tolist():
            pos = order[cursor : cursor + counts[device]]
            cursor += int(counts[device])
            tokens = pos // k
            if tokens.shape[0] == 1:
                distinct, rows = tokens, np.zeros(1, dtype=np.int64)
            else:
                distinct, rows = np.unique(tokens, return_inverse=True)
            tokens_down[device] = distinct.shape[0]
            batches.append(
                DeviceBatch(
                    device,
                    layer,
                    hidden[torch.from_numpy(distinct)],
                    torch.from_numpy(rows),
                    torch.from_numpy(flat_expert[pos]),
                )
            )
            positions.append(pos)
        dispatch_start = time.perf_counter()
        results = self.pool.dispatch(batches)
        dispatch_s = time.perf_counter() - dispatch_start
        out = hidden.new_zeros((num_tokens * k, hidden.shape[-1]))
        device_time_s = np.zeros(num_devices)
        for pos, result in zip(positions, results, strict=True):
            out[torch.from_numpy(pos)] = result.output
            device_time_s[result.device] = result.compute_s
        combined = (out.view(num_tokens, k, -1) * weight_t.unsqueeze(-1)).sum(dim=1).to(hidden.dtype)
        bits = hidden.element_size() * 8 * hidden.shape[-1]
        self.telemetry.add(
            LayerRecord(
                layer=layer,
                topk_index=index,
                topk_weight=weight_np,
                keep=keep,
                weight=np.asarray(weight),
                logits=logits_np,
                tokens_down=tokens_down,
                assignments=counts,
                bits_down=tokens_down * bits,
                bits_up=counts * bits,
                bs_time_s=bs_time_s,
                device_time_s=device_time_s,
                dispatch_time_s=dispatch_s,
                modeled=modeled,
            )
        )
        self.mark_s = time.perf_counter()
        return combined


class RemoteExperts(nn.Module):
    """Stands in for a block's `.experts`: same call signature, no weights; the experts live on the devices."""

    def __init__(self, layer: int, num_experts: int, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        self.dispatcher = dispatcher
        self.logits: torch.Tensor | None = None  # set by a hook on the block's router when logits are recorded

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        logits, self.logits = self.logits, None
        return self.dispatcher.run(self.layer, hidden_states, top_k_index, top_k_weights, logits)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, num_experts={self.num_experts}, on devices"
