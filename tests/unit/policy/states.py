"""Small factories of LayerStates for the policy tests (real objects, random but seeded)."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import strategies as st

from wdmoe.policy.base import LayerState
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.link import DownlinkPower, LinkState


def random_state(seed: int, num_tokens: int, top_k: int = 2, num_experts: int = 8, num_devices: int = 8,
                 weight_scale: float = 1.0,
                 downlink: DownlinkPower = DownlinkPower.FULL_PER_DEVICE) -> LayerState:
    """A LayerState with log-uniform SNRs, mixed presets and softmax top-k weights times `weight_scale`; under
    SHARED_PSD the BS's power is spread over the state's band (the links' DL pool is bandwidth_hz)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_tokens, num_experts)) * 2.0
    index = np.argsort(-logits, axis=1)[:, :top_k]  # (T, k)
    top = np.take_along_axis(logits, index, axis=1)
    weight = np.exp(top - top.max(axis=1, keepdims=True))
    weight = weight / weight.sum(axis=1, keepdims=True) * weight_scale
    snr_dl = 10.0 ** rng.uniform(6.0, 11.0, num_devices)
    snr_ul = 10.0 ** rng.uniform(6.0, 11.0, num_devices)
    ones = np.ones(num_devices)
    link = LinkState(ones * 100.0, ones * 100.0, ones, ones, snr_dl, snr_ul)
    names = list(PRESETS)
    profiles = DeviceProfiles.from_profiles([PRESETS[names[i]] for i in rng.integers(0, len(names),
                                                                                    num_devices)])
    expert_device = rng.integers(0, num_devices, num_experts)
    state = LayerState(
        topk_index=index, topk_weight=weight, expert_device=expert_device, link=link, profiles=profiles,
        expert_flops_per_token=float(10.0 ** rng.uniform(7.0, 9.0)),
        expert_weight_bytes=float(10.0 ** rng.uniform(7.0, 9.0)),
        bits_per_token=float(10.0 ** rng.uniform(3.0, 5.0)),
        bandwidth_hz=float(10.0 ** rng.uniform(5.0, 8.0)), bs_time_s=float(rng.uniform(0.0, 1e-3)))
    if downlink is DownlinkPower.SHARED_PSD:
        return dataclasses.replace(state, link=dataclasses.replace(link, dl_psd_pool_hz=state.bandwidth_hz))
    return state


@st.composite
def layer_states(draw: st.DrawFn, max_tokens: int = 24,
                 downlinks: tuple[DownlinkPower, ...] = (DownlinkPower.FULL_PER_DEVICE,)) -> LayerState:
    """Hypothesis strategy: random LayerStates of 1..max_tokens tokens, k in 1..3, 1..8 devices, one of the
    `downlinks` power models."""
    top_k = draw(st.integers(1, 3))
    return random_state(
        seed=draw(st.integers(0, 2**31 - 1)), num_tokens=draw(st.integers(1, max_tokens)), top_k=top_k,
        num_experts=draw(st.integers(top_k, 10)), num_devices=draw(st.integers(1, 8)),
        weight_scale=draw(st.sampled_from([1.0, 2.5])), downlink=draw(st.sampled_from(downlinks)))
