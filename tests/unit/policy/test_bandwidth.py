"""MinMaxBandwidth: the whole budget, equal finishing times, and the same optimum as an independent solver."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from tests.unit.policy.states import layer_states, random_state
from wdmoe.policy import EqualBandwidth, MinMaxBandwidth, minmax_split
from wdmoe.policy.bandwidth import _bisection, _newton
from wdmoe.policy.base import LayerState
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.selection import device_costs
from wdmoe.radio.link import DownlinkPower

BOTH = (DownlinkPower.FULL_PER_DEVICE, DownlinkPower.SHARED_PSD)


def _device_time(b: float, bits_dl: float, bits_ul: float, compute_s: float, snr_dl: float,
                 snr_ul: float, pool: float = 0.0) -> float:
    """Independent re-derivation in plain floats: bits / (b log2(1 + snr / b)) each way, plus compute; with the
    BS's power at a constant spectral density over `pool` Hz (pool > 0) the DL SNR is snr_dl / pool on any share."""
    ln2 = math.log(2.0)
    dl_snr = snr_dl / pool if pool > 0.0 else snr_dl / b
    return bits_dl * ln2 / (b * math.log1p(dl_snr)) + bits_ul * ln2 / (b * math.log1p(snr_ul / b)) + compute_s


def _scipy_minmax(bits_dl: np.ndarray, bits_ul: np.ndarray, compute_s: np.ndarray, snr_dl: np.ndarray,
                  snr_ul: np.ndarray, budget: float, pool: float = 0.0) -> tuple[float, np.ndarray]:
    """min T s.t. sum_k b_k(T) = B, with b_k(T) = the share finishing at T, both roots by scipy's brentq."""
    n = bits_dl.shape[0]
    if n == 1:
        return (_device_time(budget, bits_dl[0], bits_ul[0], compute_s[0], snr_dl[0], snr_ul[0], pool),
                np.array([budget]))

    def share(k: int, target: float) -> float:
        def excess(log_b: float) -> float:
            return _device_time(math.exp(log_b), bits_dl[k], bits_ul[k], compute_s[k], snr_dl[k], snr_ul[k],
                                pool) - target
        high = math.log(budget) + 40.0
        if excess(high) > 0.0:
            return math.inf
        return math.exp(brentq(excess, math.log(budget) - 60.0, high, xtol=1e-15, rtol=1e-15))

    equal = max(_device_time(budget / n, bits_dl[k], bits_ul[k], compute_s[k], snr_dl[k], snr_ul[k], pool)
                for k in range(n))
    # infinite bandwidth: the power-limited rate snr log2(e), or a downlink at a constant PSD that takes no time
    floor = max(compute_s[k] + ((0.0 if pool > 0.0 else bits_dl[k] / snr_dl[k]) + bits_ul[k] / snr_ul[k])
                * math.log(2.0) for k in range(n))
    optimum = brentq(lambda t: sum(share(k, t) for k in range(n)) - budget, floor * (1 + 1e-12) + 1e-300,
                     equal * (1 + 1e-12), xtol=1e-300, rtol=1e-14)
    return optimum, np.array([share(k, optimum) for k in range(n)])


@settings(max_examples=60, deadline=None)
@given(state=layer_states(downlinks=BOTH))
def test_minmax_uses_the_budget_and_equalises_active_devices(state: LayerState) -> None:
    decision = MinMaxBandwidth().decide(state)
    breakdown = layer_breakdown(state, decision)
    active = breakdown.active

    np.testing.assert_allclose(decision.bandwidth_hz.sum(), state.bandwidth_hz, rtol=1e-12)
    assert np.all(decision.bandwidth_hz[~active] == 0.0)
    finish = breakdown.total_s[active]
    np.testing.assert_allclose(finish, finish.max(), rtol=1e-8)


