"""Intra-server deployment: every expert on one server, hot experts in its fast memory tier, scored like any plan.

Contract: `place_intra(model, statuses)` returns the best `IntraPlacement` under `model` (cost.LatencyModel, the
objective every plan is scored by: the radio link BS -> server -> BS is crossed in every MoE layer, since the BS
keeps the backbone and the router), or None when no device holds the backbone in its accelerator memory and the
backbone plus every expert in accelerator + host memory (papers.md §4.3 [V]: intra-server cooperation "if the
compressed model can be deployed on a single edge server"). Our reconstruction [R] of the tiers (the paper's are
[U]): on each server that fits, the backbone, then experts in decreasing popularity per byte (memory-aware), fill
the accelerator tier; the rest live in host memory and stream their weights at host_bytes_per_s. Every fitting
server is scored and the lowest expected latency wins.

A host-tier expert enters the radio model's roofline as its `streamed_bytes`: its bytes times the accelerator's
over the host's bandwidth, so the roofline's weight term (bytes over the device's bytes/s) is the time to stream
it from host memory; its FLOPs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import roofline_time_s


@dataclass(frozen=True)
class Tier:
    """One memory tier of the server: its experts (layer position, expert), bytes, and expected cost.

    Attributes:
        name: "accelerator" or "host". capacity_bytes / used_bytes: its size and what the plan puts there
            (the accelerator's includes the backbone). bytes_per_s: its weight bandwidth.
        expected_s: expected compute seconds per token spent on this tier's experts (popularity x roofline, a
            part of the plan's latency shown for the reader; the plan's latency is the objective's).
    """

    name: str
    experts: tuple[tuple[int, int], ...]
    capacity_bytes: int
    used_bytes: int
    bytes_per_s: float
    expected_s: float


@dataclass(frozen=True)
class IntraPlacement:
    """The chosen server (index into the statuses), its tiers, and its expected per-token seconds (the objective)."""

    server: int
    tiers: tuple[Tier, ...]
    expected_s: float


def _fits(status: ResourceStatus, backbone: int, experts: int) -> bool:
    return backbone <= status.free_memory_bytes and backbone + experts <= (
        status.free_memory_bytes + status.host_memory_bytes
    )


def streamed_bytes(sizes: np.ndarray, host: Sequence[tuple[int, int]], status: ResourceStatus) -> np.ndarray:
    """(L, E) bytes the roofline sees: host-tier experts scaled by accelerator / host bandwidth (module docstring)."""
    out = sizes.astype(float)
    if host:
        ratio = status.profile.mem_bytes_per_s / status.host_bytes_per_s  # the (1 - load) of both cancels
        for pair in host:
            out[pair] *= ratio
    return out


def _tiers(model: LatencyModel, server: int, status: ResourceStatus) -> tuple[Tier, ...]:
    sizes = model.expert_bytes
    pop = model.requirement.popularity
    backbone = model.requirement.non_expert_bytes
    fast: list[tuple[int, int]] = []
    slow: list[tuple[int, int]] = []
    used = backbone
    for flat in np.argsort(-(pop / np.maximum(sizes, 1)).ravel(), kind="stable").tolist():
        pair = divmod(flat, pop.shape[1])
        if used + sizes[pair] <= status.free_memory_bytes:
            fast.append(pair)
            used += int(sizes[pair])
        else:
            slow.append(pair)
    profile = status.effective_profile()
    host_bw = status.host_bytes_per_s * (1.0 - status.load)

    def cost(pairs: list[tuple[int, int]], bytes_per_s: float) -> float:
        return float(sum(
            pop[p] * roofline_time_s(1.0, model.requirement.expert_flops_per_token, float(sizes[p]),
                                     profile.flops_per_s, bytes_per_s, profile.overhead_s)
            for p in pairs
        ))

    return (
        Tier("accelerator", tuple(fast), status.free_memory_bytes, used, profile.mem_bytes_per_s,
             cost(fast, profile.mem_bytes_per_s)),
        Tier("host", tuple(slow), status.host_memory_bytes, int(sum(sizes[p] for p in slow)), host_bw,
             cost(slow, host_bw) if slow else 0.0),
    )


def intra_latency_s(model: LatencyModel, server: int, status: ResourceStatus, host: Sequence[tuple[int, int]]) -> float:
    """The objective of every expert on `server`, the `host` ones streamed from host memory."""
    primary = np.full(model.expert_bytes.shape, server, dtype=np.int64)
    return model.token_s(primary, streamed_bytes(model.expert_bytes, host, status))


def place_intra(model: LatencyModel, statuses: Sequence[ResourceStatus]) -> IntraPlacement | None:
    """The best intra-server placement under `model`, or None when no single server holds the model."""
    backbone = model.requirement.non_expert_bytes
    total = int(model.expert_bytes.sum())
    best: IntraPlacement | None = None
    for server, status in enumerate(statuses):
        if not _fits(status, backbone, total):
            continue
        tiers = _tiers(model, server, status)
        expected = intra_latency_s(model, server, status, tiers[1].experts)
        if best is None or expected < best.expected_s:
            best = IntraPlacement(server, tiers, expected)
    return best
