"""MoE² experiment on the local task: accuracy vs energy budget and vs delay budget for MoE² and the baselines, the
optimality-preserving check (restricted full-set gate vs a gate retrained on each subset) and the monotonicity of
the utility. `python -m wdmoe.ensemble.experiment OUT_DIR` writes ensemble-*.png and ensemble-results.json there.
"""

from __future__ import annotations

import itertools
import json
import math
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from wdmoe.atomic import write_atomic, write_json_atomic
from wdmoe.ensemble import gate as gate_mod
from wdmoe.ensemble import scores as scores_mod
from wdmoe.ensemble.aggregate import ensemble_accuracy
from wdmoe.ensemble.crossfit import answer_probs, routing_probs
from wdmoe.ensemble.gate import mixture_nll, train_gate
from wdmoe.ensemble.profiles import deployment, measured_costs, task_categories
from wdmoe.ensemble.selection import fine_select
from wdmoe.ensemble.system import POLICIES, EnsembleSystem
from wdmoe.ensemble.task import CATEGORIES

SWEEP_POINTS = 9


def sweep(system: EnsembleSystem, budgets: np.ndarray, energy: bool) -> list[dict[str, Any]]:
    rows = []
    for budget in budgets.tolist():
        e, t = (budget, math.inf) if energy else (math.inf, budget)
        rows.append({"budget": budget, **{p: asdict(system.run_policy(p, e, t)) for p in POLICIES}})
    return rows


def estimator_check(system: EnsembleSystem, other: EnsembleSystem) -> dict[str, Any]:
    """How well each estimator's A(T) ranks the 31 nonempty subsets by their test accuracy (a diagnostic: reading
    the test split here chooses nothing). Spearman rank correlation and mean absolute error, per estimator."""
    n = len(system.names)
    subsets = [frozenset(c) for size in range(1, n + 1) for c in itertools.combinations(range(n), size)]
    test = np.array([system._test(s, uniform=False)[0] for s in subsets])
    out: dict[str, Any] = {"subsets": len(subsets)}
    for sys_ in (system, other):
        est = np.array([sys_.accuracy(s) for s in subsets])
        out[sys_.estimator] = {
            "spearman": float(spearmanr(est, test).statistic),
            "mean_abs_error": float(np.abs(est - test).mean()),
        }
    return out


def budgets(system: EnsembleSystem) -> tuple[np.ndarray, np.ndarray]:
    """Energy budgets from the cheapest expert to the worst top-k (every subset fits); delay from fastest to slowest."""
    energy = system.costs.worst_case_energy_j()
    top = np.sort(energy)[-system.top_k :].sum()
    delay = np.asarray(system.costs.delay_s).max(axis=1) + 20e-6
    return (
        np.linspace(energy.min(), top, SWEEP_POINTS) * (1 + 1e-9),
        np.linspace(delay.min(), delay.max(), SWEEP_POINTS) * (1 + 1e-9),
    )


def optimality_check(system: EnsembleSystem) -> list[dict[str, Any]]:
    """For every subset S of 2+ experts: θ* restricted to S against θ_S retrained on S alone (same recipe)."""
    data = system.scores
    train, val, test = data.take("train"), system.val, system.test
    tx, tp, vx, vp = train.embeddings, routing_probs(train), val.embeddings, routing_probs(val)
    import torch

    rows = []
    n = len(data.expert_names)
    for size in range(2, n + 1):
        for subset in itertools.combinations(range(n), size):
            retrained, _ = train_gate(data.expert_names, tx, tp, vx, vp, allowed=subset)
            row: dict[str, Any] = {"subset": [data.expert_names[i] for i in subset]}
            for name, gate in (("restricted", system.gate), ("retrained", retrained)):
                with torch.no_grad():
                    nll = float(
                        mixture_nll(
                            gate,
                            torch.as_tensor(test.embeddings),
                            torch.as_tensor(answer_probs(test, system.temperatures), dtype=torch.float32),
                            subset,
                        )
                    )
                routing = fine_select(gate.probs(test.embeddings, subset), subset, system.top_k)
                row[f"{name}_test_nll"] = nll
                row[f"{name}_test_accuracy"] = ensemble_accuracy(
                    system.test_probs, test.answers, routing.index, routing.weight
                )
            rows.append(row)
    return rows


def monotonicity(system: EnsembleSystem) -> dict[str, float]:
    """Over every pair S ⊂ S + {n} (S nonempty, all subsets): the share with f(S + {n}) >= f(S), for f = A (the
    gated top-k accuracy on validation) and f = U (its monotone hull, the coarse selection's oracle)."""
    n = len(system.names)
    pairs = [
        (s, s | {m})
        for size in range(1, n)
        for s in map(frozenset, itertools.combinations(range(n), size))
        for m in range(n)
        if m not in s
    ]
    raw = [system.accuracy(big) >= system.accuracy(small) for small, big in pairs]
    hull = [system.utility(big) >= system.utility(small) for small, big in pairs]
    return {
        "pairs": len(pairs),
        "accuracy_monotone_fraction": float(np.mean(raw)),
        "utility_monotone_fraction": float(np.mean(hull)),
    }


