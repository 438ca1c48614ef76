"""Degenerate links (an SNR of 0, no band) give infinite times or a clear error, never a crash (issue 15 item 4):
the solvers by hand, every policy on states with a dead link or no band, under both downlink power models."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tests.unit.policy.states import random_state
from wdmoe.policy import split_arrays
from wdmoe.policy.bandwidth import minmax_split, pair_split
from wdmoe.policy.base import LayerState
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.factory import POLICY_NAMES, make_policy
from wdmoe.policy.selection import device_costs, one_token_steps
from wdmoe.radio.link import DownlinkPower
from wdmoe.radio.rate import scalar_time

POOLS = [0.0, 1e7]  # the BS's full power per downlink; a constant spectral density over 10 MHz
LIVE = (1e3, 1e3, 1e3, 1e3, 0.0, 0.0, 1e9, 1e9, 1e9, 1e9)  # pair_split's a0 a1 c0 c1 base0 base1 d0 d1 u0 u1


@pytest.mark.parametrize("pool", POOLS)
def test_pair_split_gives_a_dead_link_no_band_and_the_live_device_all(pool: float) -> None:
    dead_ul0 = (*LIVE[:8], 0.0, LIVE[9])
    dead_dl1 = (*LIVE[:7], 0.0, *LIVE[8:])
    both = (*LIVE[:6], 0.0, 0.0, *LIVE[8:])

    assert pair_split(*dead_ul0, 1e7, dl_pool=pool) == (0.0, 1e7)
    assert pair_split(*dead_dl1, 1e7, dl_pool=pool) == (1e7, 0.0)
    assert pair_split(*both, 1e7, dl_pool=pool) == (5e6, 5e6)  # nothing finishes: any split, the equal one
    assert pair_split(*LIVE, 0.0, dl_pool=pool) == (0.0, 0.0)
    with pytest.raises(ValueError, match=r"budget is -1.0 Hz"):
        pair_split(*LIVE, -1.0, dl_pool=pool)
    # the array form leaves degenerate problems to the scalar one (nan) and solves the others as before
    rows = [dead_ul0, LIVE, both]
    args = [np.array(column) for column in zip(*rows, strict=True)]
    split = split_arrays.pair_split(*args, np.array([1e7, 1e7, 1e7]), dl_pool=pool)
    assert np.isnan(split.b0[[0, 2]]).all()
    assert (split.b0[1], split.b1[1]) == pair_split(*LIVE, 1e7, dl_pool=pool)


@pytest.mark.parametrize("pool", POOLS)
def test_solver_time_of_a_degenerate_link_is_infinite(pool: float) -> None:
    assert scalar_time(0.0, 1.0, 1.0, 0.5, 1e9, 1e9, pool) == (math.inf, math.inf)  # no band
    assert scalar_time(1e6, 1.0, 1.0, 0.5, 1e9, 0.0, pool) == (math.inf, math.inf)  # dead uplink
    assert scalar_time(1e6, 1.0, 1.0, 0.5, 0.0, 1e9, pool) == (math.inf, math.inf)  # dead downlink
    t, inverse = scalar_time(1e6, 0.0, 1.0, 0.5, 0.0, 1e9, pool)  # no bits down a dead downlink: only the UL
    assert t == pytest.approx(0.5 + 1.0 / (1e6 * math.log1p(1e3)), rel=1e-14) and 0.0 < inverse < math.inf


@pytest.mark.parametrize("pool", POOLS)
def test_minmax_split_with_dead_links_and_no_band(pool: float) -> None:
    bits, compute, snr = np.full(3, 1e4), np.zeros(3), np.full(3, 1e9)
    active = np.ones(3, dtype=bool)
    dead_ul = np.array([0.0, 1e9, 1e9])

    split = minmax_split(bits, bits, compute, snr, dead_ul, 1e7, active, dl_pool_hz=pool)
    live = minmax_split(bits[1:], bits[1:], compute[1:], snr[1:], snr[1:], 1e7, active[1:], dl_pool_hz=pool)
    np.testing.assert_array_equal(split, [0.0, *live])  # the live devices split the band as if alone
    np.testing.assert_array_equal(minmax_split(bits, bits, compute, snr, np.zeros(3), 9e6, active,
                                               dl_pool_hz=pool), [3e6, 3e6, 3e6])
    np.testing.assert_array_equal(minmax_split(bits, bits, compute, snr, snr, 0.0, active, dl_pool_hz=pool),
                                  [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"device 1 has snr_ul_per_hz = nan Hz"):
        minmax_split(bits, bits, compute, snr, np.array([1e9, np.nan, 1e9]), 1e7, active, dl_pool_hz=pool)
    with pytest.raises(ValueError, match=r"budget is inf Hz"):
        minmax_split(bits, bits, compute, snr, snr, math.inf, active, dl_pool_hz=pool)


def _degenerate_states(case: str, tokens: int, downlink: DownlinkPower) -> list[LayerState]:
    states = []
    for seed in range(6):
        state = random_state(seed, tokens, top_k=2, num_experts=4, num_devices=4, downlink=downlink)
        link = dataclasses.replace(state.link, dl_psd_pool_hz=1e7 if downlink is DownlinkPower.SHARED_PSD else 0.0)
        dl, ul = link.snr_dl_per_hz.copy(), link.snr_ul_per_hz.copy()
        if case == "dead uplink":
            ul[0] = 0.0
        elif case == "dead downlink":
            dl[1] = 0.0
        elif case == "every link dead":
            ul[:] = 0.0
        band = 0.0 if case == "no band" else state.bandwidth_hz
        states.append(dataclasses.replace(state, link=dataclasses.replace(link, snr_dl_per_hz=dl, snr_ul_per_hz=ul),
                                          bandwidth_hz=band))
    return states


CASES = ["dead uplink", "dead downlink", "every link dead", "no band"]


@pytest.mark.parametrize("downlink", [DownlinkPower.FULL_PER_DEVICE, DownlinkPower.SHARED_PSD])
@pytest.mark.parametrize(("name", "case"), [(n, c) for n in POLICY_NAMES for c in CASES])
def test_every_policy_decides_on_degenerate_links_and_the_layer_never_ends(name: str, case: str,
                                                                          downlink: DownlinkPower) -> None:
    """A layer whose kept pairs use a dead link, or no band, takes infinitely long; one that avoids them does not."""
    policy = make_policy(name, theta=0.5)
    for tokens in (1, 5):
        states = _degenerate_states(case, tokens, downlink)
        with np.errstate(all="ignore"):
            for state in states:
                decision = policy.decide(state)
                costs = device_costs(state, decision.keep)
                link = state.link
                dead = costs.active & ((link.snr_dl_per_hz <= 0.0) | (link.snr_ul_per_hz <= 0.0)
                                       | (decision.bandwidth_hz <= 0.0))
                layer_s = layer_breakdown(state, decision).layer_s
                assert np.all(decision.bandwidth_hz >= 0.0)
                assert decision.bandwidth_hz.sum() <= state.bandwidth_hz * (1 + 1e-12)
                assert decision.keep.any(axis=1).all()
                assert math.isinf(layer_s) == bool(dead.any()), (decision, layer_s)
            if tokens == 1:
                batch = policy.decide_steps(one_token_steps(states))
                assert batch is None or batch.keep.shape == (len(states), 2)
