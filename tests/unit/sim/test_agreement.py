"""Sim-live agreement: replaying a recorded trace gives the live run's modeled latency and decisions exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.sim.simulate import replay
from wdmoe.sim.trace import Trace, record_trace


@pytest.mark.parametrize(("policy", "coherence"), [("joint", "step"), ("wlr", "layer"), ("topk", "request"),
                                                   ("random", "step")])
def test_replay_equals_the_live_runs_telemetry_bit_for_bit(mixtral_split: Path, tmp_path: Path, policy: str,
                                                            coherence: str) -> None:
    scenario = Scenario.default(num_devices=3).model_copy(update={"coherence": coherence, "seed": 5})
    model = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy(policy, theta=0.5, seed=5),
                                           scenario=scenario)
    for prompt in ([4, 5, 6, 7, 8], [9, 3]):  # two requests through one decider, as a server would run them
        model.generate(torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
    recorded = record_trace(model.steps, model.model_costs(), model.runtime.primary, model.num_devices)
    trace = Trace.load(recorded.save(tmp_path / "trace.npz"))
    live = [rec for step in model.steps for rec in step.layers]
    model.close()

    sim = replay(trace, scenario, make_policy(policy, theta=0.5, seed=5), keep_records=True)
    fast = replay(trace, scenario, make_policy(policy, theta=0.5, seed=5))

    assert sim.records is not None and len(sim.records) == len(live) == trace.num_steps * trace.num_layers
    for rec, (keep, weight, modeled) in zip(live, sim.records, strict=True):
        assert modeled.layer_s == rec.modeled.layer_s
        np.testing.assert_array_equal(keep, rec.keep)
        np.testing.assert_array_equal(weight, rec.weight)
        for part in ("dl_s", "compute_s", "ul_s", "bits_dl", "bits_ul", "energy_device_tx_j", "energy_bs_tx_j"):
            np.testing.assert_array_equal(getattr(modeled, part), getattr(rec.modeled, part))
    np.testing.assert_array_equal(fast.layer_s.ravel(), [rec.modeled.layer_s for rec in live])
    np.testing.assert_array_equal(fast.kept.ravel(), [rec.keep.sum() for rec in live])


def test_other_seeds_give_other_channels(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=make_policy("topk"))
    model.generate(torch.tensor([[4, 5, 6]]), max_new_tokens=3, do_sample=False)
    trace = record_trace(model.steps, model.model_costs(), model.runtime.primary, model.num_devices)
    model.close()
    scenario = Scenario.default(num_devices=3)

    a, b = (replay(trace, scenario, make_policy("topk"), seed=seed) for seed in (0, 1))

    assert not np.array_equal(a.layer_s, b.layer_s)
    np.testing.assert_array_equal(a.kept, b.kept)  # TopK keeps everything whatever the channel
