"""Properties every policy keeps: a token never loses all its experts, weights keep their scale, the band is used."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from tests.unit.policy.states import layer_states, random_state
from wdmoe.policy import (
    EqualBandwidth,
    FastestDevices,
    JointSelectionBandwidth,
    MinMaxBandwidth,
    RandomDrop,
    TopK,
    WLRThreshold,
)
from wdmoe.policy.base import LayerState, Policy
from wdmoe.policy.energy import EnergyMinJoint
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.straggler import StragglerDrop
from wdmoe.policy.wlr import pair_latency_s
from wdmoe.policy.wlr_cumulative import CumulativeWLR

POLICIES: list[Policy] = [
    TopK(), TopK(bandwidth=MinMaxBandwidth()), EqualBandwidth(), MinMaxBandwidth(),
    WLRThreshold(0.5), WLRThreshold(0.3, normalize="sum"), WLRThreshold(1.0, bandwidth=MinMaxBandwidth()),
    JointSelectionBandwidth(), JointSelectionBandwidth(form="lagrangian", lam=200.0, rho=0.3),
    FastestDevices(), RandomDrop(0.7, seed=3), RandomDrop(1.0, seed=4),
    CumulativeWLR(0.7), StragglerDrop(0.6), StragglerDrop(0.3, bandwidth=MinMaxBandwidth()), EnergyMinJoint(rho=0.5),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.name}-{p!r}"[:40])
@settings(max_examples=40, deadline=None)
@given(state=layer_states())
def test_every_token_keeps_an_expert_and_its_weight_total(policy: Policy, state: LayerState) -> None:
    decision = policy.decide(state)

    assert decision.keep.shape == state.topk_index.shape
    assert decision.keep.any(axis=1).all()
    assert np.all(decision.weight[~decision.keep] == 0.0)
    np.testing.assert_allclose(decision.weight.sum(axis=1), state.topk_weight.sum(axis=1), rtol=1e-12)
    active = layer_breakdown(state, decision).active
    np.testing.assert_allclose(decision.bandwidth_hz[active].sum(), state.bandwidth_hz, rtol=1e-9)
    assert np.all(decision.bandwidth_hz[~active] == 0.0)


@settings(max_examples=50, deadline=None)
@given(state=layer_states())
def test_wlr_theta_zero_is_exactly_topk(state: LayerState) -> None:
    for normalize in ("max", "sum"):
        wlr = WLRThreshold(0.0, normalize=normalize).decide(state)
        topk = TopK().decide(state)

        np.testing.assert_array_equal(wlr.keep, topk.keep)
        np.testing.assert_array_equal(wlr.weight, topk.weight)
        np.testing.assert_array_equal(wlr.bandwidth_hz, topk.bandwidth_hz)


@settings(max_examples=50, deadline=None)
@given(state=layer_states())
def test_wlr_theta_one_keeps_the_single_best_ratio(state: LayerState) -> None:
    ratio = state.topk_weight / pair_latency_s(state, EqualBandwidth())  # (T, k)
    best = np.argmax(ratio, axis=1)
    for normalize in ("max", "sum"):
        keep = WLRThreshold(1.0, normalize=normalize).decide(state).keep

        np.testing.assert_array_equal(keep.sum(axis=1), np.ones(state.num_tokens))
        np.testing.assert_array_equal(np.argmax(keep, axis=1), best)


def test_wlr_half_drops_slow_low_weight_expert() -> None:
    state = random_state(seed=11, num_tokens=64, top_k=2)

    kept = WLRThreshold(0.5).decide(state).keep.sum()

    assert state.num_tokens < kept < 2 * state.num_tokens  # some tokens keep 1, some keep 2


def test_fastest_keeps_one_expert_on_the_quickest_device() -> None:
    state = random_state(seed=5, num_tokens=32, top_k=3, num_experts=6, num_devices=6)
    latency = pair_latency_s(state, EqualBandwidth())

    keep = FastestDevices().decide(state).keep

    np.testing.assert_array_equal(keep.sum(axis=1), np.ones(32))
    np.testing.assert_array_equal(latency[keep], latency.min(axis=1))


def test_random_drop_replays_for_a_seed_and_differs_across_seeds() -> None:
    state = random_state(seed=2, num_tokens=256, top_k=2)
    first = [RandomDrop(0.5, seed=9).decide(state).keep for _ in range(1)]
    again, other = RandomDrop(0.5, seed=9), RandomDrop(0.5, seed=10)

    np.testing.assert_array_equal(again.decide(state).keep, first[0])
    assert not np.array_equal(other.decide(state).keep, first[0])
    fraction_dropped = 1.0 - first[0].mean()
    assert 0.3 < fraction_dropped < 0.6  # p = 0.5, minus the tokens saved from losing both


def test_random_drop_all_keeps_the_heaviest_expert() -> None:
    state = random_state(seed=3, num_tokens=16, top_k=2)

    keep = RandomDrop(1.0, seed=0).decide(state).keep

    np.testing.assert_array_equal(np.argmax(keep, axis=1), np.argmax(state.topk_weight, axis=1))
    np.testing.assert_array_equal(keep.sum(axis=1), np.ones(16))


def test_policies_have_names_and_reject_bad_settings() -> None:
    assert [p.name for p in (TopK(), WLRThreshold(0.5), JointSelectionBandwidth(), FastestDevices())] == [
        "topk", "wlr", "joint", "fastest"]
    with pytest.raises(ValueError, match="theta"):
        WLRThreshold(1.5)
    with pytest.raises(ValueError, match="normalize"):
        WLRThreshold(0.5, normalize="mean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rho"):
        JointSelectionBandwidth(rho=2.0)
    with pytest.raises(ValueError, match="p = "):
        RandomDrop(-0.1)
