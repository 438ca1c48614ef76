"""The runtime obeys the policy's Decision and reports the radio model's latency next to what it measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from wdmoe import DistributedMoE
from wdmoe.config import Scenario
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.factory import make_policy
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.policy.topk import TopK
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.radio.latency import LayerLoad, layer_breakdown
from wdmoe.runtime.telemetry import StepRecord


@dataclass(frozen=True)
class KeepFirst:
    """A real (if simple) policy: keep only each token's first routed expert, at weight 1, equal bandwidth."""

    name: str = field(default="keep-first", init=False)
    order_independent = True

    def decide(self, state: LayerState) -> Decision:
        keep = np.zeros(state.topk_index.shape, dtype=bool)
        keep[:, 0] = True
        return Decision(keep, keep.astype(float), np.full(state.num_devices, state.bandwidth_hz / state.num_devices))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        return None


def test_topk_with_radio_stays_exact_and_models_every_layer(mixtral_split: Path, tiny_models) -> None:
    reference = tiny_models["mixtral"]
    model = DistributedMoE.from_pretrained(mixtral_split, policy=TopK())
    ids = torch.tensor([[9, 8, 7, 6, 5]])
    expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)
    assert torch.equal(model.generate(ids, max_new_tokens=6, do_sample=False), expected)
    hidden = model.config.hidden_size
    for step in model.steps:
        for rec in step.layers:
            # Two independent counts of the same traffic: the runtime's and the radio model's, both at the
            # scenario's 16 bits per value on the air (the model computes in fp32).
            np.testing.assert_array_equal(rec.modeled.bits_dl, rec.tokens_down * hidden * 16)
            np.testing.assert_array_equal(rec.modeled.bits_ul, rec.assignments * hidden * 16)
            np.testing.assert_array_equal(rec.bits_down, rec.modeled.bits_dl)
            assert rec.modeled.layer_s > rec.modeled.bs_s > 0
    summary = model.summary()
    assert summary["latency"]["ttft_s"] == pytest.approx(sum(r.modeled.layer_s for r in model.steps[0].layers))
    assert summary["bytes_on_air"] == pytest.approx(
        sum((r.bits_down.sum() + r.bits_up.sum()) / 8 for s in model.steps for r in s.layers)
    )


def test_policy_decision_is_obeyed_keep_first_equals_hf_top1(tiny_models, mixtral_split: Path) -> None:
    reference = tiny_models["mixtral"]
    top1 = AutoModelForCausalLM.from_config(reference.config.__class__(**{
        **reference.config.to_dict(), "num_experts_per_tok": 1})).eval()
    top1.load_state_dict(reference.state_dict())
    model = DistributedMoE.from_pretrained(mixtral_split, policy=KeepFirst())
    ids = torch.arange(30, 41).unsqueeze(0)
    with torch.no_grad():
        expected = top1(ids).logits
    torch.testing.assert_close(model(ids).logits, expected, rtol=0, atol=1e-5)
    for rec in model.steps[0].layers:
        assert rec.assignments.sum() == ids.shape[1]  # dropped experts were never dispatched
        assert (rec.experts_per_token == 1).all()


def test_wlr_theta_one_keeps_one_expert_and_cuts_modeled_latency(mixtral_split: Path) -> None:
    ids = torch.arange(3, 19).unsqueeze(0)
    topk = DistributedMoE.from_pretrained(mixtral_split, policy=TopK())
    topk(ids)
    wlr = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy("wlr", theta=1.0))
    wlr(ids)
    for a, b in zip(topk.steps[0].layers, wlr.steps[0].layers, strict=True):
        assert (b.experts_per_token == 1).all()
        assert b.modeled.layer_s <= a.modeled.layer_s + 1e-15
    assert wlr.summary()["bytes_on_air"] < topk.summary()["bytes_on_air"]


def test_modeled_latency_is_radio_latency_of_the_recorded_state(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy("joint"))
    states: list[LayerState] = []
    decider = model.wireless
    assert decider is not None
    original = decider.state
    decider.state = lambda *a, **kw: states.append(original(*a, **kw)) or states[-1]  # type: ignore[method-assign]
    model(torch.arange(5, 17).unsqueeze(0))
    for state, rec in zip(states, model.steps[0].layers, strict=True):
        decision = decider.policy.decide(state)
        load = LayerLoad(state.topk_index, decision.keep, state.expert_device, state.expert_flops_per_token,
                         state.expert_weight_bytes, state.bits_per_token)
        expected = layer_breakdown(load, state.link, decider.profiles, decision.bandwidth_hz,
                                   bs_time_s=state.bs_time_s, bs_tx_power_w=decider.bs_tx_power_w)
        assert rec.modeled.layer_s == expected.layer_s
        np.testing.assert_array_equal(rec.keep, decision.keep)


@pytest.mark.parametrize(("coherence", "changes"), [("step", True), ("request", False)])
def test_fading_is_redrawn_as_the_coherence_setting_says(mixtral_split: Path, coherence: str, changes: bool) -> None:
    scenario = Scenario.default(num_devices=3).model_copy(update={"coherence": coherence})
    model = DistributedMoE.from_pretrained(mixtral_split, policy=TopK(), scenario=scenario)
    gains: list[np.ndarray] = []
    decider = model.wireless
    assert decider is not None
    distance_m = decider.link.distance_m.copy()
    model.telemetry.listeners.append(lambda _s: gains.append(decider.link.gain_dl.copy()))
    model.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=4, do_sample=False)
    assert len(gains) == 4
    assert (not np.array_equal(gains[0], gains[1])) == changes
    np.testing.assert_array_equal(decider.link.distance_m, distance_m)  # devices do not move


def test_same_scenario_seed_replays_the_same_modeled_latency(mixtral_split: Path) -> None:
    runs = []
    for _ in range(2):
        model = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy("wlr", theta=0.5))
        model.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=3, do_sample=False)
        runs.append(model.summary()["latency"]["per_step_s"])
    assert runs[0] == runs[1]


def test_scenario_for_another_device_count_is_refused(mixtral_split: Path) -> None:
    with pytest.raises(ValueError, match="'num_devices' = 8, but the model is split over 3 devices"):
        DistributedMoE.from_pretrained(mixtral_split, policy=TopK(), scenario=Scenario.default(num_devices=8))


def test_step_records_carry_the_phase(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=TopK())
    seen: list[StepRecord] = []
    model.telemetry.listeners.append(seen.append)
    model.generate(torch.tensor([[4, 5]]), max_new_tokens=3, do_sample=False)
    assert [s.phase for s in seen] == ["prefill", "decode", "decode"]


def test_summary_defaults_to_the_last_request_so_a_generate_after_set_policy_has_its_latency(
    mixtral_split: Path,
) -> None:
    """The README's "Use it" flow: steps run before set_policy have no radio figures, the request after has."""
    model = DistributedMoE.from_pretrained(mixtral_split)
    ids = torch.tensor([[4, 5, 6]])
    model.generate(ids, max_new_tokens=3, do_sample=False)
    model(ids)
    model.set_policy(WLRThreshold(theta=0.5))
    model.generate(ids, max_new_tokens=4, do_sample=False)

    last = model.summary()
    everything = model.summary(model.steps)

    assert len(model.steps) == 3 + 1 + 4
    assert len(last["latency"]["per_step_s"]) == 4  # its prefill + 3 decode steps
    assert last["latency"]["ttft_s"] == pytest.approx(sum(r.modeled.layer_s for r in model.steps[4].layers))
    assert "latency" not in everything  # the steps before set_policy have no modeled latency
    assert sum(everything["tokens_per_device"]) > sum(last["tokens_per_device"])
