"""A deployment plan: which devices hold each (layer, expert), at which bit width, and what it is expected to cost.

Contract: a `Plan` is data. Device k of its `Placement` is `devices[k]` (the status the plan was made from, so
the updater can tell what changed); `copies[l][e]` lists expert e of MoE layer number l's devices, primary first
(the runtime serves from the first live one). `to_placement()` gives the `wdmoe.placement.Placement` that
`wdmoe split --plan`, `DistributedMoE.from_pretrained(..., placement=...)` and so `serve` take.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from wdmoe.placement import Placement
from wdmoe.plan.intra import Tier
from wdmoe.plan.status import ResourceStatus

Copies = tuple[tuple[tuple[int, ...], ...], ...]  # [layer position][expert] -> device indices, primary first


@dataclass(frozen=True)
class Candidate:
    """One placement the planner scored: a label ("inter-server", "intra-server on agx-0") and its expected
    per-token seconds under the planner's one objective (cost.LatencyModel)."""

    label: str
    latency_s: float


class PlanKind(Enum):
    """INTRA: the whole model on one server (memory tiers). INTER: experts spread over devices (papers.md §4.3)."""

    INTRA = "intra"
    INTER = "inter"


@dataclass(frozen=True, eq=False)
class Plan:
    """One deployment (module docstring).

    Attributes:
        kind: intra- or inter-server. model_id: the model it is for.
        devices: the device statuses it was made from; Placement device k is devices[k].
        moe_layers: decoder-layer indices of the MoE layers, in order.
        copies: [layer position][expert] -> device indices, primary first.
        bits, expert_bytes, popularity: (L, E) width, bytes at that width, and popularity it was planned with.
        expected_latency_s: expected per-token (decode) seconds by cost.LatencyModel (the radio link included).
        round_robin_latency_s: the same objective for expert e on device e mod D on the same cluster.
        tiers: intra plans only: the server's memory tiers. server: intra plans only: the device index.
        candidates: every placement the planner scored, under the same objective (the lowest was chosen).
        optimality_gap: inter plans solved with --exact only: the exact solver's relative gap (0.0: proven optimal).
    """

    kind: PlanKind
    model_id: str
    devices: tuple[ResourceStatus, ...]
    moe_layers: tuple[int, ...]
    copies: Copies
    bits: np.ndarray
    expert_bytes: np.ndarray
    popularity: np.ndarray
    expected_latency_s: float
    round_robin_latency_s: float | None = None
    tiers: tuple[Tier, ...] = ()
    server: int | None = None
    candidates: tuple[Candidate, ...] = ()
    optimality_gap: float | None = None

    @property
    def num_experts(self) -> int:
        return len(self.copies[0]) if self.copies else 0

    @property
    def device_names(self) -> tuple[str, ...]:
        return tuple(s.device for s in self.devices)

    def primary(self) -> np.ndarray:
        """(L, E) the serving device of every expert."""
        return np.array([[ids[0] for ids in row] for row in self.copies], dtype=np.int64)

    def memory_used_bytes(self) -> np.ndarray:
        """(D,) expert bytes each device holds, replicas included (an intra plan's backbone is not counted)."""
        return copies_memory_bytes(self.copies, self.expert_bytes, len(self.devices))

    def to_placement(self) -> Placement:
        return Placement(
            len(self.devices), self.num_experts, {layer: self.copies[pos] for pos, layer in enumerate(self.moe_layers)}
        )


def copies_memory_bytes(copies: Copies, expert_bytes: np.ndarray, num_devices: int) -> np.ndarray:
    """(D,) int64 bytes each device holds under `copies`, each copy of an expert at its (L, E) size."""
    used = np.zeros(num_devices, dtype=np.int64)
    for pos, row in enumerate(copies):
        for e, ids in enumerate(row):
            for d in ids:
                used[d] += int(expert_bytes[pos, e])
    return used


def round_robin_copies(num_layers: int, num_experts: int, num_devices: int) -> Copies:
    """WDMoE's default placement, expert e on device e mod D in every layer, as copies."""
    row = tuple((e % num_devices,) for e in range(num_experts))
    return tuple(row for _ in range(num_layers))
