"""Intra-server deployment: the whole (compressed) model on one server, hot experts in its fast memory tier.

Contract: `place_intra(requirement, statuses, bits, bs_layer_time_s)` returns an `IntraPlacement` when some
device holds the backbone in its accelerator memory and the backbone plus every expert in accelerator + host
memory (papers.md §4.3 [V]: intra-server cooperation "if the compressed model can be deployed on a single edge
server"), else None. Our reconstruction [R] of the tiers (the paper's are [U]): of the servers that fit, the one
with the most FLOP/s; the backbone, then experts in decreasing popularity, fill the accelerator tier; the rest
live in host memory and stream their weights at host_bytes_per_s. Each expert's cost is radio.compute's
roofline on one token with its tier's bandwidth, weighted by its popularity; no radio link is crossed:

    E[T_token] = sum over layers (bs_layer_time_s + sum over e of popularity[l, e] * roofline_tier(e)(1 token))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import roofline_time_s


@dataclass(frozen=True)
class Tier:
    """One memory tier of the server: its experts (layer position, expert), bytes, and expected cost.

    Attributes:
        name: "accelerator" or "host". capacity_bytes / used_bytes: its size and what the plan puts there
            (the accelerator's includes the backbone). bytes_per_s: its weight bandwidth.
        expected_s: expected seconds per token spent on this tier's experts.
    """

    name: str
    experts: tuple[tuple[int, int], ...]
    capacity_bytes: int
    used_bytes: int
    bytes_per_s: float
    expected_s: float


@dataclass(frozen=True)
class IntraPlacement:
    """The chosen server (index into the statuses), its tiers, and the expected per-token seconds."""

    server: int
    tiers: tuple[Tier, ...]
    expected_s: float


def _fits(status: ResourceStatus, backbone: int, experts: int) -> bool:
    return backbone <= status.free_memory_bytes and backbone + experts <= (
        status.free_memory_bytes + status.host_memory_bytes
    )


def place_intra(
    requirement: ModelRequirement,
    statuses: Sequence[ResourceStatus],
    bits: np.ndarray | None,
    bs_layer_time_s: float = 0.0,
) -> IntraPlacement | None:
    """The intra-server placement, or None when no single server holds the model (module docstring)."""
    sizes = requirement.bytes_for(bits)
    backbone = requirement.non_expert_bytes
    fitting = [k for k, s in enumerate(statuses) if _fits(s, backbone, int(sizes.sum()))]
    if not fitting:
        return None
    server = max(fitting, key=lambda k: (statuses[k].effective_profile().flops_per_s, -k))
    status = statuses[server]
    profile = status.effective_profile()
    fast: list[tuple[int, int]] = []
    slow: list[tuple[int, int]] = []
    used = backbone
    pop = requirement.popularity
    for flat in np.argsort(-pop.ravel(), kind="stable").tolist():
        pair = divmod(flat, pop.shape[1])
        if used + sizes[pair] <= status.free_memory_bytes:
            fast.append(pair)
            used += int(sizes[pair])
        else:
            slow.append(pair)

    def cost(pairs: list[tuple[int, int]], bytes_per_s: float) -> float:
        return float(
            sum(
                pop[p]
                * roofline_time_s(
                    1.0,
                    requirement.expert_flops_per_token,
                    float(sizes[p]),
                    profile.flops_per_s,
                    bytes_per_s,
                    profile.overhead_s,
                )
                for p in pairs
            )
        )

    host_bw = status.host_bytes_per_s * (1.0 - status.load)
    tiers = (
        Tier(
            "accelerator",
            tuple(fast),
            status.free_memory_bytes,
            used,
            profile.mem_bytes_per_s,
            cost(fast, profile.mem_bytes_per_s),
        ),
        Tier(
            "host",
            tuple(slow),
            status.host_memory_bytes,
            int(sum(sizes[p] for p in slow)),
            host_bw,
            cost(slow, host_bw) if slow else 0.0,
        ),
    )
    total = requirement.num_layers * bs_layer_time_s + sum(t.expected_s for t in tiers)
    return IntraPlacement(server, tiers, total)
