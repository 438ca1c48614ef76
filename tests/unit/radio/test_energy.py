"""radio.energy's solver form against the reference layer model (radio.latency) and against finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tests.unit.policy.states import random_state
from wdmoe.policy.bandwidth import equal_split
from wdmoe.radio.compute import DeviceProfiles
from wdmoe.radio.energy import ShareDevice, share_cost
from wdmoe.radio.latency import LayerLoad, device_costs, layer_breakdown
from wdmoe.radio.link import DownlinkPower

BS_W = 19.95


@pytest.mark.parametrize("downlink", list(DownlinkPower))
@pytest.mark.parametrize("seed", range(30))
def test_time_and_energy_equal_the_layer_model(seed: int, downlink: DownlinkPower) -> None:
    state = random_state(seed, num_tokens=1 + seed % 5, top_k=1 + seed % 3, num_devices=1 + seed % 8,
                         downlink=downlink)
    keep = np.ones(state.topk_index.shape, dtype=bool)
    load = LayerLoad(state.topk_index, keep, state.expert_device, state.expert_flops_per_token,
                     state.expert_weight_bytes, state.bits_per_token)
    profiles = state.profiles
    assert isinstance(profiles, DeviceProfiles)
    costs = device_costs(load, profiles)
    shares = equal_split(costs.active, state.bandwidth_hz)
    reference = layer_breakdown(load, state.link, profiles, shares, bs_tx_power_w=BS_W)
    energy = reference.energy_device_tx_j + reference.energy_device_compute_j + reference.energy_bs_tx_j

    for d in np.flatnonzero(costs.active):
        device = ShareDevice(costs.bits_dl[d], costs.bits_ul[d], costs.compute_s[d], state.link.snr_dl_per_hz[d],
                             state.link.snr_ul_per_hz[d], profiles.tx_power_w[d], profiles.compute_power_w[d], BS_W,
                             state.link.dl_psd_pool_hz)
        cost = share_cost(float(shares[d]), device)

        assert cost.time_s == reference.total_s[d]  # bit for bit: a budget met by one is met by the other
        assert cost.energy_j == pytest.approx(energy[d], rel=1e-13)


@pytest.mark.parametrize("pool", [0.0, 2e8])
@pytest.mark.parametrize("snr", [1e2, 1e5, 1e7, 1e9, 1e12])
@pytest.mark.parametrize("b", [1e4, 1e6, 1e8])
def test_slopes_match_central_differences(snr: float, b: float, pool: float) -> None:
    device = ShareDevice(4096.0, 8192.0, 1e-4, snr, 0.3 * snr, 0.2, 15.0, BS_W, pool)
    h = b * 1e-4  # wide enough that rounding stays below 1e-6 of a power-limited share's tiny slope
    up, down = share_cost(b + h, device), share_cost(b - h, device)

    cost = share_cost(b, device)

    assert cost.time_slope == pytest.approx((up.time_s - down.time_s) / (2 * h), rel=1e-6)
    assert cost.energy_slope == pytest.approx((up.energy_j - down.energy_j) / (2 * h), rel=1e-6,
                                              abs=1e-12 * cost.energy_j / b)
    assert cost.time_slope < 0.0 and cost.energy_slope < 0.0


def test_a_shared_psd_downlink_costs_the_bs_the_same_energy_on_any_share() -> None:
    device = ShareDevice(4096.0, 0.0, 0.0, 1e9, 1e9, 0.2, 10.0, BS_W, 2e7)

    energies = [share_cost(b, device).energy_j for b in (1e5, 1e6, 2e7)]

    assert energies == pytest.approx([BS_W * 4096.0 / (2e7 * math.log2(1 + 1e9 / 2e7))] * 3, rel=1e-13)
    assert share_cost(1e6, device).energy_slope == 0.0


def test_no_bits_and_no_band() -> None:
    idle_link = ShareDevice(0.0, 0.0, 2e-3, 1e9, 1e9, 0.2, 10.0, BS_W)
    busy = ShareDevice(1.0, 1.0, 0.0, 1e9, 1e9, 0.2, 10.0, BS_W)

    assert share_cost(0.0, idle_link) == share_cost(1e6, idle_link)
    assert share_cost(0.0, idle_link).energy_j == pytest.approx(10.0 * 2e-3)
    assert math.isinf(share_cost(0.0, busy).time_s) and math.isinf(share_cost(0.0, busy).energy_j)


@pytest.mark.parametrize("pool", [0.0, 2e7])
def test_a_dead_link_takes_infinite_time_and_energy_at_every_share(pool: float) -> None:
    """An SNR of 0 where bits move: inf, its direction flat (as radio.rate.scalar_time), never a ZeroDivisionError; the
    direction that moves no bits does not care (issue 15 item 4)."""
    dead_ul = ShareDevice(4096.0, 8192.0, 1e-4, 1e9, 0.0, 0.2, 10.0, BS_W, pool)
    dead_dl = ShareDevice(4096.0, 8192.0, 1e-4, 0.0, 1e9, 0.2, 10.0, BS_W, pool)
    nothing_down = ShareDevice(0.0, 8192.0, 1e-4, 0.0, 1e9, 0.2, 10.0, BS_W, pool)
    live_ul = ShareDevice(0.0, 8192.0, 1e-4, 1e9, 1e9, 0.2, 10.0, BS_W, pool)

    for device in (dead_ul, dead_dl):
        for b in (0.0, 1e3, 1e6, 1e9):
            cost = share_cost(b, device)
            assert math.isinf(cost.time_s) and cost.time_s > 0.0
            assert math.isinf(cost.energy_j) and cost.energy_j > 0.0
            if b > 0.0:  # the dead direction adds no slope (flat), so the sum stays a number for the solvers
                assert math.isfinite(cost.time_slope) and math.isfinite(cost.energy_slope)
    assert share_cost(1e6, nothing_down) == share_cost(1e6, live_ul)
