"""Shared steps of the policies: a state's per-device costs for a selection, and the re-weighting of kept experts.

Contract: pure numpy; every function takes a `LayerState` (or its arrays) and a keep mask (T, k) and never
drops an expert itself. `one_token_steps` stacks one-token states into the input of the batched forms.
"""

from __future__ import annotations

from typing import cast

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.policy.steps import OneTokenSteps
from wdmoe.radio.compute import DeviceProfiles, roofline_time_s
from wdmoe.radio.latency import DeviceCosts as DeviceCosts
from wdmoe.radio.latency import LayerLoad, device_times
from wdmoe.radio.latency import device_costs as radio_device_costs
from wdmoe.radio.rate import Shares


def profiles_of(state: LayerState) -> DeviceProfiles:
    """The state's profiles, checked: `LayerState.profiles` is typed `object` to keep base.py light."""
    profiles = state.profiles
    if not isinstance(profiles, DeviceProfiles):
        raise TypeError(f"LayerState.profiles is a {type(profiles).__name__}; policies need a "
                        "wdmoe.radio.compute.DeviceProfiles with one profile per device")
    return cast(DeviceProfiles, profiles)


def layer_load(state: LayerState, keep: np.ndarray) -> LayerLoad:
    """What the state's step asks of the devices when the pairs `keep` (T, k) run: the radio model's input."""
    return LayerLoad(state.topk_index, keep, state.expert_device, state.expert_flops_per_token,
                     state.expert_weight_bytes, state.bits_per_token)


def device_costs(state: LayerState, keep: np.ndarray) -> DeviceCosts:
    """Bits and compute seconds per device for the kept (token, expert) pairs: radio.latency.device_costs."""
    return radio_device_costs(layer_load(state, keep), profiles_of(state))


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
    share = np.asarray(bandwidth_hz, dtype=float)
    return device_times(costs, state.link, Shares(share, share)).total_s  # one shared pool


def first_argmax_mask(score: np.ndarray) -> np.ndarray:
    """(T, k) bool, True at each row's first maximum."""
    mask = np.zeros(score.shape, dtype=bool)
    if score.shape[0]:
        mask[np.arange(score.shape[0]), np.argmax(score, axis=1)] = True
    return mask


def one_token_steps(states: list[LayerState]) -> OneTokenSteps:
    """Stack one-token LayerStates of the same k and D into `OneTokenSteps`, each its own channel key (the
    per-state path's inputs to a batched form, for tests and tools)."""
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
    pools = {state.link.dl_psd_pool_hz for state in states}
    if len(pools) > 1:
        raise ValueError(f"the states' links have different downlink power models (dl_psd_pool_hz {sorted(pools)} "
                         "Hz); OneTokenSteps holds the steps of one scenario")
    c = [np.array(column, dtype=float if i else np.int64) for i, column in enumerate(zip(*rows, strict=True))]
    return OneTokenSteps(c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], np.arange(len(states)),
                         states[0].num_devices if states else 0, pools.pop() if pools else 0.0)
