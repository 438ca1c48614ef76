"""Token pruning (CoEL, papers.md §4.4 [R]): skip the remote expert calls of low gate weight.

Contract: with s_jk = w_jk / sum_k w_jk, the share of a token's routed weight that expert k carries,

    keep_jk = (s_jk >= threshold) or k is the token's highest-weight expert

kept weights are renormalised to the token's original total, and the band is split for the pruned selection.
threshold = 0 keeps everything, with the router's weights unchanged (the same output as `TopK`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import first_argmax_mask, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps


@dataclass(frozen=True)
class GateThreshold:
    """Drop routed experts whose share of the token's gate weight is below `threshold` (in [0, 1])."""

    threshold: float
    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "prune"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"GateThreshold.threshold = {self.threshold} must lie in [0, 1]")

    def decide(self, state: LayerState) -> Decision:
        weight = state.topk_weight.astype(float)
        total = weight.sum(axis=1, keepdims=True)  # (T, 1)
        share = np.divide(weight, total, out=np.zeros_like(weight), where=total > 0.0)
        keep = (share >= self.threshold) | first_argmax_mask(weight)
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None
