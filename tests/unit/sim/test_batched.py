"""The batched decode path decides and models exactly what the per-state policies and radio.latency do."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.states import random_state
from wdmoe.config import Scenario
from wdmoe.policy import (
    EqualBandwidth,
    FastestDevices,
    JointSelectionBandwidth,
    MinMaxBandwidth,
    RandomDrop,
    TopK,
    WLRThreshold,
)
from wdmoe.policy.base import Decision, LayerState, Policy
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.prune import GateThreshold
from wdmoe.policy.selection import one_token_steps, profiles_of, renormalize
from wdmoe.radio.channel import redraw_fading, sample_links
from wdmoe.radio.one_token import one_token_latency
from wdmoe.sim.blocks import draw_blocks
from wdmoe.sim.simulate import one_token_load, replay
from wdmoe.sim.synthesize import synthesize_trace

POLICIES: list[Policy] = [TopK(), WLRThreshold(0.0), WLRThreshold(0.4), WLRThreshold(1.0),
                          WLRThreshold(0.3, normalize="sum"), JointSelectionBandwidth(),
                          JointSelectionBandwidth(form="lagrangian", lam=300.0, rho=0.2)]


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), top_k=st.integers(1, 4), num_devices=st.integers(1, 8),
       scale=st.sampled_from([1.0, 2.5]))
def test_batched_decisions_equal_per_state_decisions(seed: int, top_k: int, num_devices: int, scale: float) -> None:
    states = [random_state(seed + i, 1, top_k, num_experts=top_k + 4, num_devices=num_devices, weight_scale=scale)
              for i in range(16)]
    steps = one_token_steps(states)
    for policy in POLICIES:
        batch = policy.decide_steps(steps)
        assert batch is not None
        for i, state in enumerate(states):
            if batch.fallback[i]:
                continue
            reference = policy.decide(state)
            np.testing.assert_array_equal(batch.keep[i], reference.keep[0])
            np.testing.assert_array_equal(batch.weight[i], reference.weight[0])
            np.testing.assert_allclose(batch.bandwidth_hz[i], reference.bandwidth_hz, rtol=1e-9,
                                       atol=1e-9 * state.bandwidth_hz)


def test_joint_falls_back_only_for_three_devices() -> None:
    states = [random_state(i, 1, 3, num_experts=9, num_devices=8) for i in range(200)]
    devices = np.array([len(set(s.expert_device[s.topk_index[0]].tolist())) for s in states])

    batch = JointSelectionBandwidth().decide_steps(one_token_steps(states))

    assert batch is not None
    np.testing.assert_array_equal(batch.fallback, devices >= 3)
    assert (devices <= 2).any() and (devices >= 3).any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), top_k=st.integers(1, 3), num_devices=st.integers(1, 8))
def test_one_token_latency_equals_radio_latency(seed: int, top_k: int, num_devices: int) -> None:
    states = [random_state(seed + i, 1, top_k, num_experts=top_k + 3, num_devices=num_devices) for i in range(16)]
    steps = one_token_steps(states)
    batch = JointSelectionBandwidth().decide_steps(steps)
    assert batch is not None
    tx = np.stack([profiles_of(s).tx_power_w for s in states])
    compute = np.stack([profiles_of(s).compute_power_w for s in states])

    latency = one_token_latency(one_token_load(steps, batch), tx, compute, bs_tx_power_w=20.0)

    for i, state in enumerate(states):
        if batch.fallback[i]:
            continue
        decision = JointSelectionBandwidth().decide(state)
        reference = layer_breakdown(state, decision, bs_tx_power_w=20.0)
        assert latency.layer_s[i] == pytest.approx(reference.layer_s, rel=1e-12)
        assert latency.energy_j[i] == pytest.approx(reference.energy_j, rel=1e-12)
        assert latency.bits_dl[i] == reference.bits_dl.sum() and latency.bits_ul[i] == reference.bits_ul.sum()
        assert decision.keep.sum() == batch.keep[i].sum()


class FirstExpertWLR(WLRThreshold):
    """A subclass that decides otherwise (keeps each token's first routed expert): its parent's batched form does
    not apply to it."""

    def decide(self, state: LayerState) -> Decision:
        keep = np.zeros(state.topk_index.shape, dtype=bool)
        keep[:, 0] = True
        weight = state.topk_weight.astype(float)
        return Decision(keep, renormalize(weight, keep), self.bandwidth.allocate(state, keep))


def test_only_policies_with_a_batched_form_decide_steps() -> None:
    states = [random_state(i, 1, 2, num_experts=6, num_devices=4) for i in range(8)]
    steps = one_token_steps(states)

    assert all(p.decide_steps(steps) is not None for p in POLICIES)
    declined = (FastestDevices(), RandomDrop(0.3), GateThreshold(0.2), TopK(bandwidth=MinMaxBandwidth()),
                WLRThreshold(0.5, bandwidth=MinMaxBandwidth()), EqualBandwidth(), MinMaxBandwidth(),
                FirstExpertWLR(0.5))
    assert all(p.decide_steps(steps) is None for p in declined)


def test_only_the_random_baseline_depends_on_the_call_order() -> None:
    others = (*POLICIES, FastestDevices(), GateThreshold(0.2), EqualBandwidth(), MinMaxBandwidth())

    assert not RandomDrop(0.3).order_independent
    assert all(p.order_independent for p in others)


@pytest.mark.parametrize("policy", [FirstExpertWLR(0.5), RandomDrop(0.4, seed=3)], ids=["subclass", "random"])
def test_a_policy_without_a_batched_form_replays_as_in_exact_mode(policy: Policy) -> None:
    trace = synthesize_trace(np.random.default_rng(2), 3, 6, 2, 3, 4, 6, num_devices=4)
    scenario = Scenario.default(4)
    twin = FirstExpertWLR(0.5) if isinstance(policy, FirstExpertWLR) else RandomDrop(0.4, seed=3)

    batched, exact = replay(trace, scenario, policy, seed=5), replay(trace, scenario, twin, seed=5, batched=False)

    for name in ("layer_s", "energy_j", "bits_dl", "bits_ul", "kept"):
        np.testing.assert_array_equal(getattr(batched, name), getattr(exact, name))
    assert (batched.kept < batched.routed).any()  # the subclass's and the baseline's own decisions, not the top-k


@pytest.mark.parametrize("fading", [{"model": "rayleigh"}, {"model": "rician"},
                                    {"model": "rayleigh", "reciprocal": True}, {"model": "none"}])
def test_blocks_drawn_at_once_equal_the_runtimes_redraws(fading: dict[str, object]) -> None:
    scenario = Scenario.default(5).model_copy(update={"fading": Scenario.default().fading.model_copy(update=fading)})
    rng_live, rng_sim = np.random.default_rng(9), np.random.default_rng(9)
    links = [sample_links(rng_live, scenario.radio)]
    for _ in range(40):
        links.append(redraw_fading(rng_live, links[-1], scenario.radio))

    blocks = draw_blocks(rng_sim, sample_links(rng_sim, scenario.radio), scenario.radio, 40)

    for i, link in enumerate(links):
        np.testing.assert_array_equal(blocks.snr_dl_per_hz[i], link.snr_dl_per_hz)
        np.testing.assert_array_equal(blocks.snr_ul_per_hz[i], link.snr_ul_per_hz)
    assert rng_live.random() == rng_sim.random()  # the generators were left in the same state
