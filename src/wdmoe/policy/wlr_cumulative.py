"""Cumulative-gate WLR: OUR reconstruction [R] of a secondary description [S] of WDMoE's selection (papers.md §10).

A summary of SiftMoE, which uses WDMoE as a baseline, describes WDMoE's selection as "adaptive activation based on
cumulative gating score and latency" [S]. This is our top-p-like reading of that sentence, not the paper's rule
(which is [U]); the per-expert θ rule of `policy.wlr` stays the default WLR.

Contract: with WLR_jk = w_jk / t_dev(jk) as in `policy.wlr` (t: the pair's device round trip under the unpruned
top-k and the allocator's band), each token orders its experts by decreasing WLR (ties in the router's order) and

    keep the first expert;  keep the next while the gate mass already kept < threshold * the token's top-k total

so threshold 1 is the router's top-k (TopK, every weight unchanged), threshold 0 keeps the single best-WLR expert,
and a higher threshold keeps a superset (the order does not depend on the threshold). Kept weights are
renormalised to the token's original total; the band is re-split for the kept selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps, batch_decision, equal_shares
from wdmoe.policy.wlr import pair_latency_s, pair_latency_steps_s


def cumulative_keep(weight: np.ndarray, ratio: np.ndarray, threshold: float) -> np.ndarray:
    """(T, k) bool: per row, the experts in decreasing `ratio` order (stable) until the kept `weight` reaches
    `threshold` of the row's total (module docstring); threshold >= 1 keeps every expert."""
    if threshold >= 1.0:
        return np.ones(weight.shape, dtype=bool)
    order = np.argsort(-ratio, axis=1, kind="stable")  # (T, k) best WLR first, ties in router order
    sorted_w = np.take_along_axis(weight, order, axis=1)
    before = np.zeros(weight.shape)  # mass kept before each expert in that order
    before[:, 1:] = np.cumsum(sorted_w[:, :-1], axis=1)
    keep_sorted = before < threshold * weight.sum(axis=1, keepdims=True)
    keep_sorted[:, 0] = True
    keep = np.zeros(weight.shape, dtype=bool)
    np.put_along_axis(keep, order, keep_sorted, axis=1)
    return keep


@dataclass(frozen=True)
class CumulativeWLR:
    """Cumulative-gate WLR (OUR reconstruction [R] from a secondary description [S], papers.md §10): keep the
    highest-WLR experts until their gate mass reaches `threshold` (in [0, 1]) of the token's top-k total."""

    threshold: float
    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "wlr-cum"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"CumulativeWLR.threshold = {self.threshold} must lie in [0, 1] (a gate-mass share)")

    def decide(self, state: LayerState) -> Decision:
        weight = state.topk_weight.astype(float)
        keep = cumulative_keep(weight, weight / pair_latency_s(state, self.bandwidth), self.threshold)
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """Equals `CumulativeWLR.decide` on each step's LayerState, with `EqualBandwidth` (None with another
        allocator, and for a subclass): the same operations row by row."""
        if type(self) is not CumulativeWLR or type(self.bandwidth) is not EqualBandwidth:
            return None
        weight = steps.weight
        keep = cumulative_keep(weight, weight / pair_latency_steps_s(steps), self.threshold)
        return batch_decision(steps, keep, renormalize(weight, keep), equal_shares(steps, keep))
