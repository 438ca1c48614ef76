"""JointSelectionBandwidth: a decision never worse than the top-k, two exact searches that agree, the guard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.states import layer_states, random_state
from wdmoe.policy import JointSelectionBandwidth, MinMaxBandwidth
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.joint_block import solve_block

FORMS = [JointSelectionBandwidth(), JointSelectionBandwidth(form="lagrangian", lam=500.0),
         JointSelectionBandwidth(rho=0.2, tol=0.0)]


@pytest.mark.parametrize("policy", FORMS, ids=["ratio", "lagrangian", "ratio-rho0.2"])
@settings(max_examples=40, deadline=None)
@given(state=layer_states(max_tokens=48))
def test_metric_never_decreases_and_matches_the_decision(policy: JointSelectionBandwidth,
                                                         state: LayerState) -> None:
    solution = policy.solve(state)
    history = np.array(solution.metric_history)

    assert np.all(np.diff(history) >= 0.0)
    breakdown = layer_breakdown(state, solution.decision)
    np.testing.assert_allclose(solution.layer_s, breakdown.layer_s, rtol=1e-12)
    kept_weight = float(state.topk_weight[solution.decision.keep].sum())
    final = kept_weight / breakdown.layer_s if policy.form == "ratio" else kept_weight - policy.lam * \
        breakdown.layer_s
    np.testing.assert_allclose(history[-1], final, rtol=1e-9)
    topk = layer_breakdown(state, MinMaxBandwidth().decide(state)).layer_s
    np.testing.assert_allclose(history[0], policy._metric(float(state.topk_weight.sum()), topk), rtol=1e-9)


@pytest.mark.parametrize("policy", FORMS, ids=["ratio", "lagrangian", "ratio-rho0.2"])
@settings(max_examples=60, deadline=None)
@given(state=layer_states(max_tokens=1))
def test_decode_search_equals_the_block_search_on_one_token(policy: JointSelectionBandwidth,
                                                            state: LayerState) -> None:
    """Two exact searches, written apart (per device count on floats; per mask on the radio model's arrays), reach
    the same metric on one token."""
    fast = policy.solve(state)
    block = solve_block(policy, state, policy.exact_masks, lambda keep, kept: policy._evaluate(state, keep, kept))
    assert block is not None
    kept = float(state.topk_weight[block.keep].sum())
    block_metric = policy._metric(kept, layer_breakdown(state, Decision(block.keep, state.topk_weight,
                                                                        MinMaxBandwidth().allocate(state, block.keep)
                                                                        )).layer_s)

    np.testing.assert_allclose(fast.metric_history[-1], block_metric, rtol=1e-9)
    assert fast.decision.optimality_gap == 0.0


@settings(max_examples=30, deadline=None)
@given(state=layer_states(), rho=st.floats(0.0, 1.0))
def test_guard_keeps_rho_of_each_tokens_weight(state: LayerState, rho: float) -> None:
    keep = JointSelectionBandwidth(rho=rho, form="lagrangian", lam=1e4).decide(state).keep

    kept = np.where(keep, state.topk_weight, 0.0).sum(axis=1)
    assert np.all(kept >= rho * state.topk_weight.sum(axis=1) * (1 - 1e-12))


def test_lagrangian_without_latency_price_keeps_everything() -> None:
    state = random_state(seed=7, num_tokens=128, top_k=2)

    solution = JointSelectionBandwidth(form="lagrangian", lam=0.0).solve(state)

    assert solution.decision.keep.all()
    assert solution.metric_history == (float(state.topk_weight.sum()),)


def test_ratio_form_drops_pairs_when_that_shortens_the_layer() -> None:
    state = random_state(seed=1, num_tokens=256, top_k=2, num_experts=8, num_devices=8)
    solution = JointSelectionBandwidth().solve(state)

    assert len(solution.metric_history) >= 2
    assert solution.metric_history[-1] > solution.metric_history[0] * 1.01
    assert solution.decision.keep.sum() < solution.decision.keep.size
    assert solution.layer_s < layer_breakdown(state, MinMaxBandwidth().decide(state)).layer_s
