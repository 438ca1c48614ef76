"""Experiment (c): modeled latency against the number of devices N, expert e of every layer on device e mod N.

The trace's router choices do not depend on the placement, so one trace serves every N: its expert_device table
is re-mapped, and the scenario gets N devices (drawn from the same seeds, so the first devices' links repeat).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from wdmoe.experiments import plots
from wdmoe.experiments.inputs import experiment_trace
from wdmoe.experiments.latency import latency, write_csv
from wdmoe.experiments.policies import joint_ratio, topk, wlr
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup
from wdmoe.sim.trace import Trace

DEVICE_COUNTS = (2, 4, 8)
SHOWN = ("devices", "policy", "ttft_p50_s", "tpot_p50_s", "tpot_p95_s", "experts_per_token")


def remap(trace: Trace, num_devices: int) -> Trace:
    """The trace with expert e of every layer on device e mod num_devices."""
    table = np.broadcast_to(np.arange(trace.num_experts) % num_devices, trace.expert_device.shape).copy()
    return dataclasses.replace(trace, num_devices=num_devices, expert_device=table)


def run_devices(setup: Setup, progress: Progress, counts: tuple[int, ...] = DEVICE_COUNTS) -> ExperimentResult:
    trace = experiment_trace(setup, progress)
    specs = [topk(), wlr(0.5), joint_ratio()]
    tick = progress.task("devices: replays", len(counts) * len(specs) * setup.realizations)
    rows: list[dict[str, Any]] = []
    for n in counts:
        mapped = remap(trace, n)
        scenario = setup.scenario.model_copy(update={"num_devices": n})
        for spec in specs:
            rows.append({"devices": n, "policy": spec.label,
                         **latency(mapped, scenario, spec, setup.realizations, tick)})
    csv = write_csv(setup.out_dir / "devices.csv", rows)
    png = _plot(rows, [s.label for s in specs], setup)
    return ExperimentResult("devices", csv, png, rows, SHOWN)


def _plot(rows: list[dict[str, Any]], labels: list[str], setup: Setup) -> Any:
    fig, axes = plots.latency_curves(rows, labels, "devices", "devices N (expert e on device e mod N)")
    for ax in axes:
        ax.set_xticks(sorted({r["devices"] for r in rows}))
    return plots.save(fig, setup.out_dir / "devices.png",
                      f"Modeled latency vs number of devices ({setup.realizations} channel draws per point)")
