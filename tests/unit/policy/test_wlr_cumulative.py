"""Cumulative-gate WLR (our [R] reading of a secondary description [S]): hand-computed cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.hand_states import FAST_SNR, SLOW_SNR, hand_state
from tests.unit.policy.states import layer_states, random_state
from wdmoe.policy import EqualBandwidth, MinMaxBandwidth, TopK
from wdmoe.policy.base import LayerState
from wdmoe.policy.selection import one_token_steps
from wdmoe.policy.wlr import pair_latency_s
from wdmoe.policy.wlr_cumulative import CumulativeWLR, cumulative_keep


def test_equal_devices_keep_the_heaviest_until_the_mass_is_reached() -> None:
    state = hand_state([[0, 1, 2]], [[0.5, 0.3, 0.2]], [FAST_SNR] * 3)  # equal times: WLR order = weight order

    at_06 = CumulativeWLR(0.6).decide(state)  # 0.5 kept (0 < 0.6), 0.3 kept (0.5 < 0.6), 0.2 not (0.8)
    at_05 = CumulativeWLR(0.5).decide(state)  # 0.3 not: 0.5 already reaches 0.5

    np.testing.assert_array_equal(at_06.keep, [[True, True, False]])
    np.testing.assert_allclose(at_06.weight, [[0.625, 0.375, 0.0]], rtol=1e-15)
    np.testing.assert_array_equal(at_05.keep, [[True, False, False]])
    np.testing.assert_allclose(at_05.weight, [[1.0, 0.0, 0.0]], rtol=1e-15)


def test_a_slow_device_puts_its_heavy_expert_last() -> None:
    state = hand_state([[0, 1, 2]], [[0.5, 0.3, 0.2]], [SLOW_SNR, FAST_SNR, FAST_SNR])
    latency = pair_latency_s(state, EqualBandwidth())[0]
    assert 0.5 / latency[0] < 0.2 / latency[2]  # the WLR order is 1, 2, 0

    np.testing.assert_array_equal(CumulativeWLR(0.5).decide(state).keep, [[False, True, True]])  # 0.3, then 0.2
    np.testing.assert_array_equal(CumulativeWLR(0.51).decide(state).keep, [[True, True, True]])
    np.testing.assert_array_equal(CumulativeWLR(0.3).decide(state).keep, [[False, True, False]])


def test_cumulative_keep_breaks_ties_in_router_order() -> None:
    weight = np.array([[0.25, 0.25, 0.5]])

    keep = cumulative_keep(weight, np.array([[1.0, 1.0, 1.0]]), 0.2)

    np.testing.assert_array_equal(keep, [[True, False, False]])


@settings(max_examples=60, deadline=None)
@given(state=layer_states())
def test_threshold_one_is_exactly_topk(state: LayerState) -> None:
    for bandwidth in (EqualBandwidth(), MinMaxBandwidth()):
        mine = CumulativeWLR(1.0, bandwidth=bandwidth).decide(state)
        topk = TopK(bandwidth=bandwidth).decide(state)

        np.testing.assert_array_equal(mine.keep, topk.keep)
        np.testing.assert_array_equal(mine.weight, topk.weight)
        np.testing.assert_array_equal(mine.bandwidth_hz, topk.bandwidth_hz)


@settings(max_examples=60, deadline=None)
@given(state=layer_states(), low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_a_higher_threshold_keeps_a_superset(state: LayerState, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)

    small = CumulativeWLR(low).decide(state).keep
    large = CumulativeWLR(high).decide(state).keep

    assert np.all(large | ~small)  # small implies large


@settings(max_examples=60, deadline=None)
@given(state=layer_states())
def test_threshold_zero_keeps_the_single_best_ratio(state: LayerState) -> None:
    ratio = state.topk_weight / pair_latency_s(state, EqualBandwidth())

    keep = CumulativeWLR(0.0).decide(state).keep

    np.testing.assert_array_equal(keep.sum(axis=1), np.ones(state.num_tokens))
    np.testing.assert_array_equal(np.argmax(keep, axis=1), np.argmax(ratio, axis=1))


@pytest.mark.parametrize("threshold", [0.0, 0.6, 0.8, 0.95, 1.0])
@pytest.mark.parametrize(("top_k", "num_devices"), [(1, 3), (2, 8), (3, 2), (4, 8)])
def test_the_batched_form_equals_decide(threshold: float, top_k: int, num_devices: int) -> None:
    states = [random_state(seed=s, num_tokens=1, top_k=top_k, num_devices=num_devices) for s in range(40)]
    policy = CumulativeWLR(threshold)

    batch = policy.decide_steps(one_token_steps(states))

    assert batch is not None
    for i, state in enumerate(states):
        one = policy.decide(state)
        np.testing.assert_array_equal(batch.keep[i], one.keep[0])
        np.testing.assert_array_equal(batch.weight[i], one.weight[0])
        np.testing.assert_allclose(batch.bandwidth_hz[i], one.bandwidth_hz, rtol=1e-15)


def test_bad_threshold_and_other_allocators_decline_the_batch() -> None:
    with pytest.raises(ValueError, match="threshold"):
        CumulativeWLR(1.5)
    steps = one_token_steps([random_state(seed=1, num_tokens=1)])
    assert CumulativeWLR(0.5, bandwidth=MinMaxBandwidth()).decide_steps(steps) is None
