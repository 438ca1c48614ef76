"""JointSelectionBandwidth: a metric that never falls, the decode fast path, and the guard."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.states import layer_states, random_state
from wdmoe.policy import JointSelectionBandwidth, MinMaxBandwidth
from wdmoe.policy.base import LayerState
from wdmoe.policy.evaluate import layer_breakdown

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
def test_decode_fast_path_equals_the_vectorized_rounds(policy: JointSelectionBandwidth,
                                                       state: LayerState) -> None:
    fast = policy.solve(state)
    batch = policy._solve_batch(state)

    np.testing.assert_array_equal(fast.decision.keep, batch.decision.keep)
    np.testing.assert_allclose(fast.decision.weight, batch.decision.weight, rtol=1e-12)
    np.testing.assert_allclose(fast.decision.bandwidth_hz, batch.decision.bandwidth_hz, rtol=1e-8, atol=1e-6)
    np.testing.assert_allclose(fast.metric_history, batch.metric_history, rtol=1e-8)


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
