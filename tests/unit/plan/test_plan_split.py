"""A plan drives the split and the runtime: `wdmoe split --plan`, DistributedMoE, and the `wdmoe plan` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import typer
from typer.testing import CliRunner

from wdmoe.cli import plan_cmd, split_cmd
from wdmoe.model.shards import Manifest
from wdmoe.plan.calibrate import calibrate, requirement_of
from wdmoe.plan.deployment import PlanKind
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.planfile import read_plan, write_plan
from wdmoe.plan.planner import PlannerConfig, plan_deployment
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS

CLUSTERS = Path(__file__).resolve().parents[3] / "configs" / "clusters"
app = typer.Typer()  # cli/main.py registers `plan` for users; here only the two commands under test
app.command("plan")(plan_cmd.plan)
app.command("split")(split_cmd.split)
runner = CliRunner()


def test_split_with_plan_loads_and_generates(tmp_path: Path, tiny_models: dict[str, object]) -> None:
    from wdmoe.runtime.model import DistributedMoE

    hf: Any = tiny_models["mixtral"]
    hf.save_pretrained(tmp_path / "hf")
    requirement, _ = calibrate(tmp_path / "hf", max_tokens=256)
    expert = int(requirement.bytes_for()[0, 0])
    statuses = [  # room for 5, 6 and 7 experts: 16 experts need all three devices
        ResourceStatus(f"d{k}", PRESETS[p], (5 + k) * expert, link_rate_bps=(20e6, 80e6, 40e6)[k])
        for k, p in enumerate(("jetson-orin-nano", "jetson-agx-orin", "jetson-orin-nx"))
    ]
    plan = plan_deployment(requirement, statuses, RadioSettings(), config=PlannerConfig(allow_intra=False))
    write_plan(plan, tmp_path / "plan.toml")

    result = runner.invoke(
        app, ["split", str(tmp_path / "hf"), "--plan", str(tmp_path / "plan.toml"), "--out", str(tmp_path / "split")]
    )

    assert result.exit_code == 0, result.output
    assert Manifest.read(tmp_path / "split").placement == plan.to_placement()
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    on_the_fly = DistributedMoE.from_pretrained(tmp_path / "hf", num_devices=3, placement=plan.to_placement())
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=5,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(model.generate(ids, max_new_tokens=5, do_sample=False), expected)
    assert torch.equal(on_the_fly.generate(ids, max_new_tokens=5, do_sample=False), expected)
    assert on_the_fly.placement == plan.to_placement()
    model.close()
    on_the_fly.close()


def test_split_refuses_devices_that_contradict_the_plan(tmp_path: Path, tiny_models: dict[str, object]) -> None:
    hf: Any = tiny_models["mixtral"]
    hf.save_pretrained(tmp_path / "hf")
    requirement = requirement_of(hf)
    statuses = [ResourceStatus(f"d{k}", PRESETS["jetson-orin-nx"], 10**6, link_rate_bps=5e7) for k in range(2)]
    write_plan(
        plan_deployment(requirement, statuses, RadioSettings(), config=PlannerConfig(allow_intra=False)),
        tmp_path / "plan.toml",
    )

    result = runner.invoke(
        app,
        [
            "split",
            str(tmp_path / "hf"),
            "--plan",
            str(tmp_path / "plan.toml"),
            "-n",
            "3",
            "--out",
            str(tmp_path / "split"),
        ],
    )

    assert result.exit_code == 2 and "places experts on 2 devices" in " ".join(result.output.split())


def test_plan_command_on_lab_and_too_small(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["plan", "--cluster", str(CLUSTERS / "too-small.toml"), "--out", str(tmp_path / "no.toml")]
    )
    message = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code != 0
    assert "need 16,515,072 bytes" in message and "offer 4,000,000 bytes" in message
    assert not (tmp_path / "no.toml").exists()

    result = runner.invoke(
        app,
        [
            "plan",
            "--cluster",
            str(CLUSTERS / "lab.toml"),
            "--out",
            str(tmp_path / "p.toml"),
            "--calibration-tokens",
            "512",
            "--samples",
            "4",
            "--json",
        ],
    )

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    plan = read_plan(tmp_path / "p.toml")
    assert report["kind"] == "inter" and plan.kind is PlanKind.INTER
    assert report["expected_latency_s"] < report["round_robin_latency_s"]
    assert np.all(plan.memory_used_bytes() <= [s.free_memory_bytes for s in plan.devices])
    assert abs(plan.popularity.sum(axis=1) - 2).max() < 1e-9  # calibrated: each token picks 2 experts
