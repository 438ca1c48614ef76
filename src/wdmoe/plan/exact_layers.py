"""Inter-server deployment exactly, layer by layer: the structure of the objective, where each layer's placements
can be enumerated.

Contract: `solve_by_layers(model, capacity, limits)` returns an `ExactSolution` (method "layers"; optimal, or at
the time limit an incumbent with its certified gap), or None where the decomposition does not apply (a layer
with more than `limits.max_assignments` placements, memory patterns too many to key in an int64, or more than
`limits.max_candidates` combinations at one step): the caller then solves the whole MILP (`plan.exact`). Raises
PlanError when no placement fits the memory.

Why this is exact: `cost.LatencyModel.token_s` is a sum over layers of `layer_s`, a function of that layer's
primaries alone; the layers meet only in the memory rows, and there a layer's placement shows only as how many
experts of each size it puts on each device (its pattern n_l, which fixes its bytes per device u_l). So

    optimum = min over patterns n_1..n_L with sum_l u_l <= capacity  of  sum_l f_l(n_l),
    f_l(n)  = min over the layer's placements with pattern n of layer_s.

f_l comes from enumerating the layer's D^E placements, each scored by one gather per top-k set from the layer's
tuple table (the MILP's own costs). The outer problem is a dynamic program over the layers whose state is the
patterns' sum (a mixed-radix integer: equal keys, equal bytes per device), pruned by bounds only: an incumbent
(the layers' cheapest patterns taken greedily while memory lasts) is an upper bound U, and a partial sum whose
cost plus the remaining layers' unconstrained minima exceeds U cannot lead to the optimum. Nothing that can reach
the optimum is dropped, so the result is the optimum (ties to floating-point rounding, 1e-12 relative).

On the lab cluster (7 devices, 4 layers x 8 equal-sized experts) a layer has 7^8 = 5.8M placements and 2,737
patterns that fit alone; the whole MILP over per-set device tuples left a 0.67% gap after 60 s there, its LP
relaxation being weak for the max over active devices in every layer step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.exact_types import ExactLimits, ExactSolution, infeasible

_CHUNK = 1 << 20  # placements (or state x pattern combinations) handled at once
_MAX_KEY = 2.0**62  # the mixed-radix key of a pattern must fit an int64
_SLACK = 1e-12  # relative: bounds compare with this much room, so a floating-point tie is never pruned


@dataclass(frozen=True)
class LayerOptions:
    """One layer's patterns that fit the devices alone: key (V,) int64 (mixed radix, adds across layers), use (V, D)
    bytes per device, cost (V,) seconds of the cheapest placement with that pattern (f_l), placement (V, E)."""

    key: np.ndarray
    use: np.ndarray
    cost: np.ndarray
    placement: np.ndarray


def key_weights(sizes: np.ndarray, num_devices: int) -> np.ndarray | None:
    """(L, E, D) int64: a placement's key is the sum over its experts of weights[l, e, device of e], a mixed-radix
    number whose digits count the experts of each size on each device (so equal keys mean equal bytes per device,
    and keys of disjoint sets of experts add); None when the radix product would overflow an int64."""
    classes, of_class, counts = np.unique(sizes.ravel(), return_inverse=True, return_counts=True)
    radix = np.tile(counts + 1, num_devices)  # digit (d, c): experts of size class c on device d
    if float(np.prod(radix.astype(float))) >= _MAX_KEY:
        return None
    place = np.concatenate(([1], np.cumprod(radix)[:-1])).reshape(num_devices, len(classes))  # (D, C)
    return place[:, of_class.reshape(sizes.shape)].transpose(1, 2, 0).astype(np.int64)


def layer_options(model: LatencyModel, pos: int, capacity: np.ndarray, weights: np.ndarray,
                  max_assignments: int) -> LayerOptions | None:
    """Every pattern of layer `pos` within `capacity` with its cheapest placement (module docstring); `weights`
    (E, D) the layer's rows of `key_weights`. None when the layer has more than `max_assignments` placements, no
    tuple table, or more patterns than max_assignments to index (its own mixed radix, the layer's counts)."""
    sizes = model.expert_bytes[pos]
    d, num_experts = model.num_devices, sizes.shape[0]
    table = model.tuple_table(pos)  # (S, D^k) seconds
    local = key_weights(sizes[None, :], d)  # (1, E, D): this layer's patterns numbered densely
    if d**num_experts > max_assignments or table is None or local is None:
        return None
    grid = int(local[0, :, :].max(axis=1).sum()) + 1  # every local key is below this
    if grid > max_assignments:
        return None
    routes = model.routes[pos]
    # placement number = sum_e device_e * D^e; the low `inner` experts run over a block of D^inner placements whose
    # digits, keys and costs among themselves are computed once, the high ones (the prefix) are scalars per block
    inner = 1
    while inner < num_experts and d ** (inner + 1) <= _CHUNK:
        inner += 1
    block = np.arange(d**inner, dtype=np.int64)
    digits: list[np.ndarray | int] = [(block // d**e) % d for e in range(inner)]
    inner_sets = [(m, p, row) for m, p, row in zip(routes.sets.tolist(), routes.prob.tolist(), table, strict=True)
                  if max(m) < inner]
    outer_sets = [(m, p, row) for m, p, row in zip(routes.sets.tolist(), routes.prob.tolist(), table, strict=True)
                  if max(m) >= inner]
    inner_cost = _set_costs(inner_sets, digits, d, np.zeros(len(block)))
    inner_key = sum((local[0, e][digits[e]] for e in range(inner)), start=np.zeros(len(block), np.int64))
    best_s, best_index = np.full(grid, np.inf), np.full(grid, -1, dtype=np.int64)
    for prefix in range(d ** (num_experts - inner)):
        high = [int(prefix // d ** (e - inner) % d) for e in range(inner, num_experts)]
        cost = _set_costs(outer_sets, [*digits, *high], d, inner_cost.copy())
        key = inner_key + int(sum(local[0, e, high[e - inner]] for e in range(inner, num_experts)))
        np.minimum.at(best_s, key, cost)
        won = cost == best_s[key]  # the block's placements that hold their pattern's best so far
        best_index[key[won]] = prefix * d**inner + block[won]
    found = np.flatnonzero(best_index >= 0)
    placement = (best_index[found, None] // d ** np.arange(num_experts)) % d  # (V, E)
    use = np.stack([np.bincount(row, weights=sizes, minlength=d) for row in placement]).reshape(-1, d)
    fits = np.all(use <= capacity, axis=1)
    keys = weights[np.arange(num_experts), placement].sum(axis=1)
    return LayerOptions(keys[fits], use[fits], best_s[found][fits], placement[fits])


def _set_costs(sets: list[tuple[list[int], float, np.ndarray]], digits: list[np.ndarray | int], d: int,
               out: np.ndarray) -> np.ndarray:
    """out += sum over the top-k sets of P(S) * table row of S at the tuple of its members' devices (`digits[e]`:
    expert e's device, an array over the block or one int)."""
    for members, p, row in sets:
        tuple_index = digits[members[0]]
        for e in members[1:]:
            tuple_index = tuple_index * d + digits[e]
        out += p * row[tuple_index]
    return out


def _cheapest_per_key(keys: np.ndarray, costs: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, ...]:
    """The lowest cost (lowest index on ties) of every distinct key; every array of the same length."""
    order = np.lexsort((index, costs, keys))
    keys, costs, index = keys[order], costs[order], index[order]
    first = np.concatenate(([True], keys[1:] != keys[:-1])) if len(keys) else np.zeros(0, dtype=bool)
    return keys[first], costs[first], index[first]


def solve_by_layers(model: LatencyModel, capacity_bytes: np.ndarray, limits: ExactLimits = ExactLimits(),
                    start: np.ndarray | None = None) -> ExactSolution | None:
    """The optimal primaries by the layer decomposition (module docstring), or None where it does not apply.
    `start`: a placement (L, E) within memory (the heuristic's): its cost is an upper bound that prunes more."""
    started = time.perf_counter()
    capacity = np.asarray(capacity_bytes, dtype=float)
    weights = key_weights(model.expert_bytes, model.num_devices)
    if weights is None:
        return None
    options = []
    for pos in range(model.expert_bytes.shape[0]):
        layer = layer_options(model, pos, capacity, weights[pos], limits.max_assignments)
        if layer is None:
            return None
        if len(layer.cost) == 0:
            raise infeasible(model)
        options.append(layer)
    return _search(model, options, capacity, limits, started, start)


def _incumbent(options: list[LayerOptions], capacity: np.ndarray) -> list[int] | None:
    """A feasible choice of one pattern per layer: each layer's cheapest that fits what the earlier ones left."""
    left, chosen = capacity.copy(), []
    for layer in options:
        fits = np.flatnonzero(np.all(layer.use <= left, axis=1))
        if len(fits) == 0:
            return None
        pick = int(fits[np.argmin(layer.cost[fits])])
        chosen.append(pick)
        left -= layer.use[pick]
    return chosen


def _search(model: LatencyModel, options: list[LayerOptions], capacity: np.ndarray, limits: ExactLimits,
            started: float, start: np.ndarray | None) -> ExactSolution | None:
    """The DP over the layers' pattern sums with bound pruning (module docstring)."""
    floor = np.array([float(o.cost.min()) for o in options])  # each layer's cost with memory ignored
    rest = np.concatenate((np.cumsum(floor[::-1])[::-1][1:], [0.0]))  # rest[l]: the layers after l, at their floors
    incumbent = _incumbent(options, capacity)
    upper = np.inf if incumbent is None else float(sum(o.cost[v] for o, v in zip(options, incumbent, strict=True)))
    start = start if start is not None and _fits(model, start, capacity) else None
    if start is not None:
        upper = min(upper, model.token_s(start))  # each layer's pattern costs at most its layer_s there
    bound = upper * (1 + _SLACK)
    # states after layer l: key (N,), use (N, D), cost (N,), and per layer the (previous state, pattern) of each
    key, use, cost = np.zeros(1, np.int64), np.zeros((1, model.num_devices)), np.zeros(1)
    back: list[tuple[np.ndarray, np.ndarray]] = []
    for pos, layer in enumerate(options):
        useful = np.flatnonzero(layer.cost + float(floor.sum() - floor[pos]) <= bound)  # exact: others at floors
        found = _extend(key, use, cost, layer, useful, capacity, bound - rest[pos], limits.max_candidates)
        if found is None:
            return None
        key, use, cost, previous, pattern = found
        if len(cost) == 0:
            raise infeasible(model)
        back.append((previous, pattern))
        if time.perf_counter() - started > limits.time_limit_s and pos + 1 < len(options):
            return _stopped(model, options, incumbent, start, float(floor.sum()))
    state = int(np.argmin(cost))
    chosen = []
    for previous, pattern in reversed(back):
        chosen.append(int(pattern[state]))
        state = int(previous[state])
    primary = np.stack([o.placement[v] for o, v in zip(options, reversed(chosen), strict=True)])
    latency_s = model.token_s(primary)
    return ExactSolution(primary.astype(np.int64), latency_s, True, 0.0, latency_s, _columns(options), "layers")


def _extend(key: np.ndarray, use: np.ndarray, cost: np.ndarray, layer: LayerOptions, useful: np.ndarray,
            capacity: np.ndarray, budget: float, max_candidates: int) -> tuple[np.ndarray, ...] | None:
    """The states after one more layer: every (state, useful pattern) within memory and within `budget` (the
    incumbent less the later layers' floors), the cheapest per key; None past max_candidates combinations."""
    if len(cost) * len(useful) > max_candidates:
        return None
    parts: list[tuple[np.ndarray, ...]] = [(np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64))]
    per_chunk = max(1, _CHUNK // max(len(useful), 1))
    for start in range(0, len(cost), per_chunk):
        states = np.arange(start, min(start + per_chunk, len(cost)))
        total = cost[states, None] + layer.cost[useful][None, :]  # (n, V')
        fits = np.all(use[states, None, :] + layer.use[useful][None, :, :] <= capacity, axis=2) & (total <= budget)
        s, v = np.nonzero(fits)
        tag = states[s] * len(layer.cost) + useful[v]  # (state, pattern) in one int64
        parts.append(_cheapest_per_key(key[states[s]] + layer.key[useful[v]], total[s, v], tag))
    keys, costs, tags = _cheapest_per_key(*(np.concatenate(column) for column in zip(*parts, strict=True)))
    previous, pattern = np.divmod(tags, len(layer.cost))
    return keys, use[previous] + layer.use[pattern], costs, previous, pattern


def _fits(model: LatencyModel, primary: np.ndarray, capacity: np.ndarray) -> bool:
    used = np.bincount(primary.ravel(), weights=model.expert_bytes.ravel(), minlength=model.num_devices)
    return bool(np.all(used <= capacity))


def _stopped(model: LatencyModel, options: list[LayerOptions], incumbent: list[int] | None, start: np.ndarray | None,
             lower_s: float) -> ExactSolution | None:
    """At the time limit: the better of the incumbent and `start`, with its gap to the layers' floors (a lower
    bound), or None without either."""
    found = [] if incumbent is None else [np.stack([o.placement[v] for o, v in zip(options, incumbent, strict=True)])]
    found += [] if start is None else [np.asarray(start)]
    if not found:
        return None
    primary = min(found, key=model.token_s)
    latency_s = model.token_s(primary)
    gap = max(latency_s - lower_s, 0.0) / latency_s
    return ExactSolution(primary.astype(np.int64), latency_s, gap == 0.0, gap, min(lower_s, latency_s),
                         _columns(options), "layers")


def _columns(options: list[LayerOptions]) -> int:
    """The size of the outer problem: patterns over all layers."""
    return sum(len(o.cost) for o in options)
