"""Inter-server deployment, exactly: the primaries minimizing `cost.LatencyModel`'s objective under the memory limits.

Contract: `solve_exact(model, capacity_bytes, limits)` returns an `ExactSolution` (primaries (L, E), their expected
per-token seconds by `model.token_s`, and what HiGHS proved: optimal, or its relative gap and lower bound when it
stopped at the time limit), or raises `PlanError` when the program has more columns than `limits.max_columns`
(the message gives the sizes), when no placement fits the memory, or when HiGHS found none in time. It solves by
layers (`plan.exact_layers`: each layer's placements enumerated, a knapsack over their memory patterns) where
every layer's D^E placements are at most `limits.max_assignments`, else the whole program below (`solve_milp`);
both are exact, and tests hold each equal to brute force and to the other.

The program (scipy.optimize.milp, HiGHS), exact for the objective, not a relaxation of it:

    x[l,e,d] in {0,1}: the primary of expert e of layer l is device d;   sum_d x[l,e,d] = 1
    memory:   sum_(l,e) bytes[l,e] x[l,e,d] <= capacity[d]                      for every device d
    y[l,S,a] in [0,1], for every top-k set S of layer l (cost.Routes) and device tuple a in D^k:
              sum_(a : a_i = d) y[l,S,a] = x[l,S_i,d]                           for every position i of S and d
    minimize  sum_l sum_S P_l(S) sum_a c_l(S,a) y[l,S,a],   c_l(S,a) = model.step_s(S's experts on the devices a)

When x is integral every marginal of y[l,S,.] is a point mass, so y[l,S,.] is the point mass on the tuple that x
assigns to S and the objective is `model.token_s` of the placement: y may stay continuous. The costs c come from
the one radio model through `LatencyModel.step_s` (no latency formula here). They are given to HiGHS in
microseconds, so its absolute gap tolerance (1e-6) is far below a nanosecond.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.errors import PlanError
from wdmoe.plan.exact_layers import solve_by_layers
from wdmoe.plan.exact_types import SCALE, STATUS_INFEASIBLE, ExactLimits, ExactSolution, infeasible, no_solution

__all__ = ["ExactLimits", "ExactSolution", "program_columns", "solve_exact", "solve_milp"]


def program_columns(model: LatencyModel) -> int:
    """Columns (x and y) of the program for this model: L*E*D + sum_l |S_l| * D^k."""
    num_layers, num_experts = model.expert_bytes.shape
    d, k = model.num_devices, model.requirement.top_k
    return num_layers * num_experts * d + sum(len(r.prob) for r in model.routes) * d**k


def _check_size(model: LatencyModel, limits: ExactLimits) -> int:
    columns = program_columns(model)
    if columns > limits.max_columns:
        num_layers, num_experts = model.expert_bytes.shape
        sets = sum(len(r.prob) for r in model.routes)
        raise PlanError(
            f"the exact placement program is too large: {columns:,} columns ({num_layers} layers x {num_experts} "
            f"experts x {model.num_devices} devices, plus {sets} top-{model.requirement.top_k} sets x "
            f"{model.num_devices}^{model.requirement.top_k} device tuples), over the limit of "
            f"{limits.max_columns:,}; drop --exact (the heuristic plans any size) or plan fewer devices"
        )
    return columns


def solve_exact(model: LatencyModel, capacity_bytes: np.ndarray, limits: ExactLimits = ExactLimits(),
                start: np.ndarray | None = None) -> ExactSolution:
    """The optimal primaries (module docstring): by layers where they can be enumerated, else the whole MILP.
    `start`: a placement within memory (the heuristic's), an upper bound for the layer decomposition's pruning."""
    by_layers = solve_by_layers(model, capacity_bytes, limits, start)
    return by_layers if by_layers is not None else solve_milp(model, capacity_bytes, limits)


def solve_milp(model: LatencyModel, capacity_bytes: np.ndarray, limits: ExactLimits = ExactLimits()) -> ExactSolution:
    """The optimal primaries by the whole program over per-set device tuples (module docstring)."""
    columns = _check_size(model, limits)
    capacity = np.asarray(capacity_bytes, dtype=float)
    sizes = model.expert_bytes
    num_layers, num_experts = sizes.shape
    d, k = model.num_devices, model.requirement.top_k
    num_x = num_layers * num_experts * d
    tuples = np.array(list(itertools.product(range(d), repeat=k)), dtype=np.int64).reshape(-1, k)  # (D^k, k)
    cost = [np.zeros(num_x)]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    lower: list[np.ndarray] = []
    upper: list[np.ndarray] = []
    # one expert, one primary: row r = l*E + e
    x_index = np.arange(num_x).reshape(num_layers, num_experts, d)
    rows.append(np.repeat(np.arange(num_layers * num_experts), d))
    cols.append(x_index.ravel())
    vals.append(np.ones(num_x))
    lower.append(np.ones(num_layers * num_experts))
    upper.append(np.ones(num_layers * num_experts))
    row = num_layers * num_experts
    # memory: row per device
    rows.append(row + np.tile(np.arange(d), num_layers * num_experts))
    cols.append(x_index.ravel())
    vals.append(np.repeat(sizes.ravel().astype(float), d))
    lower.append(np.full(d, -np.inf))
    upper.append(capacity)
    row += d
    column = num_x
    for pos, routes in enumerate(model.routes):
        table = model.tuple_table(pos)
        for s, (members, p) in enumerate(zip(routes.sets.tolist(), routes.prob.tolist(), strict=True)):
            block = column + np.arange(len(tuples))
            cost.append(p * SCALE * (table[s] if table is not None else np.array([
                model.step_s(tuple(sorted((int(a[i]), float(sizes[pos, e])) for i, e in enumerate(members))))
                for a in tuples
            ])))
            for i, e in enumerate(members):  # marginal rows (i, d): the y with a_i = d, minus x[l, e, d]
                rows.append(row + i * d + tuples[:, i])
                cols.append(block)
                vals.append(np.ones(len(tuples)))
                rows.append(row + i * d + np.arange(d))
                cols.append(x_index[pos, e])
                vals.append(-np.ones(d))
            lower.append(np.zeros(k * d))
            upper.append(np.zeros(k * d))
            row += k * d
            column += len(tuples)
    matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(row, column))
    integrality = np.zeros(column)
    integrality[:num_x] = 1
    result = milp(
        np.concatenate(cost),
        integrality=integrality,
        bounds=Bounds(np.zeros(column), np.ones(column)),
        constraints=LinearConstraint(matrix.tocsr(), np.concatenate(lower), np.concatenate(upper)),
        options={"time_limit": limits.time_limit_s, "mip_rel_gap": limits.rel_gap, "presolve": True},
    )
    return _solution(model, result, columns, limits)


def _solution(model: LatencyModel, result: object, columns: int, limits: ExactLimits) -> ExactSolution:
    status = getattr(result, "status", None)
    x = getattr(result, "x", None)
    if status == STATUS_INFEASIBLE:
        raise infeasible(model)
    if x is None:
        raise no_solution(limits, str(getattr(result, "message", "")))
    num_layers, num_experts = model.expert_bytes.shape
    d = model.num_devices
    primary = np.argmax(np.asarray(x)[: num_layers * num_experts * d].reshape(num_layers, num_experts, d), axis=2)
    latency_s = model.token_s(primary)
    optimal = status == 0
    gap = 0.0 if optimal else float(getattr(result, "mip_gap", np.nan))
    bound = getattr(result, "mip_dual_bound", None)
    lower_bound_s = latency_s if optimal or bound is None else float(bound) / SCALE
    return ExactSolution(primary.astype(np.int64), latency_s, optimal, gap, lower_bound_s, columns)
