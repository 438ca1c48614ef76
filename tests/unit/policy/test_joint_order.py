"""The joint policy's two-device split sees its devices in device-id order, whatever the order of the slots."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.unit.policy.states import random_state
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.base import LayerState
from wdmoe.policy.selection import one_token_steps


def two_device_states(count: int) -> list[LayerState]:
    states: list[LayerState] = []
    seed = 0
    while len(states) < count:
        state = random_state(seed, 1, 2, num_experts=6, num_devices=4)
        seed += 1
        if len(set(state.expert_device[state.topk_index[0]].tolist())) == 2:
            states.append(state)
    return states


def swapped(state: LayerState) -> LayerState:
    return dataclasses.replace(state, topk_index=state.topk_index[:, ::-1].copy(),
                               topk_weight=state.topk_weight[:, ::-1].copy())


@pytest.mark.parametrize("rho", [1.0, 0.5])
def test_pair_split_is_the_same_in_either_slot_order(rho: float) -> None:
    """rho = 1 keeps the top-k, so the decision is its min-max split: bit for bit the same for swapped slots,
    per state and batched (one memoised problem for both orders)."""
    policy = JointSelectionBandwidth(rho=rho)
    states = two_device_states(40)
    for state in states:
        a, b = policy.decide(state), policy.decide(swapped(state))
        if rho == 1.0:
            np.testing.assert_array_equal(a.bandwidth_hz, b.bandwidth_hz)
        np.testing.assert_array_equal(a.keep[0], b.keep[0][::-1])
    both = states + [swapped(s) for s in states]
    batch = policy.decide_steps(one_token_steps(both))
    assert batch is not None and not batch.fallback.any()
    for i, state in enumerate(both):
        reference = policy.decide(state)
        np.testing.assert_array_equal(batch.keep[i], reference.keep[0])
        np.testing.assert_array_equal(batch.weight[i], reference.weight[0])
        np.testing.assert_array_equal(batch.bandwidth_hz[i], reference.bandwidth_hz)
