"""Hand-built LayerStates with identical Jetson devices, for cases whose answers are computed by hand."""

from __future__ import annotations

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.link import LinkState

FAST_SNR = 1e9  # Hz: a 4,096-bit token over a few MHz takes ~1e-4 s
SLOW_SNR = 1e5  # Hz: power-limited, ~1.4e5 bit/s at most, so the same token takes ~3e-2 s


def hand_state(index: list[list[int]], weight: list[list[float]], snr: list[float]) -> LayerState:
    """Expert e on device e, one identical profile per device, DL and UL SNR `snr` per device, 10 MHz."""
    num_devices = len(snr)
    snr_hz = np.array(snr, dtype=float)
    ones = np.ones(num_devices)
    link = LinkState(ones * 100.0, ones * 100.0, ones, ones, snr_hz, snr_hz.copy())
    profiles = DeviceProfiles.uniform(PRESETS[next(iter(PRESETS))], num_devices)
    return LayerState(topk_index=np.array(index), topk_weight=np.array(weight), expert_device=np.arange(num_devices),
                      link=link, profiles=profiles, expert_flops_per_token=1e6, expert_weight_bytes=1e3,
                      bits_per_token=4096.0, bandwidth_hz=1e7)
