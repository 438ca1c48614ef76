"""radio.latency: one layer worked out by hand, monotonicity in bandwidth, step and request totals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.states import layer_states
from wdmoe.policy import MinMaxBandwidth, TopK
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.evaluate import layer_breakdown as evaluate
from wdmoe.radio.compute import DeviceProfile, DeviceProfiles
from wdmoe.radio.latency import LayerLoad, layer_breakdown, request_latency, request_times, step_totals
from wdmoe.radio.link import LinkState
from wdmoe.radio.rate import PoolMode

# Hand case: 2 tokens, top-2 of 2 experts, expert e on device e, each device a 1 MHz share, 1000 bits per token.
#   device 0: snr_dl 3e6/Hz -> log2(1 + 3) = 2 -> 2 Mbit/s;  snr_ul 1e6 -> log2(2) = 1 -> 1 Mbit/s
#   device 1: snr_dl 7e6/Hz -> log2(8) = 3 -> 3 Mbit/s;      snr_ul 7e6 -> 3 Mbit/s
#   F = 1e6 FLOP/token, W = 1e6 bytes; device 0: 1e9 FLOP/s, 1e9 B/s, 0.1 ms overhead; device 1: 1e10, 1e9, 0.
# keep = [[T, T], [F, T]]: token 0 on both devices, token 1 on device 1 only.
#   device 0: 1 token.  DL 1000 / 2e6 = 0.5 ms; compute max(1e6/1e9, 1e6/1e9) + 0.1 ms = 1.1 ms;
#             UL 1000 / 1e6 = 1.0 ms; total 2.6 ms
#   device 1: 2 tokens. DL 2000 / 3e6 = 0.6667 ms; compute max(2e6/1e10 = 0.2 ms, 1e6/1e9 = 1 ms) + 0 = 1.0 ms;
#             UL 2000 / 3e6 = 0.6667 ms; total 2.3333 ms
#   BS 0.5 ms -> layer 0.5 + max(2.6, 2.3333) = 3.1 ms
#   waiting: token 0 finishes with device 0 (2.6 ms) -> 0; token 1 with device 1 -> 2.6 - 2.3333 = 0.2667 ms
#   energy (tx 0.2 W, compute 10 W / 5 W, BS 20 W):
#     device tx 0.2 * 1.0 ms = 0.2 mJ, 0.2 * 0.6667 ms = 0.1333 mJ
#     compute 10 * 1.1 ms = 11 mJ, 5 * 1.0 ms = 5 mJ
#     BS tx 20 * 0.5 ms = 10 mJ, 20 * 0.6667 ms = 13.333 mJ;  total 39.6667 mJ
HAND_LINK = LinkState(np.ones(2), np.zeros(2), np.ones(2), np.ones(2), np.array([3e6, 7e6]), np.array([1e6, 7e6]))
HAND_PROFILES = DeviceProfiles.from_profiles([DeviceProfile("d0", 1e9, 1e9, 1e9, 0.2, 10.0, 1e-4),
                                              DeviceProfile("d1", 1e10, 1e9, 1e9, 0.2, 5.0, 0.0)])
HAND_INDEX = np.array([[0, 1], [0, 1]])
HAND_KEEP = np.array([[True, True], [False, True]])
HAND_LOAD = LayerLoad(HAND_INDEX, HAND_KEEP, np.array([0, 1]), 1e6, 1e6, 1000.0)


def test_one_layer_two_devices_by_hand() -> None:
    b = layer_breakdown(HAND_LOAD, HAND_LINK, HAND_PROFILES, np.array([1e6, 1e6]), bs_time_s=5e-4,
                        bs_tx_power_w=20.0)

    np.testing.assert_allclose(b.dl_s, [0.5e-3, 2e-3 / 3], rtol=1e-12)
    np.testing.assert_allclose(b.compute_s, [1.1e-3, 1.0e-3], rtol=1e-12)
    np.testing.assert_allclose(b.ul_s, [1.0e-3, 2e-3 / 3], rtol=1e-12)
    np.testing.assert_allclose(b.total_s, [2.6e-3, 7e-3 / 3], rtol=1e-12)
    assert b.layer_s == pytest.approx(3.1e-3, rel=1e-12)
    np.testing.assert_allclose(b.waiting_s, [0.0, 2.6e-3 - 7e-3 / 3], rtol=1e-9, atol=1e-15)
    np.testing.assert_array_equal(b.bits_dl, [1000.0, 2000.0])
    np.testing.assert_array_equal(b.bits_ul, [1000.0, 2000.0])
    np.testing.assert_allclose(b.energy_device_tx_j, [0.2e-3, 0.4e-3 / 3], rtol=1e-12)
    np.testing.assert_allclose(b.energy_device_compute_j, [11e-3, 5e-3], rtol=1e-12)
    np.testing.assert_allclose(b.energy_bs_tx_j, [10e-3, 40e-3 / 3], rtol=1e-12)
    assert b.energy_j == pytest.approx(39.6667e-3, rel=1e-5)


def test_separate_uplink_pool_and_bs_power() -> None:
    # doubling device 0's UL share: 2 MHz at snr 1e6 -> 2e6 * log2(1.5) bit/s
    b = layer_breakdown(HAND_LOAD, HAND_LINK, HAND_PROFILES, np.array([1e6, 1e6]), bs_time_s=5e-4,
                        pool=PoolMode.SEPARATE, bandwidth_ul_hz=np.array([2e6, 1e6]), bs_tx_power_w=1.0)

    assert b.ul_s[0] == pytest.approx(1000.0 / (2e6 * np.log2(1.5)), rel=1e-12)
    assert b.dl_s[0] == pytest.approx(0.5e-3, rel=1e-12)
    np.testing.assert_allclose(b.energy_bs_tx_j, b.dl_s, rtol=1e-12)


def test_shared_psd_downlink_by_hand() -> None:
    # The BS spreads 20 W over a 4 MHz pool: a 1 MHz share gets 5 W and the DL SNR is snr_per_hz / 4 MHz on any
    # share: device 0 3e6 / 4e6 = 0.75 -> 1e6 log2(1.75) bit/s, device 1 7e6 / 4e6 = 1.75 -> 1e6 log2(2.75) bit/s.
    # The uplinks keep their devices' full power (the same times as the full-power hand case above).
    link = dataclasses.replace(HAND_LINK, dl_psd_pool_hz=4e6)
    b = layer_breakdown(HAND_LOAD, link, HAND_PROFILES, np.array([1e6, 1e6]), bs_time_s=5e-4, bs_tx_power_w=20.0)

    dl = np.array([1000.0 / (1e6 * np.log2(1.75)), 2000.0 / (1e6 * np.log2(2.75))])
    np.testing.assert_allclose(b.dl_s, dl, rtol=1e-12)
    np.testing.assert_allclose(b.ul_s, [1.0e-3, 2e-3 / 3], rtol=1e-12)
    np.testing.assert_allclose(b.energy_bs_tx_j, 5.0 * dl, rtol=1e-12)
    assert b.layer_s == pytest.approx(5e-4 + max(dl + np.array([1.1e-3, 1.0e-3]) + [1.0e-3, 2e-3 / 3]), rel=1e-12)


def test_a_device_with_two_experts_runs_both_and_idle_devices_cost_nothing() -> None:
    # experts 0 and 1 on device 0, device 1 idle; token 0 -> both experts: DL once (1000 bits), UL twice
    load = LayerLoad(np.array([[0, 1]]), np.array([[True, True]]), np.array([0, 0]), 1e6, 1e6, 1000.0)
    b = layer_breakdown(load, HAND_LINK, HAND_PROFILES, np.array([1e6, 0.0]))

    np.testing.assert_array_equal(b.bits_dl, [1000.0, 0.0])
    np.testing.assert_array_equal(b.bits_ul, [2000.0, 0.0])
    np.testing.assert_allclose(b.compute_s, [2.2e-3, 0.0], rtol=1e-12)
    assert b.total_s[1] == 0.0 and b.energy_bs_tx_j[1] == 0.0
    assert b.layer_s == pytest.approx(0.5e-3 + 2.2e-3 + 2e-3, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(state=layer_states(), factor=st.floats(1.0, 10.0), seed=st.integers(0, 2**31 - 1))
def test_latency_never_rises_when_bandwidth_rises(state: LayerState, factor: float, seed: int) -> None:
    base = MinMaxBandwidth().decide(state)
    more = base.bandwidth_hz * np.random.default_rng(seed).uniform(1.0, factor, state.num_devices)

    before = evaluate(state, base)
    after = evaluate(state, Decision(base.keep, base.weight, more))

    assert np.all(after.total_s <= before.total_s * (1 + 1e-12))
    assert after.layer_s <= before.layer_s * (1 + 1e-12)
    assert np.all(after.waiting_s >= 0.0) and np.all(before.waiting_s >= 0.0)


def test_step_and_request_totals() -> None:
    hand = layer_breakdown(HAND_LOAD, HAND_LINK, HAND_PROFILES, np.array([1e6, 1e6]), bs_time_s=5e-4)
    prefill = step_totals([hand, hand, hand])
    decode = [step_totals([hand]), step_totals([hand, hand])]

    request = request_latency(prefill, decode)

    assert prefill.latency_s == pytest.approx(9.3e-3) and prefill.num_layers == 3
    assert prefill.energy_j == pytest.approx(3 * hand.energy_j)
    assert prefill.bits_dl == 9000.0
    assert request.ttft_s == pytest.approx(9.3e-3)
    assert request.tpot_s == pytest.approx((3.1e-3 + 6.2e-3) / 2)
    assert request.total_s == pytest.approx(9.3e-3 + 9.3e-3)
    assert np.isnan(request_latency(prefill, []).tpot_s)


@settings(max_examples=20, deadline=None)
@given(state=layer_states())
def test_policy_bridge_equals_the_radio_model(state: LayerState) -> None:
    decision = TopK().decide(state)
    load = LayerLoad(state.topk_index, decision.keep, state.expert_device, state.expert_flops_per_token,
                     state.expert_weight_bytes, state.bits_per_token)
    direct = layer_breakdown(load, state.link, state.profiles, decision.bandwidth_hz,  # type: ignore[arg-type]
                             bs_time_s=state.bs_time_s)

    bridged = evaluate(state, decision)
    for field in dataclasses.fields(direct):
        np.testing.assert_array_equal(getattr(bridged, field.name), getattr(direct, field.name))


def test_request_times_is_request_latency_per_request() -> None:
    hand = layer_breakdown(HAND_LOAD, HAND_LINK, HAND_PROFILES, np.array([1e6, 1e6]), bs_time_s=5e-4)
    steps = [[step_totals([hand] * 2), step_totals([hand]), step_totals([hand] * 3)],  # request 0: prefill + 2
             [step_totals([hand] * 4)]]  # request 1: prefill only
    step_s = np.array([s.latency_s for request in steps for s in request])

    got = request_times(step_s, np.array([0, 0, 0, 1]), np.array([False, True, True, False]), 2)

    want = [request_latency(request[0], request[1:]) for request in steps]
    np.testing.assert_allclose(got.ttft_s, [w.ttft_s for w in want], rtol=1e-15)
    assert got.tpot_s[0] == pytest.approx(want[0].tpot_s, rel=1e-15)
    assert np.isnan(got.tpot_s[1]) and np.isnan(want[1].tpot_s)
