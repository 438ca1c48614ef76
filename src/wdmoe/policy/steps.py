"""The batched form of a policy: n one-token layer steps (decode) decided at once, vectorized over the batch.

Contract: a decode step routes one token, so a policy's per-call overhead, not its arithmetic, dominates a
replay. `policy.decide_steps(steps)` (the `Policy` protocol, policy.base) decides n one-token steps
(`OneTokenSteps`, each with its own links, weights, budget and BS time) in a few numpy calls and returns what
`policy.decide` returns on each step's `LayerState` (`policy.selection.one_token_steps` builds the steps from the
states): keep and weight equal, bandwidth equal to within the solvers' tolerance (tests/unit/sim checks 1e-9
relative on random instances; on one machine the operations are the same, so the numbers are too). A policy
returns None where it has no batched form for its configuration; `BatchDecision.fallback` marks the steps the
caller must decide per state (the joint policy's tokens whose slots span 3 or more devices).

This module holds the two types and the slot helpers the batched forms share, and imports no policy module, so
policy.base can name the types and every policy can import the helpers. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
        dl_psd_pool_hz: `LinkState.dl_psd_pool_hz` of every step's links (the steps of one replay share a
            scenario): > 0, the BS's power at a constant spectral density over that pool; 0.0, the full power on
            every downlink.
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
    dl_psd_pool_hz: float = 0.0

    @property
    def size(self) -> int:
        return int(self.slot_device.shape[0])

    def subset(self, items: np.ndarray) -> OneTokenSteps:
        """The steps `items` (int indices); `take` on axis 0 is numpy's fast row gather."""
        scalars = ("num_devices", "dl_psd_pool_hz")
        arrays = [getattr(self, f).take(items, axis=0) for f in self.__dataclass_fields__ if f not in scalars]
        return OneTokenSteps(*arrays, self.num_devices, self.dl_psd_pool_hz)  # type: ignore[arg-type, call-arg]


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


def all_kept(steps: OneTokenSteps) -> np.ndarray:
    """(n, k) True: the router's top-k of every step."""
    return np.ones(steps.slot_device.shape, dtype=bool)


def batch_decision(steps: OneTokenSteps, keep: np.ndarray, weight: np.ndarray, share: np.ndarray) -> BatchDecision:
    """The decision of every step (none left to the per-state fallback)."""
    return BatchDecision(keep, weight, share, np.zeros(steps.size, dtype=bool), steps.slot_device, steps.num_devices)


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
