"""Updating in the live runtime: device reports, a device leaving mid-generation, re-planning between requests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from wdmoe.backends.base import DeviceBatch, DeviceFailure, DeviceResult
from wdmoe.backends.local import LocalDevicePool
from wdmoe.model.shards import Manifest
from wdmoe.model.split import split_model
from wdmoe.placement import Placement
from wdmoe.plan.calibrate import requirement_of
from wdmoe.plan.deployment import Plan
from wdmoe.plan.inter import SearchConfig
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.live import PlanController
from wdmoe.plan.planner import PlannerConfig, plan_deployment
from wdmoe.plan.replan import Replanner, Trigger
from wdmoe.plan.reports import device_reports
from wdmoe.plan.source import assemble_model
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS
from wdmoe.runtime.model import DistributedMoE
from wdmoe.runtime.replace import apply_placement
from wdmoe.runtime.telemetry import StepRecord

IDS = torch.tensor([[1, 2, 3, 4, 5]])
NEW_TOKENS = 8


class FailingPool:
    """The in-process pool, except that devices in `failed` raise DeviceFailure (a device that left)."""

    def __init__(self, inner: LocalDevicePool) -> None:
        self.inner = inner
        self.num_devices = inner.num_devices
        self.workers = inner.workers
        self.failed: set[int] = set()

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]:
        results = [self.inner.workers[b.device].run(b) for b in batches if b.device not in self.failed]
        lost = {b.device: "left the cell" for b in batches if b.device in self.failed}
        if lost:
            raise DeviceFailure(lost, results, 0.0)
        return results

    def close(self) -> None:
        self.inner.close()


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def expected_tokens(hf: Any) -> torch.Tensor:
    return hf.generate(
        IDS, attention_mask=torch.ones_like(IDS), max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=0
    )


def generate(model: DistributedMoE) -> torch.Tensor:
    return model.generate(IDS, max_new_tokens=NEW_TOKENS, do_sample=False)


def three_device_plan(hf: Any, config: PlannerConfig) -> Plan:
    """16 experts on 3 devices with room for 9 each: any 2 of them still hold every expert."""
    requirement = requirement_of(hf)
    expert = int(requirement.bytes_for()[0, 0])
    statuses = [
        ResourceStatus(f"d{k}", PRESETS[p], 9 * expert, link_rate_bps=(20e6, 80e6, 40e6)[k])
        for k, p in enumerate(("jetson-orin-nano", "jetson-agx-orin", "jetson-orin-nx"))
    ]
    return plan_deployment(requirement, statuses, RadioSettings(), config=config)


NO_REPLICAS = PlannerConfig(SearchConfig(max_copies=1), allow_intra=False)
REPLICAS = PlannerConfig(SearchConfig(max_copies=2), allow_intra=False)


@pytest.fixture(params=[NO_REPLICAS], ids=["no-replicas"])
def running(
    request: pytest.FixtureRequest, tmp_path: Path, tiny_models: dict[str, Any]
) -> tuple[DistributedMoE, FailingPool, PlanController]:
    hf, config = tiny_models["mixtral"], request.param
    plan = three_device_plan(hf, config)
    split = tmp_path / "split"
    manifest = split_model(hf, split, 3, plan.to_placement())
    pool = FailingPool(LocalDevicePool(split, manifest))
    model = DistributedMoE.from_pretrained(split, pool=pool)
    replanner = Replanner(RadioSettings(), config=config)
    controller = PlanController(plan, requirement_of(hf), RadioSettings(), tmp_path / "plans", replanner, FakeClock())
    controller.attach(model)
    return model, pool, controller


def fail_at_step(model: DistributedMoE, pool: FailingPool, step: int, device: int) -> None:
    def listener(record: StepRecord) -> None:
        if record.index == step:
            pool.failed.add(device)
            model.telemetry.listeners.remove(listener)

    model.telemetry.listeners.append(listener)


def test_devices_report_the_experts_and_bytes_they_hold(running: Any) -> None:
    model, _, controller = running
    generate(model)

    reports = device_reports(model.pool, model.steps)

    assert [r.device for r in reports] == [0, 1, 2]
    np.testing.assert_array_equal([r.weight_bytes for r in reports], controller.plan.memory_used_bytes())
    assert sum(r.experts_held for r in reports) == sum(len(ids) for row in controller.plan.copies for ids in row)
    routed = sum(int(rec.keep.sum()) for step in model.steps for rec in step.layers)
    assert sum(r.assignments for r in reports) == routed and sum(r.compute_s for r in reports) > 0


def test_device_leaving_mid_generation_replans_between_requests(running: Any, tiny_models: dict[str, Any]) -> None:
    from wdmoe.config import Scenario
    from wdmoe.policy.topk import TopK

    model, pool, controller = running
    model.set_policy(TopK(), Scenario.default(num_devices=3))
    expected = expected_tokens(tiny_models["mixtral"])
    fail_at_step(model, pool, 3, device=1)

    out = generate(model)  # d1 fails at decode step 4: failover carries the request to its end
    update = controller.between_requests(model)
    again = generate(model)

    assert out.shape == expected.shape
    assert update.switched and update.error == "" and update.result is not None
    assert update.result.triggers[0][0] is Trigger.LEAVE
    assert "d1" not in controller.plan.device_names
    assert model.num_devices == 2 and model.runtime.placement == controller.plan.to_placement()
    assert not model.runtime.dead
    assert all((model.runtime.primary[layer] >= 0).all() for layer in model.placement.moe_layers)
    assert len(update.result.migrations) > 0 and update.migrated_bytes > 0 and update.migration_s > 0
    assert update.migrated_bytes == sum(m.num_bytes for m in update.result.migrations)
    assert torch.equal(again, expected)  # every expert lives somewhere again: the unsplit model's tokens
    assert model.wireless is not None and model.wireless.scenario.num_devices == 2


@pytest.mark.parametrize("running", [REPLICAS], ids=["replicas"], indirect=True)
def test_device_leaving_with_replicas_keeps_the_plan_on_the_rest(running: Any, tiny_models: dict[str, Any]) -> None:
    model, pool, controller = running
    expected = expected_tokens(tiny_models["mixtral"])
    copies = [ids for row in controller.plan.copies for ids in row]
    lonely = [
        d for d in range(3) if any(ids[0] == d for ids in copies) and all(len(ids) > 1 for ids in copies if d in ids)
    ]
    device = lonely[0] if lonely else 1
    fail_at_step(model, pool, 2, device)
    generate(model)

    update = controller.between_requests(model)

    assert update.switched and f"d{device}" not in controller.plan.device_names
    assert model.runtime.placement == controller.plan.to_placement() and model.num_devices == 2
    if lonely:  # every expert it held had a live copy: the old plan on the rest, nothing moves
        assert update.migrated_bytes == 0 and not update.result.migrations
    assert torch.equal(generate(model), expected)


def test_without_change_nothing_is_replanned(running: Any) -> None:
    model, _, controller = running
    generate(model)

    update = controller.between_requests(model)

    assert not update.switched and update.result is not None and update.result.triggers == ()
    assert model.num_devices == 3


def test_apply_placement_changes_the_live_placement(tmp_path: Path, running: Any, tiny_models: dict[str, Any]) -> None:
    model, _, _ = running
    expected = expected_tokens(tiny_models["mixtral"])
    placement = Placement.round_robin(model.placement.moe_layers, model.placement.num_experts, 4)
    split_model(assemble_model(model.root), tmp_path / "rr", 4, placement)

    swap = apply_placement(model, placement, tmp_path / "rr")

    assert (swap.devices_before, swap.devices_after) == (3, 4)
    assert model.runtime.placement == placement and model.placement == placement
    assert Manifest.read(model.root).placement == placement
    assert torch.equal(generate(model), expected)


def test_serve_with_plan_cluster_replans_between_requests(tmp_path: Path, tiny_models: dict[str, Any]) -> None:
    from wdmoe.cli.serve_cmd import Backend, load_engine
    from wdmoe.serve.engine import Sampling

    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")
    devices = "".join(
        f'[[devices]]\nname = "d{k}"\npreset = "jetson-orin-nx"\nfree_memory_bytes = 300_000\nlink_rate_bps = 5e7\n'
        for k in range(3)
    )
    (tmp_path / "cluster.toml").write_text(devices)
    engine = load_engine(tmp_path / "hf", None, "topk", 0.5, None, Backend.local, tmp_path / "cluster.toml")
    controller = engine.between_requests[0].args[1]  # type: ignore[attr-defined]  # functools.partial
    try:
        engine.generate([1, 2, 3], Sampling(max_tokens=3))  # batched on the worker thread; waits here
        engine.submit(lambda: None).result()  # the hook of the first request ran before this

        assert engine.model.placement == controller.plan.to_placement()
        assert len(controller.updates) >= 1 and not controller.updates[0].switched
    finally:
        engine.close()
        engine.model.close()
