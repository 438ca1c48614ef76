"""Perception in the live runtime: each live device of a running pool reports what it holds and how fast it ran.

Contract: `device_reports(pool, steps, dead)` returns one `DeviceReport` per live device of a pool, read from the
pool's own attributes (nothing is added to the pool classes): the in-process pool's `ExpertWorker`s give the
experts held and their bytes in memory; the Ray pool asks its live actors (`RayDevicePool.held`). Measured compute
comes from the telemetry: each device's summed compute seconds and assignments over `steps`.

`live_status(declared, report, now_s)` is the `ResourceStatus` a device publishes: its declared resources (the
cluster file: profile, memory offered to experts, link) stamped `now_s`, with the load measured when a
`reference_s_per_assignment` is given [R: load = 1 - reference / measured, clipped to [0, 0.95]]. The memory a
device holds is checked against what it offers, not published as "free": the plan's free memory is the budget
for expert weights, and holding the plan's experts is not a change of resources.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdmoe.plan.errors import ClusterError
from wdmoe.plan.status import ResourceStatus


@dataclass(frozen=True)
class DeviceReport:
    """One live device: runtime id, experts and bytes of expert weights held, measured compute (s, count)."""

    device: int
    experts_held: int
    weight_bytes: int
    compute_s: float = 0.0
    assignments: int = 0

    @property
    def s_per_assignment(self) -> float | None:
        return self.compute_s / self.assignments if self.assignments else None


def held_by_device(pool: Any, dead: frozenset[int] = frozenset()) -> dict[int, tuple[int, int]]:
    """{device: (experts held, weight bytes)} of the pool's live devices."""
    workers = getattr(pool, "workers", None)
    if workers is not None:  # LocalDevicePool: its ExpertWorkers, in device order
        return {w.device: (w.num_experts_held, w.weight_bytes) for w in workers if w.device not in dead}
    held = getattr(pool, "held", None)
    if held is not None:  # RayDevicePool: one small call per live actor
        return {d: v for d, v in held().items() if d not in dead}
    raise TypeError(f"{type(pool).__name__} cannot report its devices (no `workers` and no `held()`)")


def device_reports(pool: Any, steps: Iterable[Any] = (), dead: frozenset[int] = frozenset()) -> list[DeviceReport]:
    """One report per live device (module docstring); `steps` are telemetry `StepRecord`s."""
    held = held_by_device(pool, dead)
    size = max(held, default=-1) + 1
    compute_s, assignments = np.zeros(size), np.zeros(size, dtype=np.int64)
    for step in steps:
        for record in step.layers:
            n = min(size, len(record.device_time_s))
            compute_s[:n] += record.device_time_s[:n]
            assignments[:n] += record.assignments[:n]
    return [
        DeviceReport(d, experts, nbytes, float(compute_s[d]), int(assignments[d]))
        for d, (experts, nbytes) in sorted(held.items())
    ]


def live_status(
    declared: ResourceStatus,
    report: DeviceReport,
    now_s: float,
    reference_s_per_assignment: float | None = None,
) -> ResourceStatus:
    """The status device `declared.device` publishes now (module docstring)."""
    if report.weight_bytes > declared.free_memory_bytes:
        raise ClusterError(
            f"device {declared.device!r} holds {report.weight_bytes:,} bytes of experts but offers "
            f"{declared.free_memory_bytes:,} bytes; its split does not fit its memory"
        )
    load = declared.load
    measured = report.s_per_assignment
    if reference_s_per_assignment is not None and measured is not None and measured > 0:
        load = float(np.clip(1.0 - reference_s_per_assignment / measured, 0.0, 0.95))
    return dataclasses.replace(declared, timestamp_s=now_s, load=load)

