"""The state of every device's radio link for one channel realization.

A `LinkState` is *sampled* by `wdmoe.radio.channel.sample_links(rng, scenario)` and *used* by the rate, latency
and policy functions, so one realization can be stored and replayed (the Sionna habit: sampling random state is
separate from applying it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinkState:
    """Per-device link quantities; every array has shape (D,) for D devices.

    Attributes:
        distance_m: BS-device 3D distance in metres.
        pathloss_db: large-scale loss in dB (path loss plus shadowing), positive.
        gain_dl / gain_ul: small-scale fading power gain |h|^2 (linear, mean 1) of the downlink / uplink.
        snr_dl_per_hz / snr_ul_per_hz: received SNR per hertz of bandwidth, in Hz:
            P_tx * gain / (PL * N0 * NF). The Shannon rate of a share of b Hz is b * log2(1 + snr_per_hz / b),
            i.e. the transmit power is spread over the share (papers.md §2.2 [R]).
    """

    distance_m: np.ndarray
    pathloss_db: np.ndarray
    gain_dl: np.ndarray
    gain_ul: np.ndarray
    snr_dl_per_hz: np.ndarray
    snr_ul_per_hz: np.ndarray

    @property
    def num_devices(self) -> int:
        return int(self.distance_m.shape[0])

    @classmethod
    def uniform(cls, num_devices: int, snr_per_hz: float = 1e15, distance_m: float = 100.0) -> LinkState:
        """Identical links for every device: a deterministic state for tests and radio-free runs."""
        full = np.full(num_devices, 1.0)
        snr = np.full(num_devices, snr_per_hz)
        pathloss = np.full(num_devices, 0.0)
        return cls(full * distance_m, pathloss, full, full, snr, snr.copy())
