"""The reference policy: run the router's top-k unchanged (the unsplit model's output) and split the band.

Contract: keep is all True, the weights are the router's, the bandwidth comes from the allocator (equal shares
over the active devices by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState


@dataclass(frozen=True)
class TopK:
    """Keep every routed expert; `bandwidth` splits the band (EqualBandwidth by default)."""

    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "topk"  # a class attribute, not a field: the Policy protocol reads it as a plain str

    def decide(self, state: LayerState) -> Decision:
        keep = np.ones(state.topk_index.shape, dtype=bool)
        return Decision(keep, state.topk_weight.astype(float), self.bandwidth.allocate(state, keep))
