"""Every bench/gpu script runs with --small --json on the CPU and prints the keys docs/gpu.md and summary.py read.

The four scripts start at once (each pays its own torch import) and the set stays well under a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench" / "gpu"
SCRIPTS = ("expert_ffn", "bs_step", "split_vs_unsplit", "calibrate")
TIMEOUT_S = 240  # the CPU timings themselves take seconds; the rest is importing torch on a busy machine


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    procs = {
        name: subprocess.Popen([sys.executable, str(BENCH / f"{name}.py"), "--small", "--json"], cwd=BENCH,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in SCRIPTS
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        assert proc.returncode == 0, f"{name}.py --small --json failed:\n{stderr[-2000:]}"
        out[name] = json.loads(stdout)
    return out


def test_expert_ffn_reports_roofline_fractions_per_token_count(results) -> None:
    r = results["expert_ffn"]

    assert r["variants"] == ["eager", "torch", "separate"]  # torch.compile is left out of --small runs
    assert [row["tokens"] for row in r["rows"]] == [1, 2, 4, 8, 16, 32, 64]
    assert {"matmul_flops_per_s", "copy_bytes_per_s"} <= set(r["ceilings"])
    for row in r["rows"]:
        assert set(row["time_s"]) == set(row["fraction"]) == {"eager", "torch", "separate"}
        assert row["fraction"]["eager"] == pytest.approx(row["roofline_s"] / row["time_s"]["eager"])
    assert set(r["meets_target"]) == {"eager", "torch", "separate"}
    assert r["rel_err_vs_fp32"]["eager"] < 1e-4  # --small runs in fp32


def test_bs_step_times_decode_at_two_contexts_and_prefill(results) -> None:
    rows = results["bs_step"]["rows"]

    assert [(x["phase"], x["tokens"], x["context"]) for x in rows] == [
        ("decode", 1, 16), ("decode", 1, 64), ("prefill", 32, 0), ("decode static", 1, 16), ("decode static", 1, 64)
    ]
    assert all(x["time_s"] > 0 and x["roofline_s"] > 0 for x in rows)


def test_split_vs_unsplit_reports_ratios_and_identical_tokens(results) -> None:
    r = results["split_vs_unsplit"]

    for phase in ("decode", "prefill"):
        tps = r[f"{phase}_tokens_per_s"]
        assert r[f"{phase}_ratio"] == pytest.approx(tps["split"] / tps["unsplit"])
    assert r["tokens_identical"] is True and r["first_divergence"] is None
    assert r["prefill_logits_rel_err"] < 1e-5
    assert r["syncs_per_decode_step"] is None  # counted on CUDA only
    assert r["cuda_graphs"] is False and r["decode_ratio_no_graphs"] is None  # CUDA graphs: on CUDA only
    assert r["cuda_graphs_bit_identical"] is None and r["tokens_identical_without_graphs"] is None
    times = r["times_s"]
    assert r["decode_ratio_fastest"] == pytest.approx(min(times["decode_ref"]) / min(times["decode_ours"]))


def test_calibrate_small_fits_or_says_why_not(results) -> None:
    r = results["calibrate"]  # CPU timings under load may have no roofline shape: then the reason is reported

    assert len(r["tokens"]) == len(r["measured_s"]) == 7
    assert (r["profile"] is None) == (r["fit_error"] is not None)
    if r["profile"] is not None:
        assert set(r["profile"]) >= {"flops_per_s", "mem_bytes_per_s", "overhead_s"}
        assert r["max_rel_residual"] == pytest.approx(max(abs(x) for x in r["rel_residuals"]))


def test_summary_renders_the_four_tables(results, tmp_path: Path) -> None:
    for name, result in results.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(result))

    text = subprocess.run([sys.executable, str(BENCH / "summary.py"), str(tmp_path)], capture_output=True, text=True,
                          check=True, timeout=60).stdout

    for heading in ("### (a) expert FFN", "### (b) BS step", "### (c) split vs unsplit", "### (d) calibrated"):
        assert heading in text


def test_calibrate_recovers_the_roofline_behind_timings_in_an_expert_ffn_file(results, tmp_path: Path) -> None:
    timings = dict(results["expert_ffn"])  # the real file's layout, with times drawn from a known roofline
    flops, weight_bytes = timings["flops_per_token"], timings["weight_bytes"]
    flops_per_s, mem_bytes_per_s, overhead_s = 5e11, 2e10, 3e-5
    tokens = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    timings["rows"] = [
        {"tokens": n, "time_s": {"eager": max(n * flops / flops_per_s, weight_bytes / mem_bytes_per_s) + overhead_s}}
        for n in tokens
    ]
    path = tmp_path / "expert_ffn.json"
    path.write_text(json.dumps(timings))

    proc = subprocess.run([sys.executable, str(BENCH / "calibrate.py"), "--timings", str(path), "--json"],
                          cwd=BENCH, capture_output=True, text=True, check=True, timeout=TIMEOUT_S)
    r = json.loads(proc.stdout)

    assert r["source"] == str(path)
    assert r["profile"]["flops_per_s"] == pytest.approx(flops_per_s, rel=1e-6)
    assert r["profile"]["mem_bytes_per_s"] == pytest.approx(mem_bytes_per_s, rel=1e-6)
    assert r["profile"]["overhead_s"] == pytest.approx(overhead_s, rel=1e-6)
    assert r["max_rel_residual"] < 1e-9
    assert r["preset_line"].startswith('"cpu-')
