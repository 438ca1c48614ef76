"""Experiment (d): the CDF of the per-token latency (each decode step) pooled over channel realizations.

The CSV holds the empirical quantiles at 201 levels per policy (the full sample would be large); the figure draws
the full empirical CDF.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from wdmoe.experiments import plots
from wdmoe.experiments.inputs import experiment_trace
from wdmoe.experiments.latency import replays, write_csv
from wdmoe.experiments.policies import joint_ratio, topk, wlr
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup
from wdmoe.sim.report import request_times

LEVELS = np.linspace(0.0, 1.0, 201)
SHOWN = ("policy", "quantile", "token_latency_s")


def run_cdf(setup: Setup, progress: Progress) -> ExperimentResult:
    trace = experiment_trace(setup, progress)
    specs = [topk(), wlr(0.5), joint_ratio()]
    tick = progress.task("cdf: replays", len(specs) * setup.realizations)
    samples: dict[str, np.ndarray] = {}
    for spec in specs:
        runs = replays(trace, setup.scenario, spec, setup.realizations, tick)
        samples[spec.label] = np.sort(np.concatenate([request_times(trace, r)[2] for r in runs]))
    rows: list[dict[str, Any]] = [
        {"policy": label, "quantile": float(q), "token_latency_s": float(v)}
        for label, sample in samples.items()
        for q, v in zip(LEVELS, np.quantile(sample, LEVELS), strict=True)
    ]
    csv = write_csv(setup.out_dir / "cdf.csv", rows)
    png = _plot(samples, setup)
    shown = [r for r in rows if round(r["quantile"], 3) in (0.5, 0.9, 0.99)]
    return ExperimentResult("cdf", csv, png, shown, SHOWN)


def _plot(samples: dict[str, np.ndarray], setup: Setup) -> Any:
    fig, (ax,) = plots.figure(1, width=6.4, height=4.2)
    color = plots.colors(list(samples))
    for label, sample in samples.items():
        ax.step(1e3 * sample, np.arange(1, sample.size + 1) / sample.size, where="post", color=color[label],
                label=f"{label} (median {1e3 * np.median(sample):.2f} ms)")
    ax.set_xscale("log")
    plots.finish(ax, "per-token latency (ms, log scale)", "CDF",
                 f"{samples[next(iter(samples))].size} decode steps per policy")
    return plots.save(fig, setup.out_dir / "cdf.png",
                      f"Per-token latency over {setup.realizations} channel realizations")
