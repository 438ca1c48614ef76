"""The MoE layer step of the in-process pool with the routing on the GPU: no host synchronization.

`Runtime.run` brings the router's choices to the host (one synchronization per MoE layer), because the policy,
the grouping and the telemetry are numpy. With the model's own top-k, an in-process pool and every device live,
none of that decides anything: each (token, expert) assignment goes to the device that holds the expert
(the routing table's primary), and the combine is the model's weighted sum. `DeviceMoE` does exactly that on the
GPU: the kernels of `wdmoe.model.routed_gemv_triton` read the expert ids from the router's tensor and the weights
from a table of the addresses of the tensors each device holds, then the same weighted sum over k as
`wdmoe.runtime.grouping.combine`. One decode step is then a fixed stream of kernels, which
`wdmoe.runtime.graphed_decode` captures in a CUDA graph.

Where the kernels do not apply (the CPU, other dtypes) `DeviceMoE.run` computes each assignment with
`wdmoe.model.expert.expert_ffn` on the host-known index (it synchronizes; tests use it as the reference).
The router outputs of the last call of each layer stay in `last` (device tensors), for the telemetry the caller
builds after the step (`wdmoe.runtime.graphed_decode`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from wdmoe.backends.local import LocalDevicePool
from wdmoe.model import routed_gemv_triton
from wdmoe.model.expert import expert_ffn, is_silu
from wdmoe.runtime.layer_step import Runtime


class DeviceMoE:
    """The routed experts of every MoE layer of `runtime`, computed from the devices' own weight tensors."""

    def __init__(self, runtime: Runtime, weights: dict[int, list[tuple[torch.Tensor, torch.Tensor]]],
                 act: Callable[[torch.Tensor], torch.Tensor], device: torch.device, dtype: torch.dtype) -> None:
        self.runtime = runtime
        self.weights = weights  # {layer: [(gate_up (2I, H), down (H, I)) of expert e, in expert order]}
        self.act = act
        everything = [pair for pairs in weights.values() for pair in pairs]
        self.on_gpu = is_silu(act) and routed_gemv_triton.applies(everything, dtype, device)
        self.tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if self.on_gpu:
            for layer, pairs in weights.items():
                self.tables[layer] = (routed_gemv_triton.address_table([gu for gu, _ in pairs], device),
                                      routed_gemv_triton.address_table([dn for _, dn in pairs], device))
        self.last: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}

    @classmethod
    def for_runtime(cls, runtime: Runtime, device: torch.device, dtype: torch.dtype) -> DeviceMoE | None:
        """The device-side step of `runtime`, or None where the host must decide: a policy or air compression is
        set, a device is dead, the pool is not in-process, or an expert is stored quantized."""
        pool = runtime.pool
        if runtime.decider is not None or runtime.air is not None or runtime.dead:
            return None
        if not isinstance(pool, LocalDevicePool) or not pool.workers:
            return None
        weights: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for layer, primary in runtime.routing.primary.items():
            pairs = []
            for expert, dev in enumerate(np.asarray(primary).tolist()):
                pair = pool.workers[dev].weights.get((layer, expert))
                if pair is None:
                    return None
                pairs.append(pair)
            weights[layer] = pairs
        return cls(runtime, weights, pool.workers[0].act, device, dtype)

    @torch.compiler.disable  # a compiled decode step (graphed_decode) calls these kernels as they are
    def run(self, layer: int, hidden: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
            logits: torch.Tensor | None) -> torch.Tensor:  # (T, H), (T, k), (T, k), (T, E) | None -> (T, H)
        self.last[layer] = (index, weight, logits)
        num_tokens, k = index.shape
        if self.on_gpu:
            gate_up_table, down_table = self.tables[layer]
            inter = self.weights[layer][0][1].shape[1]
            act = routed_gemv_triton.routed_gate_up_silu(hidden, index, gate_up_table, inter)  # (T*k, I)
            out = routed_gemv_triton.routed_down(act, index, down_table, hidden.shape[-1])  # (T*k, H)
        else:
            pairs = self.weights[layer]
            rows = [expert_ffn(hidden[t : t + 1], *pairs[int(e)], self.act)
                    for t, experts in enumerate(index.tolist()) for e in experts]
            out = torch.cat(rows)  # (T*k, H)
        # grouping.combine's arithmetic: the weighted sum over k, then the hidden states' dtype
        return (out.view(num_tokens, k, -1) * weight.unsqueeze(-1)).sum(dim=1).to(hidden.dtype)
