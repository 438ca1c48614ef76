"""What the exact placement solvers share (plan.exact's MILP, plan.exact_layers' decomposition): their limits,
their answer, the objective's scale in the programs and the errors they raise."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.errors import PlanError

SCALE = 1e6  # seconds -> microseconds in the programs' objectives (HiGHS's absolute gap 1e-6: far below a ns)
STATUS_INFEASIBLE = 2  # scipy.optimize.milp's status for an infeasible program


@dataclass(frozen=True)
class ExactLimits:
    """time_limit_s: wall-clock limit (HiGHS's, or the layer decomposition's between layers). max_columns: refuse larger
    programs up front. rel_gap: HiGHS's relative optimality tolerance (its proof of optimality is up to this).
    max_assignments: the layer decomposition enumerates a layer's D^E placements up to this many, else the whole
    MILP is solved; max_candidates: the decomposition's (state, pattern) combinations at one layer, likewise."""

    time_limit_s: float = 60.0
    max_columns: int = 200_000
    rel_gap: float = 1e-9
    max_assignments: int = 1 << 24
    max_candidates: int = 1 << 28


@dataclass(frozen=True)
class ExactSolution:
    """The exact solver's answer.

    Attributes:
        primary: (L, E) device of every expert's primary. latency_s: its expected per-token seconds (token_s).
        optimal: HiGHS proved optimality (to rel_gap). gap: HiGHS's relative gap (0 when optimal).
        lower_bound_s: HiGHS's lower bound on the optimum, seconds. columns: size of the program solved.
        method: "layers" (plan.exact_layers: enumeration per layer + a knapsack over memory patterns) or "milp"
            (plan.exact: the whole program over per-set device tuples).
    """

    primary: np.ndarray
    latency_s: float
    optimal: bool
    gap: float
    lower_bound_s: float
    columns: int
    method: str = "milp"


def infeasible(model: LatencyModel) -> PlanError:
    return PlanError(
        f"no placement of the {model.expert_bytes.size} experts fits the devices' memory "
        f"(the exact program is infeasible; the experts need {int(model.expert_bytes.sum()):,} bytes)"
    )


def no_solution(limits: ExactLimits, message: str) -> PlanError:
    return PlanError(
        f"the exact solver found no placement within its time limit of {limits.time_limit_s:g} s "
        f"(HiGHS: {message}); raise --time-limit or drop --exact"
    )
