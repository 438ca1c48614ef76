"""Updating: plan.toml round trip, and the replanner's triggers and hysteresis."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from wdmoe.plan.cluster import load_cluster
from wdmoe.plan.deployment import Plan, PlanKind
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.planfile import read_plan, write_plan
from wdmoe.plan.planner import plan_deployment
from wdmoe.plan.replan import Replanner, Trigger
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS

LAB = Path(__file__).resolve().parents[3] / "configs" / "clusters" / "lab.toml"


def requirement() -> ModelRequirement:
    pop = np.random.default_rng(3).dirichlet(np.full(8, 0.7), size=4) * 2
    return ModelRequirement.build("shipped-like", (0, 1, 2, 3), 8, 2, 192, 32, 129024, 1_973_952, pop)


def lab_plan() -> tuple[Plan, ModelRequirement]:
    cluster = load_cluster(LAB)
    req = requirement()
    return plan_deployment(req, cluster.statuses, cluster.radio), req


def test_plan_toml_round_trip(tmp_path: Path) -> None:
    plan, _ = lab_plan()

    back = read_plan(write_plan(plan, tmp_path / "plan.toml"))

    assert back.kind is plan.kind and back.model_id == plan.model_id
    assert back.devices == plan.devices and back.copies == plan.copies
    assert back.expected_latency_s == plan.expected_latency_s
    assert back.round_robin_latency_s == plan.round_robin_latency_s
    for name in ("bits", "expert_bytes", "popularity"):
        assert np.array_equal(getattr(back, name), getattr(plan, name))
    assert back.to_placement() == plan.to_placement()


def test_tiny_change_does_not_replan() -> None:
    plan, req = lab_plan()
    cluster = load_cluster(LAB)
    statuses = list(cluster.statuses)
    statuses[0] = dataclasses.replace(statuses[0], load=0.05, free_memory_bytes=statuses[0].free_memory_bytes - 1000)

    result = Replanner(cluster.radio).decide(plan, statuses, req)

    assert result.triggers == () and not result.switched and result.plan is plan and result.candidate is None


def test_triggered_replan_without_gain_keeps_the_plan() -> None:
    plan, req = lab_plan()
    cluster = load_cluster(LAB)
    statuses = list(cluster.statuses)
    statuses[-1] = dataclasses.replace(statuses[-1], load=0.5)  # the phone serves no primary

    result = Replanner(cluster.radio).decide(plan, statuses, req)

    assert [t for t, _ in result.triggers] == [Trigger.RESOURCE]
    assert result.candidate is not None and not result.switched and result.plan is plan
    assert result.new_latency_s > result.old_latency_s * 0.95  # within the hysteresis margin


def test_device_leaving_replans_away_from_it() -> None:
    plan, req = lab_plan()
    cluster = load_cluster(LAB)
    busiest = int(np.argmax(np.bincount(plan.primary().ravel(), minlength=len(plan.devices))))
    gone = plan.devices[busiest].device
    statuses = [s for s in cluster.statuses if s.device != gone]

    result = Replanner(cluster.radio).decide(plan, statuses, req)

    assert (Trigger.LEAVE, f"{gone} left") in result.triggers
    assert result.switched and result.plan is result.candidate
    assert gone not in result.plan.device_names
    assert result.migrations and all(m.to_device != gone and m.from_device != gone for m in result.migrations)
    assert result.migration_s == sum(m.seconds for m in result.migrations) > 0
    held = {(pos, e) for pos, row in enumerate(plan.copies) for e, ids in enumerate(row) if busiest in ids}
    assert all(m.from_device is None or m.from_device in result.plan.device_names for m in result.migrations)
    assert len(held) > 0


def test_popularity_drift_triggers() -> None:
    plan, req = lab_plan()
    cluster = load_cluster(LAB)
    drifted = dataclasses.replace(req, popularity=req.popularity[:, ::-1].copy())

    result = Replanner(cluster.radio).decide(plan, cluster.statuses, drifted)

    assert any(t is Trigger.POPULARITY for t, _ in result.triggers)
    assert result.candidate is not None
    assert result.switched == (result.new_latency_s + result.migration_s / 1000.0 < 0.95 * result.old_latency_s)


def test_intra_plan_is_rescored_by_the_same_objective_and_round_trips(tmp_path: Path) -> None:
    """An intra-server plan on a state: the replanner's old latency is the planner's (host tier included), and a
    slower link to its server raises it (the link is part of the objective); candidates survive plan.toml."""
    req = requirement()
    free = req.non_expert_bytes + int(req.bytes_for().sum()) // 8
    agx = ResourceStatus("agx", PRESETS["jetson-agx-orin"], free, link_rate_bps=4e9, host_memory_bytes=20_000_000,
                         host_bytes_per_s=100e9)
    nx = [ResourceStatus(f"nx{k}", PRESETS["jetson-orin-nx"], 3_000_000, link_rate_bps=1e6) for k in range(3)]
    radio = RadioSettings()
    plan = plan_deployment(req, [agx, *nx], radio)
    assert plan.kind is PlanKind.INTRA
    replanner = Replanner(radio)

    assert replanner.old_latency_s(plan, [agx, *nx], req) == pytest.approx(plan.expected_latency_s, rel=1e-12)
    slower = dataclasses.replace(agx, link_rate_bps=4e8)
    assert replanner.old_latency_s(plan, [slower, *nx], req) > plan.expected_latency_s
    back = read_plan(write_plan(plan, tmp_path / "plan.toml"))
    assert back.candidates == plan.candidates and back.optimality_gap is None
