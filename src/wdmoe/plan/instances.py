"""Random small clusters for measuring the placement heuristic against the exact solver (tests, bench).

Contract: `small_cluster(seed)` returns a `SmallCluster`: a `LatencyModel` on 1-3 MoE layers x 3-6 experts, top-1
or top-2, 2-4 devices of random presets, loads and fixed link rates (1 Mbit/s .. 1 Gbit/s), mixed bit widths
(so experts differ in size), and per-device memory equal to a random placement's bytes plus a slack of 2% to
200% of all the experts' bytes per device (tight memory in half the draws), or the given `slack` (0.0: memory
exactly full, a bin-packing puzzle). A placement within memory always exists. Everything is drawn from
`np.random.default_rng(seed)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS

SLACKS = (0.02, 0.05, 0.1, 0.2, 0.5, 2.0)  # extra memory per device, times a uniform draw, as a share of all bytes


@dataclass(frozen=True, eq=False)
class SmallCluster:
    """One random instance: the objective, each device's capacity (D,) bytes, and the statuses it came from."""

    model: LatencyModel
    capacity_bytes: np.ndarray
    statuses: tuple[ResourceStatus, ...]


def small_cluster(seed: int, slack: float | None = None) -> SmallCluster:
    """A random small cluster (module docstring); `slack` (a share of all bytes) fixes the draw's slack."""
    rng = np.random.default_rng(seed)
    layers, experts = int(rng.integers(1, 4)), int(rng.integers(3, 7))
    top_k, devices = int(rng.integers(1, 3)), int(rng.integers(2, 5))
    popularity = rng.dirichlet(np.full(experts, rng.choice([0.3, 1.0, 3.0])), size=layers) * top_k
    requirement = ModelRequirement.build("small", tuple(range(layers)), experts, top_k,
                                         int(rng.choice([64, 192, 512])), 32, int(rng.integers(20_000, 400_000)),
                                         1_000, popularity)
    bits = rng.choice([32, 16, 8, 4], size=(layers, experts))
    sizes = requirement.bytes_for(bits)
    owner = rng.integers(devices, size=sizes.size)
    drawn = float(rng.choice(SLACKS))
    share = drawn if slack is None else slack
    capacity = (np.bincount(owner, weights=sizes.ravel(), minlength=devices)
                + share * rng.random(devices) * sizes.sum()).astype(np.int64)
    names = sorted(PRESETS)
    statuses = tuple(
        ResourceStatus(f"d{d}", PRESETS[str(rng.choice(names))], int(capacity[d]),
                       link_rate_bps=float(10 ** rng.uniform(6, 9)), load=float(rng.uniform(0, 0.8)))
        for d in range(devices)
    )
    radio = RadioSettings(bandwidth_hz=float(rng.choice([5e6, 20e6, 100e6])),
                          bs_layer_time_s=float(rng.uniform(0, 3e-4)))
    return SmallCluster(LatencyModel(requirement, statuses, radio, bits), capacity, statuses)
