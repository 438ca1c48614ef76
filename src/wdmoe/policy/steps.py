"""Batched decode decisions: n independent one-token layer steps decided at once, vectorized over the batch.

Contract: a decode step routes one token, so a policy's per-call overhead, not its arithmetic, dominates a
replay. `decide_batch(policy, steps)` decides n one-token steps (`OneTokenSteps`, each with its own links,
weights, budget and BS time) in a few numpy calls and returns what `policy.decide` returns on each step's
`LayerState`: keep and weight equal, bandwidth equal to within the solvers' tolerance (tests/unit/sim checks
1e-9 relative on random instances; on one machine the operations are the same, so the numbers are too). It
returns None for a policy it has no batched form of; `BatchDecision.fallback` marks the steps the caller must
decide per state (the joint policy's tokens whose slots span 3 or more devices). Pure numpy.

Supported: `TopK` and `WLRThreshold` with `EqualBandwidth`; `JointSelectionBandwidth` (`joint_rounds`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.policy.bandwidth import EqualBandwidth
from wdmoe.policy.base import LayerState
from wdmoe.policy.joint import JointSelectionBandwidth
from wdmoe.policy.selection import first_argmax_mask, profiles_of, renormalize
from wdmoe.policy.topk import TopK
from wdmoe.policy.wlr import _TINY_S, WLRThreshold
from wdmoe.radio.compute import roofline_time_s
from wdmoe.radio.rate import share_time_s


@dataclass(frozen=True)
class OneTokenSteps:
    """n one-token layer steps, k routed slots each, D devices. Only the slots' devices matter to a one-token
    step (an idle device adds exact zeros in radio.latency), so links are held per slot.

    Attributes:
        slot_device: (n, k) int, the device serving each routed slot (the primary of its expert).
        weight: (n, k) float64, the router's weights (`LayerState.topk_weight` as float).
        roof_s: (n, k) seconds of each slot's expert on its device for one token (radio.compute roofline).
        snr_dl_per_hz / snr_ul_per_hz: (n, k) Hz, the link of each slot's device.
        bits_per_token / bandwidth_hz / bs_time_s: (n,) payload bits, the band in Hz, the BS seconds.
        channel_key: (n,) int; steps with equal keys have equal links, payload, band and device profiles (one
            channel block of one replay), so a sub-problem that depends only on those is solved once per key.
        num_devices: D.
    """

    slot_device: np.ndarray
    weight: np.ndarray
    roof_s: np.ndarray
    snr_dl_per_hz: np.ndarray
    snr_ul_per_hz: np.ndarray
    bits_per_token: np.ndarray
    bandwidth_hz: np.ndarray
    bs_time_s: np.ndarray
    channel_key: np.ndarray
    num_devices: int

    @property
    def size(self) -> int:
        return int(self.slot_device.shape[0])

    @classmethod
    def from_states(cls, states: list[LayerState]) -> OneTokenSteps:
        """Stack one-token LayerStates of the same k and D (the reference path's inputs, for tests and tools)."""
        rows = []
        for state in states:
            if state.num_tokens != 1:
                raise ValueError(f"OneTokenSteps holds one-token steps; a state has {state.num_tokens} tokens")
            p = profiles_of(state)
            device = state.expert_device[state.topk_index[0]]
            roof = roofline_time_s(1.0, state.expert_flops_per_token, state.expert_weight_bytes, p.flops_per_s,
                                   p.mem_bytes_per_s, p.overhead_s)  # (D,)
            rows.append((device, state.topk_weight[0].astype(float), roof[device], state.link.snr_dl_per_hz[device],
                         state.link.snr_ul_per_hz[device], state.bits_per_token, state.bandwidth_hz, state.bs_time_s))
        c = [np.array(column, dtype=float if i else np.int64) for i, column in enumerate(zip(*rows, strict=True))]
        return cls(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], np.arange(len(states)),
                   states[0].num_devices if states else 0)

    def subset(self, items: np.ndarray) -> OneTokenSteps:
        """The steps `items` (int indices); `take` on axis 0 is numpy's fast row gather."""
        arrays = [getattr(self, f).take(items, axis=0) for f in self.__dataclass_fields__ if f != "num_devices"]
        return OneTokenSteps(*arrays, self.num_devices)  # type: ignore[arg-type, call-arg]


@dataclass(frozen=True)
class BatchDecision:
    """keep (n, k) bool, weight (n, k), slot_share_hz (n, k): the bandwidth of each kept slot's device (0 on a
    dropped slot whose device is otherwise idle); fallback (n,) marks steps not decided here."""

    keep: np.ndarray
    weight: np.ndarray
    slot_share_hz: np.ndarray
    fallback: np.ndarray
    slot_device: np.ndarray
    num_devices: int

    @property
    def bandwidth_hz(self) -> np.ndarray:
        """(n, D) the per-device bandwidth of `Decision.bandwidth_hz`."""
        n = self.keep.shape[0]
        flat = np.zeros(n * self.num_devices)
        index = (np.arange(n)[:, None] * self.num_devices + self.slot_device)[self.keep]
        flat[index] = self.slot_share_hz[self.keep]
        return flat.reshape(n, self.num_devices)


