"""The layer step as named stages: the decode form of group + combine equals the reference (bit-identical outputs,
equal records) with and without a policy, air compression and failover; the record carries the Decision."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.backends.base import DeviceBatch, DeviceFailure, DeviceResult
from wdmoe.backends.local import LocalDevicePool
from wdmoe.model.shards import Manifest
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.runtime.grouping import GROUPINGS, ONE_TOKEN, REFERENCE
from wdmoe.runtime.telemetry import LayerRecord, StepRecord

MEASURED = {"bs_time_s", "device_time_s", "dispatch_time_s"}  # wall-clock fields: equal only by chance


class FailingPool:
    """The in-process pool, except that devices in `failed` raise DeviceFailure (a device that crashed)."""

    def __init__(self, inner: LocalDevicePool, failed: set[int]) -> None:
        self.inner, self.num_devices, self.failed = inner, inner.num_devices, failed

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]:
        results = [self.inner.workers[b.device].run(b) for b in batches if b.device not in self.failed]
        lost = {b.device: "crashed" for b in batches if b.device in self.failed}
        if lost:
            raise DeviceFailure(lost, results, 0.0)
        return results

    def close(self) -> None:
        self.inner.close()


def assert_records_equal(a: LayerRecord, b: LayerRecord) -> None:
    for f in dataclasses.fields(LayerRecord):
        if f.name in MEASURED:
            continue
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            for g in dataclasses.fields(x):
                np.testing.assert_array_equal(getattr(x, g.name), getattr(y, g.name), err_msg=f"{f.name}.{g.name}")
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=f.name)
            assert np.asarray(x).dtype == np.asarray(y).dtype, f.name
        else:
            assert x == y, f.name


def assert_steps_equal(a: list[StepRecord], b: list[StepRecord]) -> None:
    assert [(s.phase, s.num_tokens, len(s.layers)) for s in a] == [(s.phase, s.num_tokens, len(s.layers)) for s in b]
    for sa, sb in zip(a, b, strict=True):
        for ra, rb in zip(sa.layers, sb.layers, strict=True):
            assert_records_equal(ra, rb)


def two_models(split: Path, failed: set[int] | None = None) -> tuple[DistributedMoE, DistributedMoE]:
    """The same split twice: the first with the decode form of group + combine, the second with the reference."""
    models = []
    for grouping in (ONE_TOKEN, None):
        pool = None
        if failed is not None:
            manifest = Manifest.read(split)
            pool = FailingPool(LocalDevicePool(split, manifest), set(failed))
        model = DistributedMoE.from_pretrained(split, pool=pool)
        model.runtime.decode_grouping = grouping
        models.append(model)
    return models[0], models[1]


@pytest.mark.parametrize(("policy", "air_dtype"), [(None, None), ("wlr", None), (None, "int8"), ("wlr", "fp16")])
def test_decode_form_equals_the_reference_over_a_generation(mixtral_split: Path, policy: str | None,
                                                            air_dtype: str | None) -> None:
    fast, reference = two_models(mixtral_split)
    ids = torch.tensor([[9, 4, 33, 7]])
    outs = []
    for model in (fast, reference):
        if policy is not None:
            model.set_policy(WLRThreshold(theta=0.4))
        model.set_compression(air_dtype)
        outs.append(model.generate(ids, max_new_tokens=6, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True))
    assert torch.equal(outs[0].sequences, outs[1].sequences)
    for a, b in zip(outs[0].logits, outs[1].logits, strict=True):
        assert torch.equal(a, b)
    assert_steps_equal(fast.steps, reference.steps)
    assert sum(s.phase == "decode" for s in fast.steps) == 5  # the decode form ran


def test_decode_form_equals_the_reference_when_a_device_fails_mid_step(mixtral_split: Path) -> None:
    fast, reference = two_models(mixtral_split, failed=set())
    ids = torch.tensor([[3, 8, 21]])
    outs = []
    for model in (fast, reference):
        pool = model.pool
        assert isinstance(pool, FailingPool)
        model.telemetry.listeners.append(lambda step, pool=pool: step.index == 1 and pool.failed.add(1))
        outs.append(model.generate(ids, max_new_tokens=5, do_sample=False))
    assert torch.equal(outs[0], outs[1])
    assert_steps_equal(fast.steps, reference.steps)
    noticed = [(s.index, s.phase, e.kind, e.device) for s in fast.steps for r in s.layers for e in r.failover]
    ((index, phase, kind, device),) = noticed  # noticed once, in a decode step; routed around from then on
    assert index >= 2 and (phase, kind, device) == ("decode", "failed", 1)
    assert fast.runtime.liveness.dead == frozenset({1})
    assert sum(r.rerouted[1] for s in fast.steps for r in s.layers) > 0  # no replica: substitute experts
    later = [r for s in fast.steps[index + 1 :] for r in s.layers]
    assert later and all(r.assignments[1] == 0 for r in later)


def test_every_placement_of_one_tokens_experts_combines_like_the_reference(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)
    runtime, layer = model.runtime, model.placement.moe_layers[0]
    gen = torch.Generator().manual_seed(3)
    hidden = torch.randn(1, model.config.hidden_size, generator=gen)
    for experts in itertools.permutations(range(model.placement.num_experts), 2):
        index, weight = torch.tensor([experts]), torch.rand(1, 2, generator=gen)
        outs, records = [], []
        for grouping in (ONE_TOKEN, None):
            runtime.decode_grouping = grouping
            step = model.telemetry.start("decode", 1)
            outs.append(runtime.run(layer, hidden, index, weight, None))
            records.append(step.layers[0])
            model.telemetry.finish(0.0, 0.0)
        assert torch.equal(outs[0], outs[1]), experts
        assert_records_equal(*records)


def test_the_groupings_are_registered_and_say_where_they_apply() -> None:
    assert GROUPINGS == {"reference": REFERENCE, "one_token": ONE_TOKEN}
    assert REFERENCE.applies(1) and REFERENCE.applies(7)
    assert ONE_TOKEN.applies(1) and not ONE_TOKEN.applies(2)


def test_the_record_carries_the_decision_and_its_bandwidth_split(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=WLRThreshold(theta=0.4))
    model(torch.tensor([[1, 2, 3, 4]]))
    for record in model.steps[0].layers:
        assert record.decision is not None and record.modeled is not None
        np.testing.assert_array_equal(record.keep, record.decision.keep)
        assert record.decision.bandwidth_hz.sum() == pytest.approx(model.wireless.scenario.bandwidth_hz)
    plain = DistributedMoE.from_pretrained(mixtral_split)
    plain(torch.tensor([[1, 2, 3, 4]]))
    assert all(r.decision is None and r.modeled is None for r in plain.steps[0].layers)
