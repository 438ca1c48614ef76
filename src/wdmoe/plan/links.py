"""The planner's radio side: the cluster-wide radio settings and the channel samples the expectation runs over.

Contract: `channel_samples(statuses, radio)` returns `LinkState`s of shape (D,) drawn with wdmoe.radio.channel's
own functions. A device given by `distance_m` gets a fresh LoS state, shadowing and DL/UL fading in each sample
(the cluster's `[scenario]`); a device given by `link_rate_bps` gets the SNR per hertz at which the one rate
formula, wdmoe.radio.rate.shannon_rate_bps, gives exactly that rate over the whole band
(`wdmoe.radio.rate.snr_per_hz_for_rate`, its inverse), the same in every sample. With no distance device one
sample is exact. The downlink is the radio model's default, the BS's power at a constant spectral density over
the cluster's band (`dl_psd_pool_hz`), unless the [scenario] sets downlink_power = "full_per_device".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wdmoe.plan.errors import ClusterError
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.channel import compose_links, draw_gains, large_scale_at
from wdmoe.radio.link import DownlinkPower, LinkState
from wdmoe.radio.params import RadioParams
from wdmoe.radio.rate import PoolMode, snr_per_hz_for_rate


@dataclass(frozen=True)
class RadioSettings:
    """What every device of a cluster shares.

    Attributes:
        bandwidth_hz: the band the BS splits among the active devices of a layer step (equal shares), Hz.
        activation_bits: bits per hidden value on the air (16: bf16).
        bs_layer_time_s: the BS's own time per MoE layer (attention + router), s; it adds the same to every plan.
        scenario: channel physics (model, LoS, shadowing, fading, powers, noise) for devices given by distance:
            the radio value of the cluster's [scenario] table (`wdmoe.config.Scenario.radio`).
        channel_samples: channel realizations the expectation averages over (distance devices only).
        seed: the seed of those realizations and of sampled expert routes.
        pool: shared (DL then UL on one share) or separate DL / UL pools.
    """

    bandwidth_hz: float = 20e6
    activation_bits: int = 16
    bs_layer_time_s: float = 0.0
    scenario: RadioParams | None = None
    channel_samples: int = 8
    seed: int = 0
    pool: PoolMode = PoolMode.SHARED


def dl_psd_pool_hz(radio: RadioSettings) -> float:
    """`LinkState.dl_psd_pool_hz` of the cluster: the band the planner splits (the cluster's bandwidth_hz, not the
    [scenario]'s) under the default constant-PSD downlink, 0.0 when the [scenario] asks for full power per
    downlink (wdmoe.radio.link.DownlinkPower)."""
    downlink = radio.scenario.downlink if radio.scenario is not None else DownlinkPower.SHARED_PSD
    return radio.bandwidth_hz if downlink is DownlinkPower.SHARED_PSD else 0.0


def channel_samples(statuses: Sequence[ResourceStatus], radio: RadioSettings) -> tuple[LinkState, ...]:
    """The channel realizations of the devices, in `statuses` order (module docstring)."""
    fixed = np.array([s.link_rate_bps is not None for s in statuses])
    rate_snr = np.array(
        [snr_per_hz_for_rate(s.link_rate_bps, radio.bandwidth_hz) if s.link_rate_bps else 0.0 for s in statuses]
    )
    ones = np.ones(len(statuses))
    pool_hz = dl_psd_pool_hz(radio)
    if fixed.all():
        return (LinkState(np.zeros(len(statuses)), np.zeros(len(statuses)), ones, ones, rate_snr, rate_snr, pool_hz),)
    scenario = radio.scenario
    if scenario is None:
        first = next(s.device for s in statuses if s.distance_m is not None)
        raise ClusterError(
            f"device {first!r} gives distance_m but the cluster has no [scenario] table to turn "
            "distances into links; add one, or give link_rate_bps (bit/s) instead"
        )
    rng = np.random.default_rng(radio.seed)
    d2d = np.array([s.distance_m if s.distance_m is not None else 10.0 for s in statuses])
    out = []
    for _ in range(radio.channel_samples):
        try:
            large = large_scale_at(rng, scenario, d2d)
            d3d, loss_db = large.distance_3d_m, large.pathloss_db + large.shadowing_db
        except ValueError as exc:
            raise ClusterError(f"device distance_m out of the channel model's range: {exc}") from None
        gain_dl, gain_ul = draw_gains(rng, scenario, len(statuses))
        link = compose_links(d3d, loss_db, gain_dl, gain_ul, scenario)
        out.append(
            LinkState(
                np.where(fixed, 0.0, link.distance_m),
                np.where(fixed, 0.0, link.pathloss_db),
                np.where(fixed, 1.0, gain_dl),
                np.where(fixed, 1.0, gain_ul),
                np.where(fixed, rate_snr, link.snr_dl_per_hz),
                np.where(fixed, rate_snr, link.snr_ul_per_hz),
                pool_hz,  # a fixed rate over the whole band is the same under either DL power model
            )
        )
    return tuple(out)
