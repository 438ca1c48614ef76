"""Shared steps of the policies: a state's per-device costs for a selection, and the re-weighting of kept experts.

Contract: pure numpy; every function takes a `LayerState` (or its arrays) and a keep mask (T, k) and never
drops an expert itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.radio.compute import DeviceProfiles
from wdmoe.radio.latency import compute_time_s, device_load
from wdmoe.radio.rate import share_time_s


def profiles_of(state: LayerState) -> DeviceProfiles:
    """The state's profiles, checked: `LayerState.profiles` is typed `object` to keep base.py light."""
    profiles = state.profiles
    if not isinstance(profiles, DeviceProfiles):
        raise TypeError(f"LayerState.profiles is a {type(profiles).__name__}; policies need a "
                        "wdmoe.radio.compute.DeviceProfiles with one profile per device")
    return cast(DeviceProfiles, profiles)


@dataclass(frozen=True)
class DeviceCosts:
    """What a selection asks of each device, shapes (D,): bits each way, compute seconds, and who is active."""

    bits_dl: np.ndarray
    bits_ul: np.ndarray
    compute_s: np.ndarray
    active: np.ndarray


def device_costs(state: LayerState, keep: np.ndarray) -> DeviceCosts:
    """Bits and compute seconds per device for the kept (token, expert) pairs (the radio.latency model)."""
    load = device_load(state.topk_index, keep, state.expert_device, state.num_devices)
    compute_s = compute_time_s(load.expert_tokens, state.expert_device, profiles_of(state),
                               state.expert_flops_per_token, state.expert_weight_bytes)
    return DeviceCosts(load.tokens_dl * state.bits_per_token, load.pairs_ul * state.bits_per_token, compute_s,
                       load.pairs_ul > 0.0)


def renormalize(weight: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(T, k) weights of the kept experts, scaled so each token's kept weights sum to its original total.

    Mixtral's top-k weights sum to 1 and so do the kept ones; a model whose top-k weights sum to s keeps the
    scale s. A token whose kept weights sum to 0 shares its original total equally among its kept experts.
    """
    kept = np.where(keep, weight, 0.0)
    total = weight.sum(axis=1, keepdims=True)  # (T, 1)
    kept_total = kept.sum(axis=1, keepdims=True)
    n_kept = keep.sum(axis=1, keepdims=True)
    positive = kept_total > 0.0
    scale = np.divide(total, kept_total, out=np.ones_like(total), where=positive)
    equal = np.divide(total, n_kept, out=np.zeros_like(total), where=n_kept > 0)
    return np.where(positive, kept * scale, np.where(keep, equal, 0.0))


def device_times_s(state: LayerState, costs: DeviceCosts, bandwidth_hz: np.ndarray) -> np.ndarray:
    """(D,) round-trip seconds DL + compute + UL of each active device on its share (0 when idle)."""
    link = state.link
    total = (share_time_s(costs.bits_dl, bandwidth_hz, link.snr_dl_per_hz) + costs.compute_s
             + share_time_s(costs.bits_ul, bandwidth_hz, link.snr_ul_per_hz))
    return np.where(costs.active, total, 0.0)


def first_argmax_mask(score: np.ndarray) -> np.ndarray:
    """(T, k) bool, True at each row's first maximum."""
    mask = np.zeros(score.shape, dtype=bool)
    if score.shape[0]:
        mask[np.arange(score.shape[0]), np.argmax(score, axis=1)] = True
    return mask
