"""Simulation reports: percentiles are numpy's, TTFT/TPOT/tokens come from the right steps, totals add up."""

from __future__ import annotations

import numpy as np
import pytest

from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.sim.grid import simulate_grid
from wdmoe.sim.report import flatten, percentiles, request_times, rows_csv, summarize
from wdmoe.sim.simulate import replay
from wdmoe.sim.synthesize import synthesize_trace


def test_percentiles_hand_case() -> None:
    values = np.array([4.0, 1.0, 3.0, 2.0, 10.0])  # sorted 1 2 3 4 10; linear interpolation at (n - 1) q

    got = percentiles(values)

    assert got == {"p50": 3.0, "p95": pytest.approx(4.0 + 0.8 * 6.0), "p99": pytest.approx(4.0 + 0.96 * 6.0),
                   "mean": 4.0}
    assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(np.percentile(values, [50, 95, 99]).tolist())
    assert percentiles(np.array([]))["p50"] is None


def test_summary_pools_realizations_and_matches_numpy() -> None:
    trace = synthesize_trace(np.random.default_rng(1), 3, 6, 2, num_requests=3, prompt_len=4, new_tokens=5,
                             popularity=0.8, num_devices=3)
    scenario = Scenario.default(3)
    replays = [replay(trace, scenario, make_policy("wlr", theta=0.6), seed=s) for s in (0, 1)]

    summary = summarize(trace, replays, "default", 0.6)

    step_s = np.concatenate([r.layer_s.sum(axis=1) for r in replays])  # (2 S,)
    decode = np.tile(trace.step_phase == 1, 2)
    expected = np.percentile(step_s[decode], [50, 95, 99])
    got = summary["token_latency_s"]
    assert [got["p50"], got["p95"], got["p99"]] == pytest.approx(expected.tolist(), rel=1e-12)
    ttft, tpot, _ = request_times(trace, replays[0])
    assert ttft.tolist() == pytest.approx(replays[0].layer_s.sum(axis=1)[[0, 5, 10]].tolist())
    assert tpot[1] == pytest.approx(replays[0].layer_s.sum(axis=1)[6:10].mean())
    assert summary["requests"] == 6 and summary["decisions"] == 2 * trace.num_decisions
    kept = sum(int(r.kept.sum()) for r in replays)
    assert summary["experts_per_token"] == pytest.approx(kept / (2 * trace.num_decisions))
    assert summary["dropped_experts"] == 2 * 2 * trace.num_decisions - kept
    assert summary["bytes_on_air"] == pytest.approx(sum((r.bits_dl + r.bits_ul).sum() for r in replays) / 8)


def test_grid_rows_and_csv_columns() -> None:
    trace = synthesize_trace(np.random.default_rng(2), 2, 4, 2, 2, 3, 3, num_devices=2)
    calls: list[int] = []

    summaries = simulate_grid(trace, {"a": Scenario.default(2), "b": Scenario.default(2).model_copy(
        update={"bandwidth_hz": 5e6})}, ["topk", "joint"], realizations=2, on_replay=lambda: calls.append(1))

    assert [(s["scenario"], s["policy"]) for s in summaries] == [("a", "topk"), ("a", "joint"), ("b", "topk"),
                                                                  ("b", "joint")]
    assert len(calls) == 8 and summaries[0]["seeds"] == [0, 1]
    assert summaries[2]["ttft_s"]["mean"] > summaries[0]["ttft_s"]["mean"]  # a quarter of the band is slower
    header = rows_csv(summaries).splitlines()[0].split(",")
    assert {"token_latency_p50_s", "ttft_p99_s", "tpot_mean_s", "bytes_on_air", "energy_j"} <= set(header)
    assert flatten(summaries[0])["seeds"] == "0 1"
