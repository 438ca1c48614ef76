"""What a simulated cell reports: per user and over all users, TTFT/TPOT/end-to-end percentiles, throughput.

Contract: `summarize_cell(runs, ...)` pools the runs of one (scenario, policy) over their channel realizations.
TTFT includes the queueing (`wdmoe.sim.cell`); TPOT is each request's mean decode step, so its percentiles are
over requests (a request of one token has none). Percentiles are `wdmoe.sim.report.percentiles` (p50, p95, p99,
mean; numpy's linear interpolation). Throughput is generated tokens (and finished requests) per modeled second of
the makespan, summed over realizations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wdmoe.sim.cell import CellRun, RequestResult
from wdmoe.sim.report import flatten, percentiles


def _times(results: Sequence[RequestResult]) -> dict[str, Any]:
    tpot = np.array([r.tpot_s for r in results])
    return {
        "requests": len(results),
        "ttft_s": percentiles(np.array([r.ttft_s for r in results])),
        "tpot_s": percentiles(tpot[np.isfinite(tpot)]),
        "queue_s": percentiles(np.array([r.queue_s for r in results])),
        "e2e_s": percentiles(np.array([r.e2e_s for r in results])),
    }


def summarize_cell(runs: Sequence[CellRun], scenario: str, policy: str, arrival: dict[str, Any],
                   seeds: Sequence[int]) -> dict[str, Any]:
    """One (scenario, policy) over its realizations (module docstring)."""
    results = [r for run in runs for r in run.requests]
    makespan = sum(run.makespan_s for run in runs)
    tokens = sum(r.tokens for r in results)
    sizes = np.concatenate([run.batch_sizes for run in runs]) if runs else np.zeros(0)
    users = sorted({r.user for r in results})
    return {
        "scenario": scenario,
        "policy": policy,
        "arrival": arrival,
        "realizations": len(runs),
        "seeds": list(seeds),
        "steps": int(sum(run.steps for run in runs)),
        "batch_size_mean": float(sizes.mean()) if sizes.size else 0.0,
        "batch_size_max": int(sizes.max(initial=0)),
        "makespan_s": makespan,
        "tokens": tokens,
        "tokens_per_s": tokens / makespan if makespan > 0 else None,
        "requests_per_s": len(results) / makespan if makespan > 0 else None,
        "energy_j_per_token": sum(r.energy_j for r in results) / max(tokens, 1),
        "bytes_on_air_per_request": sum(r.bytes_on_air for r in results) / max(len(results), 1),
        "overall": _times(results),
        "per_user": [{"user": u} | _times([r for r in results if r.user == u]) for u in users],
    }


def cell_rows(cells: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """CSV rows: per (scenario, policy), the cell (user "all", with its throughput) then one row per user, the
    percentiles as `ttft_p50_s`-style columns (`wdmoe.sim.report.flatten`)."""
    rows = []
    for c in cells:
        head = {"scenario": c["scenario"], "policy": c["policy"]}
        run = {k: c[k] for k in ("tokens_per_s", "requests_per_s", "batch_size_mean", "makespan_s")}
        rows.append(head | {"user": "all"} | flatten(c["overall"]) | run)
        rows.extend(head | flatten(u) | dict.fromkeys(run) for u in c["per_user"])
    return rows
