"""The Ray backend on a multi-node cluster on 127.0.0.1: placement by resource, exactness, emulated radio."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.integration.ray.conftest import NUM_DEVICES, DeviceCluster
from wdmoe import DistributedMoE
from wdmoe.cli.run_cmd import generate_report
from wdmoe.config import Scenario
from wdmoe.policy.topk import TopK

NEW_TOKENS = 10
PROMPT = [5, 17, 99, 3, 42, 7]


def local_tokens(split: Path) -> list[int]:
    model = DistributedMoE.from_pretrained(split)
    tokens = generate_report(model, PROMPT, NEW_TOKENS)["tokens"]
    model.close()
    return list(tokens)


@pytest.mark.parametrize("transport", ["direct", "compiled", "plain"])
def test_actors_land_on_their_nodes_and_tokens_equal_in_process(
    ray_cluster: DeviceCluster, mixtral_split: Path, healthy_mixtral: DistributedMoE, transport: str
) -> None:
    expected = local_tokens(mixtral_split)
    model = healthy_mixtral
    model.pool.transport = transport  # type: ignore[attr-defined]
    report = generate_report(model, PROMPT, NEW_TOKENS)
    nodes = model.pool.node_of()  # type: ignore[attr-defined]
    assert nodes == {d: ray_cluster.node_id_of(d) for d in range(NUM_DEVICES)}
    assert len(set(nodes.values())) == NUM_DEVICES
    assert report["tokens"] == expected
    assert "failover" not in report
    assert sum(report["tokens_per_device"]) > 0


def test_emulated_air_time_is_waited_and_reported(healthy_mixtral: DistributedMoE) -> None:
    slow_radio = Scenario.default(num_devices=NUM_DEVICES).model_copy(update={"bandwidth_hz": 2e4})
    model = healthy_mixtral
    model.pool.emulate_air = True  # type: ignore[attr-defined]
    model.set_policy(TopK(), slow_radio)
    report = generate_report(model, PROMPT, 4)
    records = [rec for step in model.steps for rec in step.layers]
    for rec in records:
        active = rec.assignments > 0
        air_s = (rec.modeled.dl_s + rec.modeled.ul_s)[active].max()
        assert air_s > 1e-3  # the slow link makes the air time dominate the tiny model's compute
        assert rec.dispatch_time_s >= air_s
    per_layer = report["latency"]["per_layer"]
    assert [row["layer"] for row in per_layer] == [0, 1]
    for row in per_layer:
        assert row["measured_dispatch_s"] >= max(row["dl_s"], row["ul_s"])  # each record waits max(dl + ul)
        assert row["measured_layer_s"] >= row["measured_dispatch_s"]
    assert np.isfinite(report["latency"]["ttft_s"])