@settings(max_examples=30, deadline=None)
@given(state=layer_states(downlinks=BOTH), seed=st.integers(0, 2**31 - 1))
def test_minmax_beats_equal_and_random_splits(state: LayerState, seed: int) -> None:
    minmax = layer_breakdown(state, MinMaxBandwidth().decide(state)).layer_s
    equal = EqualBandwidth().decide(state)
    active = layer_breakdown(state, equal).active
    other = np.random.default_rng(seed).dirichlet(np.ones(int(active.sum()))) * state.bandwidth_hz
    split = np.zeros(state.num_devices)
    split[active] = other

    assert minmax <= layer_breakdown(state, equal).layer_s * (1 + 1e-9)
    random_layer_s = layer_breakdown(state, type(equal)(equal.keep, equal.weight, split)).layer_s
    assert minmax <= random_layer_s * (1 + 1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), num_devices=st.integers(2, 12), num_tokens=st.integers(1, 64),
       downlink=st.sampled_from(BOTH))
def test_minmax_matches_an_independent_scipy_solver(seed: int, num_devices: int, num_tokens: int,
                                                    downlink: DownlinkPower) -> None:
    state = random_state(seed, num_tokens, top_k=2, num_experts=num_devices, num_devices=num_devices,
                         downlink=downlink)
    costs = device_costs(state, np.ones(state.topk_index.shape, dtype=bool))
    active = costs.active
    link = state.link
    pool = link.dl_psd_pool_hz

    ours = minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s, link.snr_dl_per_hz, link.snr_ul_per_hz,
                        state.bandwidth_hz, active, dl_pool_hz=pool)
    expected_t, expected_b = _scipy_minmax(costs.bits_dl[active], costs.bits_ul[active], costs.compute_s[active],
                                           link.snr_dl_per_hz[active], link.snr_ul_per_hz[active],
                                           state.bandwidth_hz, pool)

    our_t = max(_device_time(b, costs.bits_dl[k], costs.bits_ul[k], costs.compute_s[k], link.snr_dl_per_hz[k],
                             link.snr_ul_per_hz[k], pool) for k, b in zip(np.flatnonzero(active), ours[active],
                                                                          strict=True))
    assert abs(our_t - expected_t) <= 1e-6 * expected_t
    np.testing.assert_allclose(ours[active], expected_b, rtol=1e-6)


def test_minmax_one_device_takes_all_and_zero_bits_split_equally() -> None:
    bits = np.array([0.0, 8e3, 0.0])
    active = np.array([True, True, False])
    one = minmax_split(bits, bits, np.array([1e-3, 2e-3, 0.0]), np.full(3, 1e9), np.full(3, 1e9), 1e6, active)
    none = minmax_split(np.zeros(3), np.zeros(3), np.ones(3), np.ones(3), np.ones(3), 9e6, active)

    np.testing.assert_array_equal(one, [0.0, 1e6, 0.0])
    np.testing.assert_array_equal(none, [4.5e6, 4.5e6, 0.0])


def test_minmax_gives_the_weak_link_more_band() -> None:
    bits = np.full(2, 1e5)
    split = minmax_split(bits, bits, np.zeros(2), np.array([1e8, 1e10]), np.array([1e8, 1e10]), 1e6,
                         np.ones(2, dtype=bool))

    assert split[0] > split[1]
    t = [_device_time(split[k], 1e5, 1e5, 0.0, [1e8, 1e10][k], [1e8, 1e10][k]) for k in range(2)]
    assert abs(t[0] - t[1]) <= 1e-9 * t[0]


