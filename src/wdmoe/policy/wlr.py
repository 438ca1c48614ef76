"""WLR (reconstructed): drop routed experts whose weight-to-latency ratio is low (papers.md §2.3 [R]).

Contract (the reconstruction of papers.md §2.3, not the paper's own formula, which is [U]): with t_k the round
trip of device k under the unpruned top-k and the allocator's bandwidth,

    WLR_jk = w_jk / t_dev(jk);   normalised per token by its max ("max") or its sum ("sum");
    keep_j = {the best-WLR expert} ∪ {k : normalised WLR_jk >= θ}   for θ < 1;   keep_j = {the best} for θ >= 1

so θ = 0 is the router's top-k and θ = 1 keeps exactly one expert (ties go to the router's order). Kept weights
are renormalised to the token's original total, and the band is re-split for the pruned selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import device_costs, device_times_s, first_argmax_mask, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps, all_kept, batch_decision, equal_shares, slot_groups
from wdmoe.radio.rate import dl_share_time_s, share_time_s

_TINY_S = 1e-30  # a device that needs no time at all still gets a finite ratio


def pair_latency_s(state: LayerState, bandwidth: BandwidthAllocator) -> np.ndarray:
    """(T, k) round trip of each routed pair's device under the unpruned top-k (the latency WLR divides by)."""
    keep = np.ones(state.topk_index.shape, dtype=bool)
    costs = device_costs(state, keep)
    times = device_times_s(state, costs, bandwidth.allocate(state, keep))
    return np.maximum(times[state.expert_device[state.topk_index]], _TINY_S)


def pair_latency_steps_s(steps: OneTokenSteps) -> np.ndarray:
    """(n, k) `pair_latency_s` with EqualBandwidth on n one-token steps: each slot's device round trip under the
    top-k."""
    groups = slot_groups(steps, all_kept(steps))
    bits = steps.bits_per_token[:, None]
    share = (steps.bandwidth_hz / groups.first.sum(axis=1))[:, None]  # policy.bandwidth.equal_split
    times = (dl_share_time_s(bits, share, steps.snr_dl_per_hz, steps.dl_psd_pool_hz) + groups.compute_s
             + share_time_s(groups.pairs * bits, share, steps.snr_ul_per_hz))
    return np.maximum(times, _TINY_S)


@dataclass(frozen=True)
class WLRThreshold:
    """WLR (reconstructed), papers.md §2.3: keep experts whose normalised WLR reaches theta."""

    theta: float
    normalize: Literal["max", "sum"] = "max"
    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "wlr"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.theta <= 1.0:
            raise ValueError(f"WLRThreshold.theta = {self.theta} must lie in [0, 1]")
        if self.normalize not in ("max", "sum"):
            raise ValueError(f"WLRThreshold.normalize = {self.normalize!r}; use 'max' or 'sum'")

    def decide(self, state: LayerState) -> Decision:
        weight = state.topk_weight.astype(float)
        ratio = weight / pair_latency_s(state, self.bandwidth)  # (T, k)
        norm = ratio.max(axis=1, keepdims=True) if self.normalize == "max" else ratio.sum(axis=1, keepdims=True)
        normalised = np.divide(ratio, norm, out=np.zeros_like(ratio), where=norm > 0.0)
        keep = first_argmax_mask(ratio)
        if self.theta < 1.0:
            keep |= normalised >= self.theta
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """Equals `WLRThreshold.decide` on each step's LayerState, with `EqualBandwidth` (None with another
        allocator, and for a subclass, which may decide otherwise): the same operations row by row."""
        if type(self) is not WLRThreshold or type(self.bandwidth) is not EqualBandwidth:
            return None
        weight = steps.weight
        ratio = weight / pair_latency_steps_s(steps)  # (n, k)
        norm = ratio.max(axis=1, keepdims=True) if self.normalize == "max" else ratio.sum(axis=1, keepdims=True)
        normalised = np.divide(ratio, norm, out=np.zeros_like(ratio), where=norm > 0.0)
        keep = first_argmax_mask(ratio)
        if self.theta < 1.0:
            keep |= normalised >= self.theta
        return batch_decision(steps, keep, renormalize(weight, keep), equal_shares(steps, keep))
