"""Experiment (b): modeled latency against the total bandwidth, for TopK with equal and with min-max bandwidth,
WLR θ=0.5 and the joint policy (the scenario's bandwidth_hz replaced, everything else kept)."""

from __future__ import annotations

from typing import Any

from wdmoe.experiments import plots
from wdmoe.experiments.inputs import experiment_trace
from wdmoe.experiments.latency import latency, write_csv
from wdmoe.experiments.policies import joint_ratio, topk, topk_minmax, wlr
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup

BANDWIDTHS_MHZ = (5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0)
SHOWN = ("bandwidth_mhz", "policy", "ttft_p50_s", "tpot_p50_s", "tpot_p95_s", "experts_per_token")


def run_bandwidth(setup: Setup, progress: Progress,
                  bandwidths_mhz: tuple[float, ...] = BANDWIDTHS_MHZ) -> ExperimentResult:
    trace = experiment_trace(setup, progress)
    specs = [topk(), topk_minmax(), wlr(0.5), joint_ratio()]
    tick = progress.task("bandwidth: replays", len(bandwidths_mhz) * len(specs) * setup.realizations)
    rows: list[dict[str, Any]] = []
    for mhz in bandwidths_mhz:
        scenario = setup.scenario.model_copy(update={"bandwidth_hz": mhz * 1e6})
        for spec in specs:
            rows.append({"bandwidth_mhz": mhz, "policy": spec.label,
                         **latency(trace, scenario, spec, setup.realizations, tick)})
    csv = write_csv(setup.out_dir / "bandwidth.csv", rows)
    png = _plot(rows, [s.label for s in specs], setup)
    return ExperimentResult("bandwidth", csv, png, rows, SHOWN)


def _plot(rows: list[dict[str, Any]], labels: list[str], setup: Setup) -> Any:
    fig, _ = plots.latency_curves(rows, labels, "bandwidth_mhz", "total bandwidth (MHz)")
    return plots.save(fig, setup.out_dir / "bandwidth.png",
                      f"Modeled latency vs total bandwidth ({setup.realizations} channel draws per point)")
