"""Modeled latency of a policy on a trace over channel realizations (the simulator's batched replay).

Contract: realization r replays with seed `scenario.seed + r` (as `wdmoe.sim.grid`), with a fresh policy from
`PolicySpec.build(seed)`; `latency_columns` flattens `wdmoe.sim.report.summarize` into the CSV columns every
experiment shares (seconds; TTFT per request, TPOT per request, token = each decode step).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from wdmoe.atomic import write_atomic
from wdmoe.config import Scenario
from wdmoe.experiments.policies import PolicySpec
from wdmoe.sim.report import summarize
from wdmoe.sim.simulate import Replay, replay
from wdmoe.sim.trace import Trace

LATENCY_COLUMNS = ("ttft_p50_s", "ttft_p95_s", "tpot_p50_s", "tpot_p95_s", "token_p50_s", "token_p95_s",
                   "token_mean_s", "experts_per_token", "energy_j_per_token", "bytes_per_request")


def replays(trace: Trace, scenario: Scenario, spec: PolicySpec, realizations: int,
            tick: Callable[[], None]) -> list[Replay]:
    """One replay per realization (batched where the policy allows it)."""
    out = []
    for r in range(realizations):
        seed = scenario.seed + r
        out.append(replay(trace, scenario, spec.build(seed), seed))
        tick()
    return out


def latency_columns(trace: Trace, runs: Sequence[Replay]) -> dict[str, float]:
    """The LATENCY_COLUMNS of the pooled replays."""
    s = summarize(trace, runs, "", 0.0)
    return {
        "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p95_s": s["ttft_s"]["p95"],
        "tpot_p50_s": s["tpot_s"]["p50"], "tpot_p95_s": s["tpot_s"]["p95"],
        "token_p50_s": s["token_latency_s"]["p50"], "token_p95_s": s["token_latency_s"]["p95"],
        "token_mean_s": s["token_latency_s"]["mean"], "experts_per_token": s["experts_per_token"],
        "energy_j_per_token": s["energy_j_per_token"], "bytes_per_request": s["bytes_on_air_per_request"],
    }


def latency(trace: Trace, scenario: Scenario, spec: PolicySpec, realizations: int,
            tick: Callable[[], None]) -> dict[str, float]:
    return latency_columns(trace, replays(trace, scenario, spec, realizations, tick))


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows with the same keys as CSV with a header; floats as repr (round-trips exactly)."""

    def fill(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    return write_atomic(path, fill)
