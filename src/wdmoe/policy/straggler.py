"""Straggler-drop: OUR reconstruction [R] of CAEE's rule from a secondary description [S] (papers.md §10).

CAEE (arXiv 2606.29982) is described [S] as: within the top-k, drop the experts with the lowest router weight per
unit of system cost on the device that sets the layer's completion time (the straggler), and renormalise onto the
experts that run. The reported numbers (latency -8 to -18%, TPOT -13.9 to -17.1% at threshold 0.8) are the paper's
on its own cluster, never ours. What "threshold" means there is [U]; ours is a relevance guard.

Contract (our reading): with the allocator's band for the current selection and t_d each device's round trip,

    repeat up to max_rounds (0: up to D rounds):
        d* = the first device with the largest t_d (the straggler)
        visit the kept pairs on d* by increasing w_jk / (t_d* / pairs_d*) (the router weight per unit of the
        straggler's time per pair; on one device this is the weight order; ties: token, then slot)
        drop a pair when its token keeps another expert and its kept gate mass stays >= threshold * its top-k total
        stop when nothing on d* could be dropped

so threshold 1 is the router's top-k (TopK), the layer time never rises above TopK's under the same allocator,
and with max_rounds = 1 (one straggler, fixed by the top-k) a lower threshold drops a superset. Kept weights are
renormalised to the token's original total; the band is re-split for the kept selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import device_costs, device_times_s, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps


@dataclass(frozen=True)
class StragglerDrop:
    """Straggler-drop (OUR reconstruction [R] of CAEE from a secondary description [S], papers.md §10).

    Attributes:
        threshold: in [0, 1], the share of its top-k gate mass every token keeps (1: TopK).
        max_rounds: stragglers visited in turn; 0 means up to the number of devices.
        bandwidth: the allocator that splits the band (EqualBandwidth by default).
    """

    threshold: float = 0.8
    max_rounds: int = 0
    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "straggler"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"StragglerDrop.threshold = {self.threshold} must lie in [0, 1] (a gate-mass share)")
        if self.max_rounds < 0:
            raise ValueError(f"StragglerDrop.max_rounds = {self.max_rounds} must be >= 0 (0: up to D rounds)")

    def decide(self, state: LayerState) -> Decision:
        weight = state.topk_weight.astype(float)
        keep = np.ones(weight.shape, dtype=bool)
        floor = self.threshold * weight.sum(axis=1)  # (T,) gate mass each token keeps
        pair_device = state.expert_device[state.topk_index]  # (T, k)
        rounds = self.max_rounds or state.num_devices
        for _ in range(rounds if self.threshold < 1.0 else 0):
            times = device_times_s(state, device_costs(state, keep), self.bandwidth.allocate(state, keep))
            if not _drop_on(int(np.argmax(times)), keep, weight, floor, pair_device):
                break
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None


def _drop_on(straggler: int, keep: np.ndarray, weight: np.ndarray, floor: np.ndarray,
             pair_device: np.ndarray) -> bool:
    """Drop, in place, the straggler's pairs in increasing weight order while each token's guard allows; whether
    any was dropped. (Every pair on one device has the same time per pair, so weight order is the order of
    weight per unit of system cost.)"""
    rows, cols = np.nonzero(keep & (pair_device == straggler))
    dropped = False
    for i in np.lexsort((cols, rows, weight[rows, cols])):
        r, c = int(rows[i]), int(cols[i])
        rest = keep[r].copy()
        rest[c] = False
        if rest.any() and weight[r][rest].sum() >= floor[r]:
            keep[r, c] = False
            dropped = True
    return dropped
