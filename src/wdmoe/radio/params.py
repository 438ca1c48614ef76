"""Radio stage 0: the parameters of one cell, as plain frozen values (no pydantic, no file I/O).

Contract: `wdmoe.config.Scenario.radio` builds a `RadioParams` from a validated TOML scenario; the channel, the
runtime's decider, the simulator and the planner read only these values, so `wdmoe.radio` never imports
`wdmoe.config`. Heights are resolved (the TR 38.901 model's defaults filled in). The one default of each
transmit power lives here; `dbm_to_w` is the one dBm -> W conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wdmoe.radio.exactmath import exp10
from wdmoe.radio.link import DownlinkPower
from wdmoe.radio.rate import PoolMode

ChannelModel = Literal["uma", "umi", "inh", "log_distance"]
LosMode = Literal["probabilistic", "los", "nlos"]
FadingName = Literal["rayleigh", "rician", "none"]
Coherence = Literal["step", "layer", "request"]

DEFAULT_BS_TX_POWER_DBM = 43.0  # dBm, papers.md §2.2 placeholder [R]
DEFAULT_DEVICE_TX_POWER_DBM = 23.0  # dBm, papers.md §2.2 placeholder [R]


def dbm_to_w(power_dbm: float) -> float:
    """P in W = 10^(P in dBm / 10) / 1000 (radio.exactmath's 10^x: the same bits on every CPU)."""
    return exp10(power_dbm / 10) / 1e3


DEFAULT_BS_TX_POWER_W = dbm_to_w(DEFAULT_BS_TX_POWER_DBM)  # 19.95 W


@dataclass(frozen=True)
class ChannelParams:
    """Large-scale channel (wdmoe.config.ChannelConfig has the units and the sources of each default).

    Attributes:
        model: TR 38.901 "uma", "umi", "inh", or "log_distance". los: the LoS draw, or forced.
        shadowing: whether log-normal shadowing is drawn. carrier_ghz: f_c in GHz.
        bs_height_m / ut_height_m: resolved antenna heights in metres.
        pl0_db, d0_m, exponent, log_distance_shadowing_std_db: the log-distance model's parameters.
    """

    model: ChannelModel = "uma"
    los: LosMode = "probabilistic"
    shadowing: bool = True
    carrier_ghz: float = 3.5
    bs_height_m: float = 25.0
    ut_height_m: float = 1.5
    pl0_db: float = 128.1
    d0_m: float = 1000.0
    exponent: float = 3.76
    log_distance_shadowing_std_db: float = 8.0


@dataclass(frozen=True)
class FadingParams:
    """Small-scale block fading: model, Rician K in dB, and whether the UL gain equals the DL gain (TDD)."""

    model: FadingName = "rayleigh"
    k_factor_db: float = 9.0
    reciprocal: bool = False


@dataclass(frozen=True)
class RadioParams:
    """The radio side of one cell: geometry, channel, fading, powers, band and air format.

    Attributes:
        num_devices: D. distance_min_m / distance_max_m: the annulus devices are dropped in, ground metres.
        noise_figure_db: both receivers' noise figure, dB. bs_tx_power_dbm / device_tx_power_dbm: dBm.
        bandwidth_hz: the band in Hz. pool: one shared pool or separate DL / UL pools.
        activation_bits: bits per hidden value on the air. coherence: when the fading is redrawn.
        downlink: how the concurrent downlinks share the BS's power: at a constant spectral density over the
            band (the default) or the full power each (the papers' model).
    """

    num_devices: int = 8
    distance_min_m: float = 50.0
    distance_max_m: float = 300.0
    channel: ChannelParams = ChannelParams()
    fading: FadingParams = FadingParams()
    noise_figure_db: float = 7.0
    bs_tx_power_dbm: float = DEFAULT_BS_TX_POWER_DBM
    device_tx_power_dbm: float = DEFAULT_DEVICE_TX_POWER_DBM
    bandwidth_hz: float = 20e6
    pool: PoolMode = PoolMode.SHARED
    activation_bits: int = 16
    coherence: Coherence = "step"
    downlink: DownlinkPower = DownlinkPower.SHARED_PSD

    @property
    def bs_tx_power_w(self) -> float:
        return dbm_to_w(self.bs_tx_power_dbm)

    @property
    def dl_psd_pool_hz(self) -> float:
        """`LinkState.dl_psd_pool_hz`: the band (the DL pool in either pool mode) under SHARED_PSD, else 0.0."""
        return self.bandwidth_hz if self.downlink is DownlinkPower.SHARED_PSD else 0.0
