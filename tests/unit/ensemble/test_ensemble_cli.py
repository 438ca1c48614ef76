"""`wdmoe ensemble` on the shipped experts, through typer's CliRunner (the sub-app alone)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from wdmoe.cli.ensemble_cmd import app
from wdmoe.ensemble.experts import EXPERT_NAMES
from wdmoe.ensemble.gate import GATE_DIR

runner = CliRunner()


def test_select_keeps_the_worst_case_within_the_budgets() -> None:
    result = runner.invoke(app, ["select", "--energy-budget", "0.02", "--delay-budget", "0.001", "--json"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["subset"] and set(out["subset"]) <= set(EXPERT_NAMES)
    assert out["worst_case_energy_j"] <= 0.02
    assert max(out["worst_case_delay_s"].values()) <= 0.001
    assert out["estimator"] == "crossfit"
    assert out["estimated_accuracy"] == out["exhaustive_estimated_accuracy"]  # U is monotone: polyblock is exact
    assert out["active"] and set(out["active"]) <= set(out["subset"])


def test_select_without_budgets_may_take_every_expert_and_an_impossible_budget_is_an_error() -> None:
    free = json.loads(runner.invoke(app, ["select", "--json"]).output)
    impossible = runner.invoke(app, ["select", "--energy-budget", "0", "--json"])

    assert free["worst_case_energy_j"] > 0.0
    assert impossible.exit_code == 2
    assert "no expert fits the budgets alone" in impossible.output


def test_eval_reports_every_policy_and_moe2_evaluates_fewer_subsets_than_exhaustive() -> None:
    result = runner.invoke(app, ["eval", "--energy-budget", "0.02", "--json"])

    assert result.exit_code == 0, result.output
    policies = {p["policy"]: p for p in json.loads(result.output)["policies"]}
    assert set(policies) >= {"moe2", "best-single", "uniform-feasible", "random-feasible", "greedy-per-joule"}
    assert policies["moe2"]["evaluated_fraction"] < policies["moe2-exhaustive"]["evaluated_fraction"]
    assert all(0.0 <= p["test_accuracy"] <= 1.0 for p in policies.values())


def test_run_generates_with_the_gate_chosen_experts() -> None:
    result = runner.invoke(app, ["run", ":hacker: n.", "--max-new-tokens", "3", "--json"])

    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert 1 <= len(out["experts"]) <= 2 and abs(sum(out["experts"].values()) - 1.0) < 1e-6
    assert set(out["compute_s"]) == set(out["experts"]) and out["tokens"] >= 1


def test_select_reads_a_gate_directory_and_refuses_one_without_a_gate(tmp_path: Path) -> None:
    copy = tmp_path / "gate"
    shutil.copytree(GATE_DIR, copy)
    shipped = json.loads(runner.invoke(app, ["select", "--energy-budget", "0.02", "--json"]).output)
    own = runner.invoke(app, ["select", "--energy-budget", "0.02", "--gate", str(copy), "--json"])
    empty = runner.invoke(app, ["select", "--gate", str(tmp_path / "none"), "--json"])

    assert own.exit_code == 0, own.output
    assert json.loads(own.output) == shipped
    assert empty.exit_code == 2
    assert "--gate" in empty.output and "gate.json" in empty.output


def test_train_gate_refuses_an_out_that_is_a_file_before_training(tmp_path: Path) -> None:
    a_file = tmp_path / "gate.txt"
    a_file.write_text("x")

    result = runner.invoke(app, ["train-gate", "--out", str(a_file), "--json"])

    assert result.exit_code == 2
    assert "--out" in result.output and "not a directory" in result.output
    assert a_file.read_text() == "x"
