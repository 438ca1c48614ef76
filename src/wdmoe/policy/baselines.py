"""Baselines for the experiments: one expert on the fastest device, and random dropping.

Contract: both return a valid `Decision` (every token keeps an expert, kept weights renormalised to the token's
original total, bandwidth from the allocator for the final selection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wdmoe.policy.bandwidth import BandwidthAllocator, EqualBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import first_argmax_mask, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.policy.wlr import pair_latency_s


@dataclass(frozen=True)
class FastestDevices:
    """Keep, per token, the routed expert whose device has the lowest round trip under the unpruned top-k."""

    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "fastest"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def decide(self, state: LayerState) -> Decision:
        keep = first_argmax_mask(-pair_latency_s(state, self.bandwidth))
        weight = state.topk_weight.astype(float)
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None


@dataclass(frozen=True)
class RandomDrop:
    """Drop each routed pair with probability p; a token that would lose all keeps its highest-weight expert.

    The generator is seeded at construction and advances with each call, so a sequence of calls replays
    exactly for one seed (the only policy that is not a pure function of the state, by design).
    """

    p: float
    seed: int = 0
    bandwidth: BandwidthAllocator = field(default_factory=EqualBandwidth)
    name = "random"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = False  # its generator advances with each call, so the call order matters
    _rng: np.random.Generator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"RandomDrop.p = {self.p} must lie in [0, 1]")
        object.__setattr__(self, "_rng", np.random.default_rng(self.seed))

    def decide(self, state: LayerState) -> Decision:
        weight = state.topk_weight.astype(float)
        keep = self._rng.random(weight.shape) >= self.p
        keep |= first_argmax_mask(weight) & ~keep.any(axis=1, keepdims=True)
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None
