"""The reference policy: run the router's top-k unchanged (the unsplit model's output) and split the band.

Contract: keep is all True, the weights are the router's, the bandwidth comes from the allocator (equal shares
over the active devices by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.steps import BatchDecision, OneTokenSteps, all_kept, batch_decision, equal_shares


@dataclass(frozen=True)
class TopK:
    """Keep every routed expert; `bandwidth` splits the band (EqualBandwidth by default)."""

    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "topk"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def decide(self, state: LayerState) -> Decision:
        keep = np.ones(state.topk_index.shape, dtype=bool)
        return Decision(keep, state.topk_weight.astype(float), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """Equals `TopK.decide` on each step's LayerState, with `EqualBandwidth` (None with another allocator, and
        for a subclass, which may decide otherwise): keep every slot, the band split equally over the devices with
        a slot."""
        if type(self) is not TopK or type(self.bandwidth) is not EqualBandwidth:
            return None
        keep = all_kept(steps)
        return batch_decision(steps, keep, steps.weight.copy(), equal_shares(steps, keep))