@pytest.mark.parametrize("downlink", BOTH)
def test_bisection_fallback_agrees_with_newton(downlink: DownlinkPower) -> None:
    state = random_state(seed=21, num_tokens=64, top_k=2, num_experts=6, num_devices=6, downlink=downlink)
    costs = device_costs(state, np.ones(state.topk_index.shape, dtype=bool))
    link, ln2 = state.link, math.log(2.0)
    args = (costs.bits_dl[costs.active] * ln2, costs.bits_ul[costs.active] * ln2, costs.compute_s[costs.active],
            link.snr_dl_per_hz[costs.active], link.snr_ul_per_hz[costs.active], state.bandwidth_hz)

    newton = _newton(*args, rtol=1e-10, max_iter=60, dl_pool=link.dl_psd_pool_hz)
    bisection = _bisection(*args, dl_pool=link.dl_psd_pool_hz)

    assert newton is not None and int(costs.active.sum()) >= 3
    np.testing.assert_allclose(bisection, newton, rtol=1e-7)


def _bisection_reference(bits_dl: np.ndarray, bits_ul: np.ndarray, compute_s: np.ndarray, snr_dl: np.ndarray,
                         snr_ul: np.ndarray, budget: float, pool: float) -> float:
    """min T s.t. sum_k b_k(T) <= B by plain bisection on T, each b_k(T) by bisection on b (written from scratch,
    vectorized over devices with numpy's own log1p)."""
    ln2 = math.log(2.0)

    def times(b: np.ndarray) -> np.ndarray:
        dl_snr = snr_dl / pool if pool > 0.0 else snr_dl / b
        return bits_dl * ln2 / (b * np.log1p(dl_snr)) + bits_ul * ln2 / (b * np.log1p(snr_ul / b)) + compute_s

    def shares(target: float) -> np.ndarray:
        lo, hi = np.full(bits_dl.shape, budget * 1e-12), np.full(bits_dl.shape, budget)
        for _ in range(100):
            mid = np.sqrt(lo * hi)
            fast = times(mid) <= target
            lo, hi = np.where(fast, lo, mid), np.where(fast, mid, hi)
        return np.where(times(hi) <= target, hi, np.inf)

    t_lo, t_hi = float(compute_s.max()), float(times(np.full(bits_dl.shape, budget / bits_dl.shape[0])).max())
    for _ in range(100):
        mid = 0.5 * (t_lo + t_hi)
        if shares(mid).sum() <= budget:
            t_hi = mid
        else:
            t_lo = mid
    return t_hi


@pytest.mark.parametrize("downlink", BOTH)
def test_minmax_is_the_optimum_on_500_random_instances(downlink: DownlinkPower) -> None:
    """The split equalises the active devices' times on the whole budget, which is optimal (each t_k strictly
    decreases in b_k: any other split slows some device); its T matches an independent bisection on T."""
    worst_gap = worst_reference = 0.0
    for seed in range(500):
        num_devices = 2 + seed % 11
        state = random_state(seed, 1 + seed % 17, top_k=2, num_experts=num_devices, num_devices=num_devices,
                             downlink=downlink)
        costs = device_costs(state, np.ones(state.topk_index.shape, dtype=bool))
        link, active = state.link, costs.active
        pool = link.dl_psd_pool_hz
        b = minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s, link.snr_dl_per_hz, link.snr_ul_per_hz,
                         state.bandwidth_hz, active, dl_pool_hz=pool)

        t = [_device_time(b[k], costs.bits_dl[k], costs.bits_ul[k], costs.compute_s[k], link.snr_dl_per_hz[k],
                          link.snr_ul_per_hz[k], pool) for k in np.flatnonzero(active)]
        assert abs(b.sum() - state.bandwidth_hz) <= 1e-12 * state.bandwidth_hz
        worst_gap = max(worst_gap, max(t) / min(t) - 1.0)
        if seed % 10 == 0:
            reference = _bisection_reference(costs.bits_dl[active], costs.bits_ul[active], costs.compute_s[active],
                                             link.snr_dl_per_hz[active], link.snr_ul_per_hz[active],
                                             state.bandwidth_hz, pool)
            worst_reference = max(worst_reference, abs(max(t) - reference) / reference)
    assert worst_gap <= 1e-9
    assert worst_reference <= 1e-9
