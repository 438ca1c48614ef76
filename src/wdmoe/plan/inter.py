"""Inter-server deployment: each (layer, expert) onto devices, minimizing the expected per-token latency.

Contract: `place_inter(model, capacity_bytes, config)` returns the copies of every expert, primary first, such
that the bytes on every device stay within its capacity, or raises `PlanError` with the sizes. The algorithm is
our reconstruction [R] of papers.md §4.3's greedy (the paper's algorithm is [U]); the objective is `cost.LatencyModel`,
and `exact.solve_exact` is its reference (docs/planner.md gives the measured gap):

1. Starts: greedy passes over the (layer, expert) pairs, in decreasing popularity per byte (memory-aware: a big
   expert costs the room of several small ones), in decreasing popularity, and in `restarts` orders of popularity
   per byte times a log-normal noise (seeded with the radio seed); each pair goes to the device with room that
   minimizes its layer's expected latency given the experts placed so far (ties: more free memory), among the
   devices after which the rest still packs (first-fit-decreasing). Round-robin (expert e on device e mod D) is a
   further start when it fits, so the result is never worse than it. When no pass packs (memory full or nearly),
   the popularity-per-byte and largest-first passes run again backtracking at dead ends (a complete packing
   search within MAX_GREEDY_NODES placements), so memory filled exactly still packs; first-fit-decreasing by
   bytes is the start of last resort (it raises `PlanError` when it fails too).
2. Local search (`search.local_search`) from each start: moves, swaps, pair moves, chains and 1-for-2 exchanges
   in any layers (memory is shared across layers), best improvement first; optionally `kicks` random
   perturbations of the best (iterated local search). The best of the searched starts is kept.
3. Replication: while memory allows, experts in decreasing popularity get a further copy (up to `max_copies`)
   on the device that would serve their layer best if the primary's device left (the runtime's failover goes to
   the first live copy). Replicas change no expected latency: the primary serves while it lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.deployment import Copies
from wdmoe.plan.errors import PlanError, megabytes
from wdmoe.plan.search import iterated_search


@dataclass(frozen=True)
class SearchConfig:
    """max_copies: copies per expert, primary included (1: no replicas). max_steps: local-search steps at most
    per start. restarts: randomized greedy starts. kicks: iterated-local-search perturbations per start."""

    max_copies: int = 2
    max_steps: int = 1000
    kicks: int = 0
    restarts: int = 16


def _by_popularity(model: LatencyModel) -> np.ndarray:
    return np.argsort(-model.requirement.popularity.ravel(), kind="stable")


def _by_popularity_per_byte(model: LatencyModel) -> np.ndarray:
    per_byte = model.requirement.popularity.ravel() / np.maximum(model.expert_bytes.ravel(), 1)
    return np.argsort(-per_byte, kind="stable")


def _packs(rest: np.ndarray, room: np.ndarray) -> bool:
    """First-fit-decreasing of the sizes `rest` (sorted, largest first) into `room` (a sufficient test)."""
    room = room.copy()
    for size in rest.tolist():
        d = int(np.argmax(room))
        if room[d] < size:
            return False
        room[d] -= size
    return True


def _best(options: list[tuple[float, float, int]]) -> int:
    """The device of the lowest cost; among costs equal up to rounding, the one with the most free memory."""
    low = min(cost for cost, _, _ in options)
    _, neg_device = max((free, -d) for cost, free, d in options if cost <= low * (1 + 1e-9) + 1e-15)
    return -neg_device


MAX_GREEDY_NODES = 20_000  # placements a greedy pass may try, backtracking included, before it gives up
_State = tuple[int, tuple[int, ...]]  # (items placed, sorted free memory per device): what the rest's packing sees
_Frame = tuple[list[int], set[int], _State]  # per placed depth: devices left to try, free memories tried, state


def _ranked(model: LatencyModel, primary: np.ndarray, room: np.ndarray, flat: int, rest: np.ndarray) -> list[int]:
    """The devices a pass may put item `flat` on, the greedy's choice first: among the devices with room after
    which the rest still packs by first-fit-decreasing (else all with room), the lowest layer cost (`_best`);
    then the other safe devices, then the other devices with room, each by cost."""
    layer, expert = divmod(flat, model.expert_bytes.shape[1])
    size = model.expert_bytes[layer, expert]
    fits = np.flatnonzero(room >= size).tolist()
    safe = [d for d in fits if _packs(rest, np.where(np.arange(room.size) == d, room - size, room))]
    options = []
    for d in fits:
        row = primary[layer].copy()
        row[expert] = d
        options.append((model.layer_s(layer, row), float(room[d]), d))
    if not options:
        return []
    first = _best([o for o in options if o[2] in safe] or options)
    others = sorted((o for o in options if o[2] != first), key=lambda o: (o[2] not in safe, o[0], -o[1], o[2]))
    return [first, *(d for _, _, d in others)]


def _greedy(model: LatencyModel, capacity: np.ndarray, order: np.ndarray, backtrack: bool = False) -> np.ndarray | None:
    """The greedy pass of step 1 in `order`; None at its first dead end (an item that fits nowhere), or, with
    `backtrack`, the latest choice moves to its next device: a complete bin-packing search, so memory filled
    exactly still packs. It remembers failed (item, free memory multiset) states and skips a device whose free
    memory equals one tried (the rest packs the same way). Until a dead end it makes the plain pass's choices.
    None when no packing was found within MAX_GREEDY_NODES placements."""
    sizes = model.expert_bytes
    primary = np.full(sizes.shape, -1, dtype=np.int64)
    room = capacity.copy()
    flat_sizes = sizes.ravel()
    order_list = order.tolist()
    failed: set[_State] = set()
    frames: list[_Frame] = []
    for _ in range(MAX_GREEDY_NODES):
        n = len(frames)
        if n == len(order_list):
            return primary
        key: _State = (n, tuple(sorted(room.tolist())))
        candidates: list[int] = []
        if key not in failed:
            rest = np.sort(flat_sizes[order[n + 1:]])[::-1]
            candidates = _ranked(model, primary, room, order_list[n], rest)
        if not candidates and not backtrack:
            return None
        frames.append((candidates, set(), key))
        if not _advance(frames, order_list, primary, room, flat_sizes, failed):
            return None
    return primary if len(frames) == len(order_list) else None


def _advance(frames: list[_Frame], order: list[int], primary: np.ndarray, room: np.ndarray, sizes: np.ndarray,
             failed: set[_State]) -> bool:
    """Place the item of the deepest frame on its next untried device, backtracking through exhausted frames
    (their states join `failed`); False when every frame is exhausted."""
    num_experts = primary.shape[1]
    while frames:
        candidates, tried, key = frames[-1]
        n = len(frames) - 1
        layer, expert = divmod(order[n], num_experts)
        if primary[layer, expert] >= 0:  # undo this depth's previous choice before trying the next
            room[primary[layer, expert]] += sizes[order[n]]
            primary[layer, expert] = -1
        while candidates and int(room[candidates[0]]) in tried:
            candidates.pop(0)
        if candidates:
            d = candidates.pop(0)
            tried.add(int(room[d]))
            primary[layer, expert] = d
            room[d] -= sizes[order[n]]
            return True
        failed.add(key)
        frames.pop()
    return False


def _first_fit(model: LatencyModel, capacity: np.ndarray) -> np.ndarray:
    sizes = model.expert_bytes
    primary = np.full(sizes.shape, -1, dtype=np.int64)
    room = capacity.copy()
    for flat in np.argsort(-sizes.ravel(), kind="stable").tolist():
        layer, expert = divmod(flat, sizes.shape[1])
        d = int(np.argmax(room))
        if room[d] < sizes[layer, expert]:
            raise PlanError(
                f"the experts do not pack onto the devices: expert {expert} of MoE layer {layer} needs "
                f"{megabytes(sizes[layer, expert])}, the most free memory left on a device is "
                f"{megabytes(room[d])}; the experts need {megabytes(sizes.sum())}, the devices "
                f"offer {megabytes(capacity.sum())}; add memory or quantize experts"
            )
        primary[layer, expert] = d
        room[d] -= sizes[layer, expert]
    return primary


def _fits(model: LatencyModel, primary: np.ndarray, capacity: np.ndarray) -> bool:
    used = np.bincount(primary.ravel(), weights=model.expert_bytes.ravel(), minlength=capacity.size)
    return bool(np.all(used <= capacity))


def round_robin_primary(num_layers: int, num_experts: int, num_devices: int) -> np.ndarray:
    """(L, E) expert e on device e mod D in every layer (WDMoE's default placement)."""
    return np.tile(np.arange(num_experts) % num_devices, (num_layers, 1)).astype(np.int64)


def search_primary(
    model: LatencyModel, capacity_bytes: np.ndarray, config: SearchConfig = SearchConfig()
) -> np.ndarray:
    """(L, E) the heuristic's primaries: steps 1 and 2 of the module docstring."""
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    starts = [g for order in (_by_popularity_per_byte(model), _by_popularity(model))
              if (g := _greedy(model, capacity, order)) is not None]
    num_layers, num_experts = model.expert_bytes.shape
    robin = round_robin_primary(num_layers, num_experts, model.num_devices)
    if _fits(model, robin, capacity):
        starts.append(robin)
    if not starts:  # memory (nearly) full: the passes again, backtracking (largest items first packs best)
        by_size = np.argsort(-model.expert_bytes.ravel(), kind="stable")
        starts = [g for order in (_by_popularity_per_byte(model), by_size)
                  if (g := _greedy(model, capacity, order, backtrack=True)) is not None]
    if not starts:
        starts.append(_first_fit(model, capacity))
    rng = np.random.default_rng(model.radio.seed)
    per_byte = model.requirement.popularity.ravel() / np.maximum(model.expert_bytes.ravel(), 1)
    for _ in range(config.restarts):
        noisy = np.argsort(-per_byte * rng.lognormal(0.0, 1.0, per_byte.size), kind="stable")
        if (g := _greedy(model, capacity, noisy)) is not None:
            starts.append(g)
    unique = {s.tobytes(): s for s in starts}
    searched = [iterated_search(model, capacity, s, rng, config.kicks, config.max_steps) for s in unique.values()]
    return min(searched, key=lambda p: (model.token_s(p), p.tolist()))


def _replicate(model: LatencyModel, primary: np.ndarray, room: np.ndarray, max_copies: int) -> list[list[list[int]]]:
    copies = [[[int(d)] for d in row] for row in primary]
    sizes = model.expert_bytes
    for _ in range(max_copies - 1):
        for flat in _by_popularity(model).tolist():
            layer, expert = divmod(flat, sizes.shape[1])
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


def with_replicas(model: LatencyModel, primary: np.ndarray, capacity_bytes: np.ndarray, max_copies: int) -> Copies:
    """The copies of `primary` plus replicas in the memory left (step 3 of the module docstring)."""
    capacity = np.asarray(capacity_bytes, dtype=np.int64)
    used = np.bincount(primary.ravel(), weights=model.expert_bytes.ravel(), minlength=capacity.size)
    copies = _replicate(model, primary, capacity - used.astype(np.int64), max_copies)
    return tuple(tuple(tuple(ids) for ids in row) for row in copies)


def place_inter(model: LatencyModel, capacity_bytes: np.ndarray, config: SearchConfig = SearchConfig()) -> Copies:
    """Copies per (layer position, expert), primary first (module docstring). capacity_bytes: (D,) int."""
    primary = search_primary(model, capacity_bytes, config)
    return with_replicas(model, primary, capacity_bytes, config.max_copies)
