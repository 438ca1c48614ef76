"""Every experiment end to end at tiny sizes: a tiny random Mixtral with a real BPE tokenizer for the accuracy
experiments, a synthetic trace for the latency-only ones. Each writes a CSV with its columns and a PNG."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from wdmoe.cli import experiment_cmd
from wdmoe.config import Scenario
from wdmoe.experiments.bandwidth import run_bandwidth
from wdmoe.experiments.cdf import run_cdf
from wdmoe.experiments.devices import remap, run_devices
from wdmoe.experiments.frontier import run_pareto
from wdmoe.experiments.latency import LATENCY_COLUMNS
from wdmoe.experiments.policies import random_drop, topk, wlr
from wdmoe.experiments.setup import NoProgress, Setup
from wdmoe.experiments.theta import run_theta
from wdmoe.sim.synthesize import synthesize_trace
from wdmoe.sim.trace import Trace

WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards", "quietly",
         "hex", "bold", "jumbo", "vats"]


class CountingProgress:
    """Remembers which tasks were started (to see what a cached run skips)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def task(self, description: str, total: int) -> Callable[[], None]:
        self.started.append(description)
        return lambda: None


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(model dir with tokenizer, held-out text, task file) of a tiny random Mixtral."""
    from wdmoe.eval.tasks import continuation_task, save_task
    from wdmoe.model.tiny import tiny_model
    from wdmoe.train.data import DOC_END
    from wdmoe.train.tokenizer import train_tokenizer

    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=30)) for _ in range(12)]
    root = tmp_path_factory.mktemp("tiny-lm")
    tokenizer = train_tokenizer(docs, vocab_size=300)
    model = tiny_model("mixtral", seed=3, vocab_size=300)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "heldout.txt").write_text("".join(doc + DOC_END for doc in docs), encoding="utf-8")
    save_task(continuation_task(docs, num_items=4, context_words=6, continuation_words=3), root / "task.jsonl")
    return root / "model", root / "heldout.txt", root / "task.jsonl"


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace = synthesize_trace(np.random.default_rng(1), 2, 8, 2, 2, 4, 5, popularity=1.0, num_devices=4)
    return trace.save(tmp_path_factory.mktemp("trace") / "synthetic.npz")


def _lm_setup(out: Path, tiny_lm: tuple[Path, Path, Path]) -> Setup:
    model, text, task = tiny_lm
    return Setup(out, Scenario.default(num_devices=4), realizations=2, model_dir=model, text=text, task=task,
                 max_tokens=60, task_items=3, block_size=16, requests=2, prompt_tokens=4, new_tokens=3)


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_theta_records_a_trace_scores_accuracy_and_caches_both(tmp_path: Path, tiny_lm) -> None:
    setup = _lm_setup(tmp_path, tiny_lm)

    result = run_theta(setup, NoProgress(), thetas=(0.0, 1.0))

    columns, rows = _read(result.csv)
    assert columns[:6] == ["policy", "theta", "perplexity", "next_token_accuracy", "task_accuracy",
                           "experts_per_token_mean"]
    assert set(LATENCY_COLUMNS) <= set(columns)
    assert [r["policy"] for r in rows] == ["topk", "wlr theta=0", "wlr theta=1"]
    # θ = 0 keeps the router's top-k (2 experts); θ = 1 keeps one expert per token, in eval and in replay
    assert [float(r["experts_per_token_mean"]) for r in rows] == [2.0, 2.0, 1.0]
    assert [float(r["experts_per_token"]) for r in rows] == [2.0, 2.0, 1.0]
    assert rows[0]["perplexity"] == rows[1]["perplexity"]
    _assert_png(result.png)
    again = CountingProgress()
    run_theta(setup, again, thetas=(0.0, 1.0))
    assert again.started == ["theta: replays"]  # no recording, no evaluation: both came from the cache


def test_broken_caches_are_named_and_rebuilt(tmp_path: Path, tiny_lm, caplog: pytest.LogCaptureFixture) -> None:
    setup = _lm_setup(tmp_path, tiny_lm)
    first = _read(run_theta(setup, NoProgress(), thetas=(0.0,)).csv)[1]
    accuracy = setup.cache_dir / "accuracy.json"
    (trace,) = setup.cache_dir.glob("trace-*.npz")
    accuracy.write_text(accuracy.read_text()[:40])  # what a kill mid-write by a non-atomic writer left
    trace.write_bytes(trace.read_bytes()[:100])

    again = CountingProgress()
    rebuilt = _read(run_theta(setup, again, thetas=(0.0,)).csv)[1]

    assert again.started == ["record trace", "accuracy", "theta: replays"]
    assert rebuilt == first
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert str(accuracy) in warned and str(trace) in warned
    accuracy.write_text(json.dumps({"topk|x": {"perplexity": "high"}}))  # valid JSON, wrong schema
    caplog.clear()
    run_theta(setup, CountingProgress(), thetas=(0.0,))
    assert str(accuracy) in caplog.text and "perplexity" in caplog.text


def test_pareto_marks_the_front_and_names_a_headline(tmp_path: Path, tiny_lm) -> None:
    setup = _lm_setup(tmp_path, tiny_lm)

    result = run_pareto(setup, NoProgress(), specs=[topk(), wlr(1.0), random_drop(0.5)])

    columns, rows = _read(result.csv)
    assert {"policy", "family", "next_token_accuracy", "tpot_p50_s", "accuracy_loss", "tpot_reduction",
            "on_front"} <= set(columns)
    assert [r["policy"] for r in rows] == ["topk", "wlr theta=1", "random p=0.5"]
    assert float(rows[0]["accuracy_loss"]) == 0.0 and float(rows[0]["tpot_reduction"]) == 0.0
    assert any(r["on_front"] == "True" for r in rows)
    assert len(result.notes) == 3
    assert result.notes[2] == ("headline.json not written: no joint point is faster than TopK within 1% on "
                               "accuracy_loss and perplexity_increase")  # no joint policy among the specs
    assert not (tmp_path / "headline.json").exists()
    _assert_png(result.png)


def test_bandwidth_devices_and_cdf_on_a_synthetic_trace(tmp_path: Path, trace_file: Path) -> None:
    setup = Setup(tmp_path, Scenario.default(num_devices=4), realizations=2, trace_file=trace_file)

    bandwidth = run_bandwidth(setup, NoProgress(), bandwidths_mhz=(5.0, 50.0))
    devices = run_devices(setup, NoProgress(), counts=(2, 4))
    cdf = run_cdf(setup, NoProgress())

    columns, rows = _read(bandwidth.csv)
    assert columns == ["bandwidth_mhz", "policy", *LATENCY_COLUMNS]
    assert len(rows) == 2 * 4
    topk_tpot = {float(r["bandwidth_mhz"]): float(r["tpot_p50_s"]) for r in rows if r["policy"] == "topk"}
    assert topk_tpot[50.0] < topk_tpot[5.0]  # more bandwidth, less airtime: same channels, same decisions
    columns, rows = _read(devices.csv)
    assert columns == ["devices", "policy", *LATENCY_COLUMNS] and len(rows) == 2 * 3
    columns, rows = _read(cdf.csv)
    assert columns == ["policy", "quantile", "token_latency_s"] and len(rows) == 3 * 201
    for result in (bandwidth, devices, cdf):
        _assert_png(result.png)


def test_remap_places_expert_e_on_device_e_mod_n(trace_file: Path) -> None:
    trace = Trace.load(trace_file)

    mapped = remap(trace, 3)

    assert mapped.num_devices == 3
    assert mapped.expert_device.tolist() == [[e % 3 for e in range(8)]] * trace.num_layers
    assert np.array_equal(mapped.topk_index, trace.topk_index)


def test_cli_runs_an_experiment_and_prints_json(tmp_path: Path, trace_file: Path) -> None:
    app = typer.Typer()
    app.command()(experiment_cmd.experiment)
    scenario = tmp_path / "four.toml"
    scenario.write_text("num_devices = 4\n", encoding="utf-8")

    result = CliRunner().invoke(app, ["cdf", "--out-dir", str(tmp_path / "out"), "--trace", str(trace_file),
                                      "--scenario", str(scenario), "--realizations", "1", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [e["name"] for e in report["experiments"]] == ["cdf"]
    assert (tmp_path / "out" / "cdf.png").is_file()


def test_cli_refuses_an_unknown_experiment_by_name(tmp_path: Path, trace_file: Path) -> None:
    app = typer.Typer()
    app.command()(experiment_cmd.experiment)

    result = CliRunner().invoke(app, ["latency", "--out-dir", str(tmp_path), "--trace", str(trace_file)])

    assert result.exit_code == 2
    assert "experiment 'latency' is unknown" in result.output
