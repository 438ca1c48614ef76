"""`wdmoe simulate` and `wdmoe trace record|synthesize` in-process, through an app registered as main.py will."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from wdmoe.cli import sim_cmd
from wdmoe.sim.trace import Trace

runner = CliRunner()
app = typer.Typer()
app.command("simulate")(sim_cmd.simulate)
trace_app = typer.Typer()
trace_app.command("record")(sim_cmd.record)
trace_app.command("synthesize")(sim_cmd.synthesize)
app.add_typer(trace_app, name="trace")


def test_synthesize_then_simulate_json_and_csv(tmp_path: Path) -> None:
    out = tmp_path / "t.npz"
    result = runner.invoke(app, ["trace", "synthesize", "--out", str(out), "--layers", "3", "--experts", "4",
                                 "--requests", "2", "--prompt-len", "3", "--new-tokens", "4", "--devices", "4",
                                 "--zipf", "1.0", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["decisions"] == Trace.load(out).num_decisions == 2 * (3 + 3) * 3
    scenario = tmp_path / "narrow.toml"
    scenario.write_text("num_devices = 4\nbandwidth_hz = 5e6\n", encoding="utf-8")

    result = runner.invoke(app, ["simulate", "--trace", str(out), "--scenario", str(scenario), "--policy", "topk",
                                 "--policy", "joint", "--realizations", "2", "--json", "--csv",
                                 str(tmp_path / "s.csv")])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(r["scenario"], r["policy"]) for r in report["runs"]] == [("narrow", "topk"), ("narrow", "joint")]
    run = report["runs"][0]
    for key in ("token_latency_s", "ttft_s", "tpot_s"):
        assert set(run[key]) == {"p50", "p95", "p99", "mean"}
    for key in ("bytes_on_air", "energy_j", "experts_per_token", "dropped_experts", "realizations", "decisions"):
        assert key in run
    with (tmp_path / "s.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and float(rows[0]["token_latency_p50_s"]) == run["token_latency_s"]["p50"]


def test_simulate_refuses_unknown_policy_and_mismatched_scenario(tmp_path: Path) -> None:
    out = tmp_path / "t.npz"
    runner.invoke(app, ["trace", "synthesize", "--out", str(out), "--layers", "2", "--devices", "4"])

    result = runner.invoke(app, ["simulate", "--trace", str(out), "--policy", "best"])
    assert result.exit_code == 2 and "'best' is unknown" in result.output
    bad = tmp_path / "three.toml"
    bad.write_text("num_devices = 3\n", encoding="utf-8")
    result = runner.invoke(app, ["simulate", "--trace", str(out), "--scenario", str(bad)])
    assert result.exit_code == 2 and "num_devices" in result.output


def test_record_from_a_model_then_simulate(mixtral_split: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.npz"
    result = runner.invoke(app, ["trace", "record", "--model", str(mixtral_split), "--prompt-ids", "4,5,6",
                                 "--prompt-ids", "7,8", "--max-new-tokens", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    trace = Trace.load(out)
    assert (trace.num_requests, trace.num_steps, trace.num_devices) == (2, 6, 3)
    assert trace.logits is not None

    result = runner.invoke(app, ["simulate", "--trace", str(out), "--realizations", "1", "--exact", "--json"])
    assert result.exit_code == 0, result.output
    assert [r["policy"] for r in json.loads(result.output)["runs"]] == ["topk", "wlr", "joint"]


def test_simulate_checks_every_scenario_before_the_first_replay(tmp_path: Path) -> None:
    out = tmp_path / "t.npz"
    runner.invoke(app, ["trace", "synthesize", "--out", str(out), "--layers", "2", "--devices", "4"])
    good = tmp_path / "four.toml"
    good.write_text("num_devices = 4\n", encoding="utf-8")
    bad = tmp_path / "sixteen.toml"
    bad.write_text("num_devices = 16\n", encoding="utf-8")
    csv = tmp_path / "rows.csv"

    result = runner.invoke(app, ["simulate", "--trace", str(out), "--scenario", str(good), "--scenario", str(bad),
                                 "--csv", str(csv)])

    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"{bad} has num_devices = 16" in message and "recorded over 4 devices" in message
    assert str(good) not in message  # only the misfit is named
    assert not csv.exists()  # nothing ran: the misfit was found before the first replay


def test_simulate_a_cell_of_users_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "t.npz"
    runner.invoke(app, ["trace", "synthesize", "--out", str(out), "--layers", "2", "--experts", "4", "--requests",
                        "3", "--prompt-len", "5", "--new-tokens", "4", "--devices", "4"])
    args = ["simulate", "--trace", str(out), "--users", "3", "--requests-per-user", "2", "--policy", "topk",
            "--policy", "wlr"]

    result = runner.invoke(app, [*args, "--arrival-rate", "0.5", "--json", "--csv", str(tmp_path / "c.csv")])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [r["policy"] for r in report["runs"]] == ["topk", "wlr"]
    run = report["runs"][0]
    assert run["arrival"] == {"process": "poisson", "rate_per_s_per_user": 0.5, "users": 3, "requests_per_user": 2,
                              "max_batch": 64, "schedule": "prefill-first"}
    assert run["overall"]["requests"] == 6 and run["tokens"] == 6 * 4 and run["realizations"] == 1
    assert [u["user"] for u in run["per_user"]] == [0, 1, 2] and all(u["requests"] == 2 for u in run["per_user"])
    for key in ("ttft_s", "tpot_s", "queue_s", "e2e_s"):
        assert set(run["overall"][key]) == {"p50", "p95", "p99", "mean"}
    assert run["overall"]["ttft_s"]["p50"] > 0 and run["tokens_per_s"] > 0
    with (tmp_path / "c.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["policy"], r["user"]) for r in rows[:4]] == [("topk", "all"), ("topk", "0"), ("topk", "1"),
                                                             ("topk", "2")]
    assert float(rows[0]["ttft_p99_s"]) == run["overall"]["ttft_s"]["p99"]
    assert float(rows[1]["tpot_p50_s"]) == run["per_user"][0]["tpot_s"]["p50"] and len(rows) == 8

    closed = runner.invoke(app, [*args, "--arrival", "closed", "--max-batch", "2"])
    assert closed.exit_code == 0, closed.output
    assert "closed loop" in closed.output and "per user: default, wlr" in closed.output
    assert "prefill-first steps" in closed.output

    # The schedule reaches the scheduler: at this rate a request arrives while others decode, and prefilling it in
    # a step of its own (the server's rule) gives other steps than sharing the running requests' step.
    steps = {}
    for schedule in ("prefill-first", "mixed"):
        done = runner.invoke(app, [*args, "--arrival-rate", "5", "--json", "--schedule", schedule])
        assert done.exit_code == 0, done.output
        cell = json.loads(done.output)["runs"][0]
        assert cell["arrival"]["schedule"] == schedule and cell["tokens"] == 6 * 4
        steps[schedule] = (cell["steps"], cell["batch_size_mean"])
    assert steps["prefill-first"] != steps["mixed"]
    bad = runner.invoke(app, [*args, "--arrival-rate", "0.5", "--schedule", "chunked"])
    assert bad.exit_code == 2 and "'chunked' is unknown" in bad.output


def test_simulate_refuses_a_cell_without_its_arrival_rate_or_users(tmp_path: Path) -> None:
    out = tmp_path / "t.npz"
    runner.invoke(app, ["trace", "synthesize", "--out", str(out), "--layers", "2", "--devices", "4"])

    result = runner.invoke(app, ["simulate", "--trace", str(out), "--users", "2"])
    assert result.exit_code == 2 and "--arrival-rate" in result.output
    result = runner.invoke(app, ["simulate", "--trace", str(out), "--arrival-rate", "2"])
    assert result.exit_code == 2 and "--users" in result.output
    result = runner.invoke(app, ["simulate", "--trace", str(out), "--users", "2", "--arrival", "bursty"])
    assert result.exit_code == 2 and "'bursty' is unknown" in result.output
    result = runner.invoke(app, ["simulate", "--trace", str(out), "--users", "2", "--arrival", "closed", "--exact"])
    assert result.exit_code == 2 and "drop --exact" in result.output