def polyblock_matches(rows: list[dict[str, Any]]) -> dict[str, int]:
    """Budgets where polyblock and exhaustive search reach the same utility and the same routed experts."""
    same = [r for r in rows if r["moe2"]["subset"] == r["moe2-exhaustive"]["subset"]]
    return {"budgets": len(rows), "same_routed_experts": len(same)}


def expert_table(system: EnsembleSystem) -> dict[str, Any]:
    test = system.test
    hits = system.test_probs.argmax(-1) == test.answers  # (N, I)
    per = {
        name: {c: float(hits[k, test.categories == i].mean()) for i, c in enumerate(CATEGORIES)}
        for k, name in enumerate(system.names)
    }
    top1 = system.test_gate.argmax(-1)
    full = fine_select(system.test_gate, range(len(system.names)), system.top_k)
    right = answer_probs(test, system.temperatures)  # (I, N)
    return {
        "expert_test_accuracy": per,
        "expert_test_accuracy_all": {name: float(hits[k].mean()) for k, name in enumerate(system.names)},
        "gate_top1_is_category_specialist": float(np.mean(top1 == test.categories)),
        "gate_top1_is_item_best_expert": float(np.mean(top1 == right.argmax(-1))),
        "gate_top1_per_category": {
            c: {name: float(np.mean(top1[test.categories == i] == k)) for k, name in enumerate(system.names)}
            for i, c in enumerate(CATEGORIES)
        },
        "gate_top1_share": {name: float(np.mean(top1 == k)) for k, name in enumerate(system.names)},
        "full_set_top_k_test_accuracy": ensemble_accuracy(system.test_probs, test.answers, full.index, full.weight),
        "oracle_best_expert_per_item": float(hits.any(axis=0).mean()),
    }


def plot(rows: list[dict[str, Any]], xlabel: str, scale: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for policy in (p for p in POLICIES if p != "moe2-exhaustive"):
        ax.plot(
            [r["budget"] * scale for r in rows],
            [r[policy]["test_accuracy"] for r in rows],
            marker="o",
            label=policy,
            linewidth=2.5 if policy == "moe2" else 1.2,
        )
    ax.set(xlabel=xlabel, ylabel="test accuracy (160 items)", title="MoE² on the local task [R]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png"))
    plt.close(fig)


def run_experiment(out_dir: Path) -> dict[str, Any]:
    system = EnsembleSystem.load()  # the cross-fitted estimator
    val_system = EnsembleSystem.load(estimator="val")  # the first version's, for comparison
    energy_budgets, delay_budgets = budgets(system)
    meta = scores_mod.load_meta()
    categories = task_categories(np.array(meta["prompt_tokens"]), system.scores.categories)
    measured = measured_costs(deployment(system.names, meta["num_parameters"]), categories, system.scores)
    result: dict[str, Any] = {
        "temperatures": system.temperatures.tolist(),
        "experts": expert_table(system),
        "modeled_costs": {
            "energy_j": np.asarray(system.costs.energy_j).tolist(),
            "delay_s": np.asarray(system.costs.delay_s).tolist(),
        },
        "measured_costs": {"energy_j": measured.energy_j.tolist(), "delay_s": measured.delay_s.tolist()},
        "categories": [asdict(c) for c in categories],
        "expert_names": list(system.names),
        "energy_sweep": sweep(system, energy_budgets, energy=True),
        "delay_sweep": sweep(system, delay_budgets, energy=False),
        "val_estimator_energy_sweep": sweep(val_system, energy_budgets, energy=True),
        "val_estimator_delay_sweep": sweep(val_system, delay_budgets, energy=False),
        "estimator_check": estimator_check(system, val_system),
        "monotonicity": monotonicity(system),
        "gate_fit": json.loads((gate_mod.GATE_DIR / "gate.json").read_text(encoding="utf-8"))["fit"],
        "optimality_preserving": optimality_check(system),
    }
    result["polyblock_vs_exhaustive"] = {
        "energy": polyblock_matches(result["energy_sweep"]),
        "delay": polyblock_matches(result["delay_sweep"]),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    plot(
        result["energy_sweep"],
        "energy budget E_max (mJ per request, worst case of top-2)",
        1e3,
        out_dir / "ensemble-energy.png",
    )
    plot(
        result["delay_sweep"],
        "delay budget T_max (ms per request, every category)",
        1e3,
        out_dir / "ensemble-delay.png",
    )
    write_json_atomic(out_dir / "ensemble-results.json", result)
    return result


if __name__ == "__main__":
    run_experiment(Path(sys.argv[1]))
