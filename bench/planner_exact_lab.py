"""The exact placement solvers on the lab cluster (configs/clusters/lab.toml, 7 devices, the shipped model's 4 MoE
layers x 8 experts, popularity calibrated on 2,048 held-out tokens as `wdmoe plan` does): the whole MILP
(plan/exact.solve_milp) and the layer decomposition (plan/exact_layers.solve_by_layers), side by side in one run
with the heuristic (plan/inter.search_primary); prints each one's time, its plan's ms per token, and what HiGHS
proved (optimal, or its gap and lower bound at the time limit).

    .venv/bin/python bench/planner_exact_lab.py [--time-limit 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from wdmoe.model.shipped import default_model_dir
from wdmoe.plan.calibrate import calibrate
from wdmoe.plan.cluster import load_cluster
from wdmoe.plan.cost import LatencyModel
from wdmoe.plan.exact import ExactLimits, solve_milp
from wdmoe.plan.exact_layers import solve_by_layers
from wdmoe.plan.inter import search_primary

LAB = "configs/clusters/lab.toml"


def measure(time_limit_s: float) -> dict[str, Any]:
    cluster = load_cluster(LAB)
    requirement, _ = calibrate(default_model_dir(), 2048)
    model = LatencyModel(requirement, cluster.statuses, cluster.radio)
    capacity = np.array([s.free_memory_bytes for s in cluster.statuses], dtype=np.int64)
    for pos in range(requirement.num_layers):  # the radio tables both exact solvers read: built once, not timed
        model.tuple_table(pos)
    out: dict[str, Any] = {"cluster": LAB, "devices": model.num_devices, "time_limit_s": time_limit_s}
    start = time.perf_counter()
    primary = search_primary(model, capacity)
    heuristic = model.token_s(primary)
    out["heuristic"] = {"s": time.perf_counter() - start, "ms_per_token": 1e3 * heuristic}
    limits = ExactLimits(time_limit_s=time_limit_s)
    runs = (("layers", lambda: solve_by_layers(model, capacity, limits, primary)),
            ("layers, no start", lambda: solve_by_layers(model, capacity, limits)),
            ("milp", lambda: solve_milp(model, capacity, limits)))
    for name, solve in runs:
        start = time.perf_counter()
        solution = solve()
        assert solution is not None, "the layer decomposition does not apply to the lab cluster"
        out[name] = {"s": time.perf_counter() - start, "ms_per_token": 1e3 * solution.latency_s,
                     "optimal": solution.optimal, "gap": solution.gap,
                     "lower_bound_ms": 1e3 * solution.lower_bound_s, "columns": solution.columns,
                     "heuristic_over_it": heuristic / solution.latency_s - 1}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-limit", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.time_limit)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{LAB}: {result['devices']} devices, time limit {args.time_limit:g} s")
    h = result["heuristic"]
    print(f"  heuristic                  {h['s']:7.2f} s  {h['ms_per_token']:.6f} ms")
    for name in ("layers", "layers, no start", "milp"):
        r = result[name]
        proof = "proven optimal" if r["optimal"] else f"gap {r['gap']:.3%}, lower bound {r['lower_bound_ms']:.6f} ms"
        print(f"  exact ({name:16}) {r['s']:8.2f} s  {r['ms_per_token']:.6f} ms  {proof}  ({r['columns']:,} columns; "
              f"heuristic {100 * r['heuristic_over_it']:+.4f}% above it)")


if __name__ == "__main__":
    main()
