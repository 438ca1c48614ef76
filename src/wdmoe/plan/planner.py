"""Deployment, the entry point: a model's requirement and the devices' statuses in, a `Plan` out.

Contract: `plan_deployment(requirement, statuses, radio, bits, config)` scores every candidate with ONE objective,
`cost.LatencyModel` (the runtime's radio model: BS + link + device in every MoE layer), and returns the lowest:
the inter-server placement (`inter`'s heuristic, or `exact.solve_exact` with `config.exact`) and, when the model
fits one server, the best intra-server placement (`intra`). papers.md §4.3's rule [V] prefers intra-server
whenever the model fits; we choose by the objective instead, because an intra-server plan still crosses the
radio link to its server in every layer and can be the slower one (issue 15). The plan keeps every candidate's
latency and round-robin's (expert e on device e mod D), all under the same objective. `check_fits` raises the
`PlanError` that states the bytes needed and offered before any search runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.deployment import Candidate, Copies, Plan, PlanKind, round_robin_copies
from wdmoe.plan.errors import PlanError, megabytes
from wdmoe.plan.exact import ExactLimits, ExactSolution, solve_exact
from wdmoe.plan.inter import SearchConfig, search_primary, with_replicas
from wdmoe.plan.intra import IntraPlacement, Tier, place_intra
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus


@dataclass(frozen=True)
class PlannerConfig:
    """search: the inter-server heuristic's settings. allow_intra: False leaves intra-server plans out.
    exact: solve the inter-server placement exactly (plan.exact: by layers, or the whole MILP) within these limits
        instead of the heuristic, whose plan bounds the exact search from above."""

    search: SearchConfig = field(default_factory=SearchConfig)
    allow_intra: bool = True
    exact: ExactLimits | None = None


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


def _start(model: LatencyModel, capacity: np.ndarray, config: PlannerConfig) -> np.ndarray | None:
    """The heuristic's plan, an upper bound for the exact search's pruning (it never decides), or None where the
    heuristic packs nothing (the exact search still finds a packing if one exists)."""
    try:
        return search_primary(model, capacity, config.search)
    except PlanError:
        return None


def _inter(
    model: LatencyModel, capacity: np.ndarray, config: PlannerConfig
) -> tuple[Copies, float, ExactSolution | None]:
    if config.exact is not None:
        solution = solve_exact(model, capacity, config.exact, _start(model, capacity, config))
        primary = solution.primary
    else:
        solution, primary = None, search_primary(model, capacity, config.search)
    return with_replicas(model, primary, capacity, config.search.max_copies), model.token_s(primary), solution


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
    intra: IntraPlacement | None = place_intra(model, statuses) if config.allow_intra else None
    capacity = np.array([s.free_memory_bytes for s in statuses], dtype=np.int64)
    inter: tuple[Copies, float, ExactSolution | None] | None = None
    if int(sizes.sum()) <= int(capacity.sum()):
        try:
            inter = _inter(model, capacity, config)
        except PlanError:  # the heuristic could not pack the experts; an intra plan may still hold them
            if intra is None or config.exact is not None:
                raise
    candidates = []
    if inter is not None:
        candidates.append(Candidate("inter-server" + (" (exact)" if config.exact else ""), inter[1]))
    if intra is not None:
        candidates.append(Candidate(f"intra-server on {statuses[intra.server].device}", intra.expected_s))
    tiers: tuple[Tier, ...] = ()
    server: int | None = None
    gap: float | None = None
    if intra is not None and (inter is None or intra.expected_s < inter[1]):
        copies: Copies = tuple(
            tuple((intra.server,) for _ in range(requirement.num_experts)) for _ in range(requirement.num_layers)
        )
        kind, expected, tiers, server = PlanKind.INTRA, intra.expected_s, intra.tiers, intra.server
    elif inter is not None:
        copies, expected, solution = inter
        kind, gap = PlanKind.INTER, None if solution is None else solution.gap
    else:
        raise PlanError(f"the experts need {megabytes(sizes.sum())}; no single server holds the model and the "
                        f"devices offer {megabytes(capacity.sum())}; add memory or quantize experts")
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
        tiers,
        server,
        tuple(candidates),
        gap,
    )
