"""The experiments by name, and `all` (every one in turn, sharing the cached trace and accuracies)."""

from __future__ import annotations

from collections.abc import Callable

from wdmoe.experiments.bandwidth import run_bandwidth
from wdmoe.experiments.cdf import run_cdf
from wdmoe.experiments.devices import run_devices
from wdmoe.experiments.frontier import run_pareto
from wdmoe.experiments.setup import ExperimentResult, Progress, Setup
from wdmoe.experiments.theta import run_theta

EXPERIMENTS: dict[str, Callable[[Setup, Progress], ExperimentResult]] = {
    "theta": run_theta,
    "bandwidth": run_bandwidth,
    "devices": run_devices,
    "cdf": run_cdf,
    "pareto": run_pareto,
}
NAMES = (*EXPERIMENTS, "all")


def run_experiments(name: str, setup: Setup, progress: Progress) -> list[ExperimentResult]:
    """Run experiment `name` (or all of them); raises ValueError for an unknown name."""
    if name not in NAMES:
        raise ValueError(f"experiment {name!r} is unknown; choose one of {', '.join(NAMES)}")
    chosen = list(EXPERIMENTS) if name == "all" else [name]
    return [EXPERIMENTS[n](setup, progress) for n in chosen]
