"""The state of every device's radio link for one channel realization.

A `LinkState` is *sampled* by `wdmoe.radio.channel.sample_links(rng, scenario)` and *used* by the rate, latency
and policy functions, so one realization can be stored and replayed (the Sionna habit: sampling random state is
separate from applying it).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


class DownlinkPower(Enum):
    """How the BS's transmit power P is shared by the concurrent downlinks (docs/radio.md, "Downlink power").

    SHARED_PSD: the default and the physical one: the BS transmits at a constant power spectral density P / B
        over its whole downlink pool B, so device k's share b_k gets P b_k / B. Its SNR, P g_k / (N0 B), does not
        depend on b_k and the rate is linear in it: r(b) = b log2(1 + snr_per_hz / B).
    FULL_PER_DEVICE: every downlink gets the full P (the WDMoE papers' model, kept for comparison): with D
        concurrent downlinks the BS radiates D P, and r(b) = b log2(1 + snr_per_hz / b).
    """

    SHARED_PSD = "shared_psd"
    FULL_PER_DEVICE = "full_per_device"


@dataclass(frozen=True)
class LinkState:
    """Per-device link quantities; every array has shape (D,) for D devices.

    Attributes:
        distance_m: BS-device 3D distance in metres.
        pathloss_db: large-scale loss in dB (path loss plus shadowing), positive.
        gain_dl / gain_ul: small-scale fading power gain |h|^2 (linear, mean 1) of the downlink / uplink.
        snr_dl_per_hz / snr_ul_per_hz: received SNR per hertz of bandwidth, in Hz:
            P_tx * gain / (PL * N0 * NF), with P_tx the transmitter's whole power. The uplink's Shannon rate on
            a share of b Hz is b * log2(1 + snr_per_hz / b) (the device's power spread over its share, papers.md
            §2.2 [R]); the downlink's depends on `dl_psd_pool_hz`.
        dl_psd_pool_hz: B > 0: the BS spreads its power at a constant spectral density over a downlink pool of B
            Hz (`DownlinkPower.SHARED_PSD`), so a DL share of b Hz has rate b * log2(1 + snr_dl_per_hz / B);
            0.0: each downlink gets the BS's full power (`DownlinkPower.FULL_PER_DEVICE`), rate
            b * log2(1 + snr_dl_per_hz / b). `radio.channel.sample_links` sets it from the scenario; links built
            by hand default to the old full-power model.
    """

    distance_m: np.ndarray
    pathloss_db: np.ndarray
    gain_dl: np.ndarray
    gain_ul: np.ndarray
    snr_dl_per_hz: np.ndarray
    snr_ul_per_hz: np.ndarray
    dl_psd_pool_hz: float = 0.0

    @property
    def downlink(self) -> DownlinkPower:
        return DownlinkPower.SHARED_PSD if self.dl_psd_pool_hz > 0.0 else DownlinkPower.FULL_PER_DEVICE

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
