"""Inter-server deployment: each (layer, expert) onto devices, minimizing the expected per-token latency.

Contract: `place_inter(model, capacity_bytes, config)` returns the copies of every expert, primary first, such
that the bytes on every device stay within its capacity, or raises `PlanError` with the sizes. The algorithm is
our reconstruction [R] of papers.md §4.3's greedy (the paper's algorithm is [U]); the objective is `cost.LatencyModel`:

1. Greedy: (layer, expert) pairs in decreasing popularity; each goes to the device with room that minimizes the
   expected latency of its layer given the experts placed so far (ties: the device with more free memory). If the
   greedy strands an expert, first-fit-decreasing by bytes (onto the device with the most free memory) is the
   start instead.
2. Local search: per layer, move one expert to another device with room, or swap two experts of the layer on
   different devices; take the best improving step, until a pass improves nothing (at most `passes` passes).
3. Replication: while memory allows, experts in decreasing popularity get a further copy (up to `max_copies`)
   on the device that would serve their layer best if the primary's device left (the runtime's failover goes to
   the first live copy). Replicas change no expected latency: the primary serves while it lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.errors import PlanError, megabytes

_TOL = 1e-12  # relative: an improvement smaller than this is rounding, not progress


@dataclass(frozen=True)
class SearchConfig:
    """max_copies: copies per expert, primary included (1: no replicas). passes: local-search passes at most."""

    max_copies: int = 2
    passes: int = 6


def _order(popularity: np.ndarray) -> list[tuple[int, int]]:
    flat = np.argsort(-popularity.ravel(), kind="stable")
    return [(int(i) // popularity.shape[1], int(i) % popularity.shape[1]) for i in flat]


def _best(options: list[tuple[float, float, int]]) -> int:
    """The device of the lowest cost; among costs equal up to rounding, the one with the most free memory."""
    low = min(cost for cost, _, _ in options)
    _, neg_device = max((free, -d) for cost, free, d in options if cost <= low * (1 + 1e-9) + 1e-15)
    return -neg_device


def _greedy(model: LatencyModel, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    sizes = model.expert_bytes
    primary = np.full(sizes.shape, -1, dtype=np.int64)
    used = np.zeros(capacity.shape, dtype=np.int64)
    for layer, expert in _order(model.requirement.popularity):
        options = []
        for d in np.flatnonzero(capacity - used >= sizes[layer, expert]).tolist():
            row = primary[layer].copy()
            row[expert] = d
            options.append((model.layer_s(layer, row), float(capacity[d] - used[d]), d))
        if not options:
            return None
        d = _best(options)
        primary[layer, expert] = d
        used[d] += sizes[layer, expert]
    return primary, used


def _first_fit(model: LatencyModel, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sizes = model.expert_bytes
    primary = np.full(sizes.shape, -1, dtype=np.int64)
    used = np.zeros(capacity.shape, dtype=np.int64)
    for flat in np.argsort(-sizes.ravel(), kind="stable").tolist():
        layer, expert = divmod(flat, sizes.shape[1])
        d = int(np.argmax(capacity - used))
        if capacity[d] - used[d] < sizes[layer, expert]:
            raise PlanError(
                f"the experts do not pack onto the devices: expert {expert} of MoE layer {layer} needs "
                f"{megabytes(sizes[layer, expert])}, the most free memory left on a device is "
                f"{megabytes(capacity[d] - used[d])}; the experts need {megabytes(sizes.sum())}, the devices "
                f"offer {megabytes(capacity.sum())}; add memory or quantize experts"
            )
        primary[layer, expert] = d
        used[d] += sizes[layer, expert]
    return primary, used


def _improve_layer(model: LatencyModel, layer: int, primary: np.ndarray, room: np.ndarray) -> bool:
    """One best improving move or swap in `layer`, applied in place (room: free bytes per device)."""
    sizes = model.expert_bytes[layer]
    row = primary[layer]
    best_cost, best_row = model.layer_s(layer, row), None
    for e in range(row.shape[0]):
        src = int(row[e])
        for d in range(model.num_devices):
            if d != src and room[d] >= sizes[e]:
                trial = row.copy()
                trial[e] = d
                if (cost := model.layer_s(layer, trial)) < best_cost * (1 - _TOL):
                    best_cost, best_row = cost, trial
        for f in range(e + 1, row.shape[0]):
            dst = int(row[f])
            if dst != src and room[dst] + sizes[f] >= sizes[e] and room[src] + sizes[e] >= sizes[f]:
                trial = row.copy()
                trial[e], trial[f] = dst, src
                if (cost := model.layer_s(layer, trial)) < best_cost * (1 - _TOL):
                    best_cost, best_row = cost, trial
    if best_row is None:
        return False
    for e in np.flatnonzero(best_row != row).tolist():
        room[row[e]] += sizes[e]
        room[best_row[e]] -= sizes[e]
    primary[layer] = best_row
    return True


def _replicate(model: LatencyModel, primary: np.ndarray, room: np.ndarray, max_copies: int) -> list[list[list[int]]]:
    copies = [[[int(d)] for d in row] for row in primary]
    sizes = model.expert_bytes
    for _ in range(max_copies - 1):
        for layer, expert in _order(model.requirement.popularity):
            held = copies[layer][expert]
            options = []
            for d in range(model.num_devices):
                if d not in held and room[d] >= sizes[layer, expert]:
                    row = primary[layer].copy()
                    row[expert] = d  # the layer if this copy had to serve
                    options.append((model.layer_s(layer, row), float(room[d]), d))
            if options:
                d = _best(options)
                held.append(d)
                room[d] -= sizes[layer, expert]
    return copies


def place_inter(
    model: LatencyModel, capacity_bytes: np.ndarray, config: SearchConfig = SearchConfig()
) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Copies per (layer position, expert), primary first (module docstring). capacity_bytes: (D,) int."""
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    start = _greedy(model, capacity)
    primary, used = start if start is not None else _first_fit(model, capacity)
    room = capacity - used
    for _ in range(config.passes):
        changed = [_improve_layer(model, layer, primary, room) for layer in range(primary.shape[0])]
        if not any(changed):
            break
    copies = _replicate(model, primary, room, config.max_copies)
    return tuple(tuple(tuple(ids) for ids in row) for row in copies)
