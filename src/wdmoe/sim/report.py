"""What a simulation reports: per (scenario, policy), latency percentiles, TTFT/TPOT, bytes, energy, experts.

Contract: `summarize(trace, replays)` pools the replays of one (scenario, policy) over their channel
realizations. Per-token latency is the modeled latency of each decode step (each yields one token); TTFT is a
request's prefill step, TPOT the mean of its decode steps (`wdmoe.radio.latency.request_times`, the array form of
`request_latency`). Percentiles are numpy's linear interpolation. `rows_csv` flattens the summaries into one CSV
row each.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from wdmoe.radio.latency import request_times as radio_request_times
from wdmoe.sim.simulate import Replay
from wdmoe.sim.trace import DECODE, Trace

QUANTILES = (50, 95, 99)


def percentiles(values: np.ndarray) -> dict[str, float | None]:
    """{p50, p95, p99, mean} of `values` (numpy's linear interpolation); None for an empty sample."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        empty: dict[str, float | None] = {f"p{q}": None for q in QUANTILES}
        return empty | {"mean": None}
    qs = np.percentile(values, QUANTILES)
    out: dict[str, float | None] = {f"p{q}": float(v) for q, v in zip(QUANTILES, qs, strict=True)}
    return out | {"mean": float(values.mean())}


def request_times(trace: Trace, replay: Replay) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(TTFT per request, TPOT per request (nan without decode steps), latency of every decode step) in s."""
    step_s = replay.layer_s.sum(axis=1)  # (S,)
    decode = trace.step_phase == DECODE
    times = radio_request_times(step_s, trace.step_request, decode, trace.num_requests)
    return times.ttft_s, times.tpot_s, step_s[decode]


def summarize(trace: Trace, replays: Sequence[Replay], scenario: str, theta: float) -> dict[str, Any]:
    """One (scenario, policy) over its realizations (module docstring)."""
    times = [request_times(trace, r) for r in replays]
    ttft = np.concatenate([t[0] for t in times])
    tpot = np.concatenate([t[1] for t in times])
    token = np.concatenate([t[2] for t in times])
    bits = sum(float(r.bits_dl.sum() + r.bits_ul.sum()) for r in replays)
    energy = sum(float(r.energy_j.sum()) for r in replays)
    kept = sum(int(r.kept.sum()) for r in replays)
    routed = sum(int(r.routed.sum()) for r in replays)
    runs = len(replays)
    requests = trace.num_requests * runs
    generated = (trace.num_requests + int((trace.step_phase == DECODE).sum())) * runs  # one token per step
    return {
        "scenario": scenario,
        "policy": replays[0].policy if replays else "",
        "theta": theta,
        "realizations": runs,
        "seeds": [r.seed for r in replays],
        "requests": requests,
        "decisions": trace.num_decisions * runs,
        "token_latency_s": percentiles(token),
        "ttft_s": percentiles(ttft),
        "tpot_s": percentiles(tpot[np.isfinite(tpot)]),
        "bytes_on_air": bits / 8,
        "bytes_on_air_per_request": bits / 8 / max(requests, 1),
        "energy_j": energy,
        "energy_j_per_request": energy / max(requests, 1),
        "energy_j_per_token": energy / max(generated, 1),
        "experts_per_token": kept / max(routed / max(trace.top_k, 1), 1),
        "dropped_experts": routed - kept,
        "dropped_fraction": (routed - kept) / max(routed, 1),
    }


def flatten(summary: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: nested percentile dicts become `token_latency_p50_s`-style columns; seeds are joined."""
    row: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            stem = key.removesuffix("_s")
            unit = "_s" if key.endswith("_s") else ""
            row.update({f"{stem}_{q}{unit}": v for q, v in value.items()})
        elif isinstance(value, list):
            row[key] = " ".join(str(v) for v in value)
        else:
            row[key] = value
    return row


def rows_csv(summaries: Sequence[dict[str, Any]], flat: bool = False) -> str:
    """The summaries as CSV text with a header row (`flat`: rows already flat, e.g. `cell_report.cell_rows`)."""
    rows = list(summaries) if flat else [flatten(s) for s in summaries]
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()
