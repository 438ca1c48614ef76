"""Deployment, the entry point: a model's requirement and the devices' statuses in, a `Plan` out.

Contract: `plan_deployment(requirement, statuses, radio, bits)` picks the strategy by papers.md §4.3's rule [V]:
intra-server (`intra`) if the model at the assigned bit widths fits one server, else inter-server (`inter`),
and scores the result and round-robin (expert e on device e mod D) with the same objective. `check_fits` raises
the `PlanError` that states the bytes needed and offered before any search runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.deployment import Copies, Plan, PlanKind, round_robin_copies
from wdmoe.plan.errors import PlanError, megabytes
from wdmoe.plan.inter import SearchConfig, place_inter
from wdmoe.plan.intra import place_intra
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus


@dataclass(frozen=True)
class PlannerConfig:
    """search: the inter-server search settings. allow_intra: False forces an inter-server plan."""

    search: SearchConfig = field(default_factory=SearchConfig)
    allow_intra: bool = True


def check_fits(
    requirement: ModelRequirement, statuses: Sequence[ResourceStatus], bits: np.ndarray | None = None
) -> None:
    """Raise PlanError unless the devices' free memory could hold every expert once (or one server the model)."""
    if not statuses:
        raise PlanError("the cluster has no live device; add devices (each needs free_memory_bytes)")
    sizes = requirement.bytes_for(bits)
    needed = int(sizes.sum())
    offered = sum(s.free_memory_bytes for s in statuses)
    one_server = any(
        s.free_memory_bytes >= requirement.non_expert_bytes
        and s.free_memory_bytes + s.host_memory_bytes >= requirement.non_expert_bytes + needed
        for s in statuses
    )
    if needed > offered and not one_server:
        widths = sorted(set(np.unique(requirement.check_bits(bits)).tolist()))
        raise PlanError(
            f"the model does not fit the cluster: its {sizes.size} experts ({requirement.num_layers} MoE layers x "
            f"{requirement.num_experts}, at {'/'.join(map(str, widths))} bits) need {megabytes(needed)}; the "
            f"{len(statuses)} devices offer {megabytes(offered)} of free memory in all (largest "
            f"{megabytes(max(s.free_memory_bytes for s in statuses))}); add devices or memory, or quantize experts "
            "to fewer bits"
        )


def copies_latency_s(
    copies: Copies,
    requirement: ModelRequirement,
    statuses: Sequence[ResourceStatus],
    radio: RadioSettings,
    bits: np.ndarray | None = None,
) -> float:
    """Expected per-token seconds of any placement (its primaries) on this cluster, by cost.LatencyModel."""
    model = LatencyModel(requirement, statuses, radio, bits)
    return model.token_s(np.array([[ids[0] for ids in row] for row in copies], dtype=np.int64))


def round_robin_latency_s(
    requirement: ModelRequirement,
    statuses: Sequence[ResourceStatus],
    radio: RadioSettings,
    bits: np.ndarray | None = None,
) -> float:
    """Expected per-token seconds of expert e on device e mod D (memory limits ignored), for comparison."""
    copies = round_robin_copies(requirement.num_layers, requirement.num_experts, len(statuses))
    return copies_latency_s(copies, requirement, statuses, radio, bits)


def plan_deployment(
    requirement: ModelRequirement,
    statuses: Sequence[ResourceStatus],
    radio: RadioSettings,
    bits: np.ndarray | None = None,
    config: PlannerConfig | None = None,
) -> Plan:
    """The deployment of `requirement` on the devices `statuses` (module docstring)."""
    config = config or PlannerConfig()
    statuses = tuple(statuses)
    check_fits(requirement, statuses, bits)
    widths = requirement.check_bits(bits)
    sizes = requirement.bytes_for(widths)
    model = LatencyModel(requirement, statuses, radio, widths)
    baseline = model.token_s(
        np.array(round_robin_copies(requirement.num_layers, requirement.num_experts, len(statuses)))[..., 0]
    )
    intra = place_intra(requirement, statuses, widths, radio.bs_layer_time_s) if config.allow_intra else None
    if intra is not None:
        copies: Copies = tuple(
            tuple((intra.server,) for _ in range(requirement.num_experts)) for _ in range(requirement.num_layers)
        )
        kind, expected = PlanKind.INTRA, intra.expected_s
    else:
        capacity = np.array([s.free_memory_bytes for s in statuses], dtype=np.int64)
        copies = place_inter(model, capacity, config.search)
        kind = PlanKind.INTER
        expected = model.token_s(np.array([[ids[0] for ids in row] for row in copies], dtype=np.int64))
    return Plan(
        kind,
        requirement.model_id,
        statuses,
        requirement.moe_layers,
        copies,
        widths,
        sizes,
        requirement.popularity,
        expected,
        baseline,
        intra.tiers if intra else (),
        intra.server if intra else None,
    )
