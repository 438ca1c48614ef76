"""The placement heuristic's optimality gap against the exact solver, on random small clusters (issue 15, item 2).

For each seed, plan/instances.small_cluster(seed) is solved by the heuristic (plan/inter.search_primary) and by
the exact MILP (plan/exact.solve_exact, HiGHS); both are scored by the one objective (cost.LatencyModel). Prints
the gap distribution and the two solvers' time per instance, measured side by side in the same run.

    .venv/bin/python bench/planner_optimality.py [--instances 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from wdmoe.plan.exact import solve_exact
from wdmoe.plan.instances import small_cluster
from wdmoe.plan.inter import round_robin_primary, search_primary

THRESHOLDS = (1e-9, 1e-3, 1e-2, 5e-2)


def measure(instances: int) -> dict[str, Any]:
    gaps, robin_gaps, heuristic_s, exact_s = [], [], [], []
    for seed in range(instances):
        case = small_cluster(seed)
        model, capacity = case.model, case.capacity_bytes
        start = time.perf_counter()
        optimum = solve_exact(model, capacity)
        exact_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        primary = search_primary(model, capacity)
        heuristic_s.append(time.perf_counter() - start)
        gaps.append(model.token_s(primary) / optimum.latency_s - 1)
        robin = round_robin_primary(*primary.shape, model.num_devices)
        used = np.bincount(robin.ravel(), weights=model.expert_bytes.ravel(), minlength=capacity.size)
        if np.all(used <= capacity):
            robin_gaps.append(model.token_s(robin) / optimum.latency_s - 1)
    g = np.array(gaps)
    r = np.array(robin_gaps)
    return {
        "instances": instances,
        "heuristic_within": {f"{t:g}": float(np.mean(g <= t)) for t in THRESHOLDS},
        "heuristic_gap_quantiles": {q: float(np.quantile(g, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
        "heuristic_worst_seeds": [int(s) for s in np.argsort(-g)[:5]],
        "round_robin_fits": len(robin_gaps),
        "round_robin_within": {f"{t:g}": float(np.mean(r <= t)) for t in THRESHOLDS} if len(r) else {},
        "round_robin_gap_median": float(np.median(r)) if len(r) else float("nan"),
        "heuristic_ms_median": 1e3 * float(np.median(heuristic_s)),
        "exact_ms_median": 1e3 * float(np.median(exact_s)),
        "exact_over_heuristic_time": float(np.sum(exact_s) / np.sum(heuristic_s)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.instances)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    within = result["heuristic_within"]
    print(f"{args.instances} random small clusters; gap = heuristic / exact optimum - 1 (one objective)")
    for key, share in within.items():
        print(f"  heuristic gap <= {key:>6}: {share:7.1%}")
    print(f"  gap quantiles: {result['heuristic_gap_quantiles']}; worst seeds {result['heuristic_worst_seeds']}")
    robin_within = result["round_robin_within"].get("0.01", 0.0)
    print(f"  round-robin (where it fits, {result['round_robin_fits']}): median gap "
          f"{result['round_robin_gap_median']:.1%}, within 1%: {robin_within:.1%}")
    print(f"  time per instance (median): heuristic {result['heuristic_ms_median']:.1f} ms, exact "
          f"{result['exact_ms_median']:.1f} ms; exact / heuristic total time "
          f"{result['exact_over_heuristic_time']:.2f}x")


if __name__ == "__main__":
    main()
