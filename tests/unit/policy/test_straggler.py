"""Straggler-drop (our [R] reading of CAEE's secondary description [S]): hand-computed cases and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.hand_states import FAST_SNR, SLOW_SNR, hand_state
from tests.unit.policy.states import layer_states
from wdmoe.policy import EqualBandwidth, MinMaxBandwidth, TopK
from wdmoe.policy.base import LayerState
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.straggler import StragglerDrop

# token 0: expert 0 (slow device 0, 0.3) and expert 1 (0.7); token 1: expert 0 (0.45) and expert 2 (0.55)
INDEX = [[0, 1], [0, 2]]
WEIGHT = [[0.3, 0.7], [0.45, 0.55]]
SNR = [SLOW_SNR, FAST_SNR, FAST_SNR]


def test_the_slow_devices_light_pairs_go_while_each_token_keeps_its_share() -> None:
    state = hand_state(INDEX, WEIGHT, SNR)

    at_06 = StragglerDrop(0.6).decide(state)  # token 0 keeps 0.7 >= 0.6; token 1 would keep 0.55 < 0.6
    at_05 = StragglerDrop(0.5).decide(state)  # both go; then device 1 is the straggler, its pair is token 0's last

    np.testing.assert_array_equal(at_06.keep, [[False, True], [True, True]])
    np.testing.assert_allclose(at_06.weight, [[0.0, 1.0], [0.45, 0.55]], rtol=1e-15)
    np.testing.assert_array_equal(at_05.keep, [[False, True], [False, True]])
    np.testing.assert_allclose(at_05.weight, [[0.0, 1.0], [0.0, 1.0]], rtol=1e-15)


def test_pairs_off_the_straggler_stay() -> None:
    state = hand_state([[1, 0]], [[0.1, 0.9]], SNR)  # the light expert sits on a fast device

    decision = StragglerDrop(0.05).decide(state)

    np.testing.assert_array_equal(decision.keep, [[True, False]])  # the heavy one on the slow device goes


@settings(max_examples=60, deadline=None)
@given(state=layer_states())
def test_threshold_one_is_exactly_topk(state: LayerState) -> None:
    for bandwidth in (EqualBandwidth(), MinMaxBandwidth()):
        mine = StragglerDrop(1.0, bandwidth=bandwidth).decide(state)
        topk = TopK(bandwidth=bandwidth).decide(state)

        np.testing.assert_array_equal(mine.keep, topk.keep)
        np.testing.assert_array_equal(mine.weight, topk.weight)
        np.testing.assert_array_equal(mine.bandwidth_hz, topk.bandwidth_hz)


@settings(max_examples=60, deadline=None)
@given(state=layer_states(), threshold=st.floats(0.0, 1.0))
def test_never_slower_than_topk_and_every_token_keeps_its_share(state: LayerState, threshold: float) -> None:
    for bandwidth in (EqualBandwidth(), MinMaxBandwidth()):
        decision = StragglerDrop(threshold, bandwidth=bandwidth).decide(state)
        topk = TopK(bandwidth=bandwidth).decide(state)

        assert layer_breakdown(state, decision).layer_s <= layer_breakdown(state, topk).layer_s * (1 + 1e-9)
        kept = np.where(decision.keep, state.topk_weight, 0.0).sum(axis=1)
        assert np.all(kept >= threshold * state.topk_weight.sum(axis=1) * (1 - 1e-12))


@settings(max_examples=60, deadline=None)
@given(state=layer_states(), low=st.floats(0.0, 1.0), high=st.floats(0.0, 1.0))
def test_one_round_only_touches_the_topk_straggler_and_a_lower_threshold_drops_more(
        state: LayerState, low: float, high: float) -> None:
    low, high = min(low, high), max(low, high)
    times = layer_breakdown(state, TopK().decide(state)).total_s
    straggler = int(np.argmax(times))

    loose = StragglerDrop(low, max_rounds=1).decide(state).keep
    tight = StragglerDrop(high, max_rounds=1).decide(state).keep

    assert np.all(loose | (state.expert_device[state.topk_index] == straggler))  # dropped only on the straggler
    assert np.all(tight | ~loose)  # loose kept implies tight kept


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        StragglerDrop(-0.1)
    with pytest.raises(ValueError, match="max_rounds"):
        StragglerDrop(0.5, max_rounds=-1)
