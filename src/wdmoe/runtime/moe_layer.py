"""The distributed MoE layer in the model: `RemoteExperts` takes the place of a Hugging Face block's `.experts`.

It keeps the block's signature `(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)`, so
the router, the shared experts and the residual stay the model's own code, and hands the step to the `Runtime`
(wdmoe.runtime.layer_step). With the model's own top-k (no policy) the output equals the unsplit model's.

Before the layer's experts run, a batched decode step may pause (`Runtime.pause_point`): the serving scheduler
runs the prefill of requests that arrived meanwhile there, a step inside the step (wdmoe.runtime.scheduler).
"""

from __future__ import annotations

import torch
from torch import nn

from wdmoe.runtime.layer_step import Runtime


class RemoteExperts(nn.Module):
    """Stands in for a block's `.experts`: same call signature, no weights; the experts live on the devices."""

    def __init__(self, layer: int, num_experts: int, runtime: Runtime) -> None:
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        self.runtime = runtime
        self.logits: torch.Tensor | None = None  # set by a hook on the block's router when logits are recorded

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        logits, self.logits = self.logits, None
        pause = self.runtime.pause_point  # set while a batched decode step may pause here (DistributedMoE)
        if pause is not None:  # after taking this layer's router logits: a step run in the pause sets its own
            pause()
        on_gpu = self.runtime.device_step  # set while a decode step runs with the routing on the GPU
        if on_gpu is not None:
            return on_gpu(self.layer, hidden_states, top_k_index, top_k_weights, logits)
        return self.runtime.run(self.layer, hidden_states, top_k_index, top_k_weights, logits)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, num_experts={self.num_experts}, on devices"