def equal_shares(steps: OneTokenSteps, keep: np.ndarray) -> np.ndarray:
    """(n, k) policy.bandwidth.equal_split per step, per slot: the band over the devices with a kept slot."""
    first = slot_groups(steps, keep).first
    share = steps.bandwidth_hz / np.maximum(first.sum(axis=1), 1)
    return np.where(keep, share[:, None], 0.0)


def _all_kept(steps: OneTokenSteps) -> np.ndarray:
    return np.ones(steps.slot_device.shape, dtype=bool)


def _decision(steps: OneTokenSteps, keep: np.ndarray, weight: np.ndarray, share: np.ndarray) -> BatchDecision:
    return BatchDecision(keep, weight, share, np.zeros(steps.size, dtype=bool), steps.slot_device, steps.num_devices)


def decide_topk(steps: OneTokenSteps) -> BatchDecision:
    """TopK with EqualBandwidth: keep every slot, split the band equally over the devices with a slot."""
    keep = _all_kept(steps)
    return _decision(steps, keep, steps.weight.copy(), equal_shares(steps, keep))


@dataclass(frozen=True)
class SlotGroups:
    """Per slot (n, k), its device's share of a keep mask: `first` marks the first kept slot on each device;
    `pairs` counts the kept slots on the slot's device and `compute_s` sums their rooflines in slot order (the
    one-token case of radio.latency.device_load and compute_time_s, without the (n, D) grid)."""

    first: np.ndarray
    pairs: np.ndarray
    compute_s: np.ndarray


def slot_groups(steps: OneTokenSteps, keep: np.ndarray) -> SlotGroups:
    device, k = steps.slot_device, keep.shape[1]
    first = keep.copy()
    pairs = np.zeros(keep.shape)
    compute = np.zeros(keep.shape)
    for j in range(k):
        for i in range(k):
            same = keep[:, i] & (device[:, i] == device[:, j])
            if i < j:
                first[:, j] &= ~same
            pairs[:, j] += same
            compute[:, j] = compute[:, j] + np.where(same, steps.roof_s[:, i], 0.0)
    return SlotGroups(first, pairs, compute)


def pair_latency_s(steps: OneTokenSteps) -> np.ndarray:
    """(n, k) policy.wlr.pair_latency_s with EqualBandwidth: each slot's device round trip under the top-k."""
    groups = slot_groups(steps, _all_kept(steps))
    bits = steps.bits_per_token[:, None]
    share = (steps.bandwidth_hz / groups.first.sum(axis=1))[:, None]  # policy.bandwidth.equal_split
    times = (share_time_s(bits, share, steps.snr_dl_per_hz) + groups.compute_s
             + share_time_s(groups.pairs * bits, share, steps.snr_ul_per_hz))
    return np.maximum(times, _TINY_S)


def decide_wlr(steps: OneTokenSteps, policy: WLRThreshold) -> BatchDecision:
    """WLRThreshold with EqualBandwidth, the same steps as `WLRThreshold.decide` row by row."""
    weight = steps.weight
    ratio = weight / pair_latency_s(steps)  # (n, k)
    norm = ratio.max(axis=1, keepdims=True) if policy.normalize == "max" else ratio.sum(axis=1, keepdims=True)
    normalised = np.divide(ratio, norm, out=np.zeros_like(ratio), where=norm > 0.0)
    keep = first_argmax_mask(ratio)
    if policy.theta < 1.0:
        keep |= normalised >= policy.theta
    return _decision(steps, keep, renormalize(weight, keep), equal_shares(steps, keep))


def supports(policy: object) -> bool:
    """Whether `decide_batch` has a batched form of this policy (exact types: a subclass may decide otherwise)."""
    if type(policy) in (TopK, WLRThreshold):
        return type(policy.bandwidth) is EqualBandwidth  # type: ignore[attr-defined]
    return type(policy) is JointSelectionBandwidth


def decide_batch(policy: object, steps: OneTokenSteps) -> BatchDecision | None:
    """The batched decision of `policy` on n one-token steps, or None when it has no batched form."""
    from wdmoe.policy.joint_rounds import decide_joint

    if not supports(policy):
        return None
    if isinstance(policy, TopK):
        return decide_topk(steps)
    if isinstance(policy, WLRThreshold):
        return decide_wlr(steps, policy)
    assert isinstance(policy, JointSelectionBandwidth)
    return decide_joint(steps, policy)
