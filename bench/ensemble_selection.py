"""MoE² coarse selection: polyblock search against exhaustive search, side by side on random instances.

Each instance draws N in 4..12 LLM experts (random sizes and quantizations on random server presets, random links,
costs from `wdmoe.ensemble.costs.request_costs`, 3 categories), an energy budget and per-category delay budgets
that leave at least one expert feasible, a worst case over the whole subset or over its top-2, and one of four
monotone utilities, in turn:

    gated-accuracy    expected accuracy of the top-2 ensemble with the gate restricted to S (random per-prompt
                      correctness and gate), made monotone as the best sub-ensemble of S: U(S) = max_{T ⊆ S} A(T)
    coverage          weighted coverage: the weight of the items some member of S covers
    synergy           supermodular: sum of member values plus a non-negative bonus for every pair in S
    random-monotone   U(S) = max_{T ⊆ S} r(T), r uniform at random on every subset (no structure at all)

Both searches see the same problem and utility; an instance counts as optimal when the polyblock value equals
the exhaustive one. The evaluated fraction is the number of distinct subsets whose utility a search asked for,
over 2^N.

    python bench/ensemble_selection.py [--json] [--instances N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable

import numpy as np

from wdmoe.ensemble.costs import Category, LLMExpert, request_costs, subset_energy_j
from wdmoe.ensemble.selection import SearchMethod, SelectionProblem, coarse_select
from wdmoe.radio.compute import PRESETS
from wdmoe.radio.link import LinkState

FAMILIES = ("gated-accuracy", "coverage", "synergy", "random-monotone")
CATEGORIES = (Category("qa", 120, 4), Category("chat", 200, 120), Category("code", 400, 300))


def all_masks(n: int) -> np.ndarray:
    """(2^N, N) bool: row m holds the members of bitmask m."""
    return (np.arange(1 << n)[:, None] >> np.arange(n) & 1).astype(bool)


def monotone_envelope(table: np.ndarray, n: int) -> np.ndarray:
    """U(S) = max over T ⊆ S of table[T], by one max pass per bit; shape (2^N,)."""
    out = table.copy()
    for i in range(n):
        view = out.reshape(-1, 2, 1 << i)  # axis 1: bit i unset / set
        view[:, 1, :] = np.maximum(view[:, 1, :], view[:, 0, :])
    return out


def gated_accuracy_table(rng: np.random.Generator, n: int, prompts: int = 48, k: int = 2) -> np.ndarray:
    skill = rng.normal(0.0, 1.0, n)
    strength = rng.normal(0.0, 1.5, (len(CATEGORIES), n))
    category = rng.integers(len(CATEGORIES), size=prompts)
    correct = 1.0 / (1.0 + np.exp(-(skill + strength[category] + rng.normal(0.0, 0.5, (prompts, n)))))  # (P, N)
    logits = 3.0 * correct + rng.normal(0.0, 0.7, (prompts, n))
    gate = np.exp(logits - logits.max(axis=1, keepdims=True))  # (P, N), unnormalized: top-k renormalizes
    masked = np.where(all_masks(n)[:, None, :], gate[None], 0.0)  # (2^N, P, N)
    order = np.argsort(-masked, axis=-1, kind="stable")[..., :k]  # (2^N, P, k)
    kept = np.take_along_axis(masked, order, axis=-1)
    total = kept.sum(axis=-1, keepdims=True)
    weight = kept / np.where(total > 0.0, total, 1.0)
    accuracy = (weight * np.take_along_axis(np.broadcast_to(correct, masked.shape), order, axis=-1)).sum(-1)
    return monotone_envelope(accuracy.mean(axis=1), n)


def utility_table(family: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """U on every bitmask, shape (2^N,); monotone non-decreasing by construction."""
    masks = all_masks(n).astype(float)
    if family == "gated-accuracy":
        return gated_accuracy_table(rng, n)
    if family == "coverage":
        covers = rng.random((n, 30)) < rng.uniform(0.05, 0.3)  # (N, items)
        weight = rng.exponential(1.0, 30)
        return (masks @ covers.astype(float) > 0.0) @ weight
    if family == "synergy":
        pair_bonus = np.triu(rng.exponential(0.3, (n, n)), 1)
        return masks @ rng.exponential(1.0, n) + np.einsum("mi,ij,mj->m", masks, pair_bonus, masks)
    table = rng.random(1 << n)
    table[0] = 0.0
    return monotone_envelope(table, n)


def make_problem(rng: np.random.Generator, n: int) -> SelectionProblem:
    names = list(PRESETS)
    experts = [
        LLMExpert(
            f"llm{i}",
            float(rng.choice([0.5e9, 1.5e9, 3e9, 7e9, 8e9])),
            PRESETS[rng.choice(names)],
            float(rng.choice([2.0, 1.0, 0.5])),
        )
        for i in range(n)
    ]
    snr = 10.0 ** rng.uniform(10.0, 14.0, n)  # SNR per hertz, Hz: from cell edge to next to the access point
    link = LinkState(np.full(n, 100.0), np.zeros(n), np.ones(n), np.ones(n), snr, snr / 100.0)
    costs = request_costs(experts, CATEGORIES, link, 20e6 / n)
    top_k = None if rng.random() < 0.5 else 2
    delay_budgets = np.quantile(costs.delay_s, rng.uniform(0.75, 1.0, len(CATEGORIES)), axis=0).diagonal()
    energy = costs.worst_case_energy_j()
    fits = np.flatnonzero((costs.delay_s <= delay_budgets).all(axis=1))
    if fits.size == 0:
        fits = np.array([int(np.argmin((costs.delay_s / delay_budgets).max(axis=1)))])
        delay_budgets = costs.delay_s[fits[0]].copy()
    # binding: between the cheapest fitting expert and every fitting expert together
    cheapest, everyone = energy[fits].min(), subset_energy_j(energy, fits, top_k)
    energy_budget = cheapest + rng.uniform(0.1, 0.9) * (everyone - cheapest)
    return SelectionProblem(energy, costs.delay_s, energy_budget, delay_budgets, top_k)


def compare(problem: SelectionProblem, utility: Callable[[frozenset[int]], float]) -> tuple[bool, float, float]:
    exact = coarse_select(problem, utility, SearchMethod.EXHAUSTIVE)
    fast = coarse_select(problem, utility, SearchMethod.POLYBLOCK)
    matched = math.isclose(fast.value, exact.value, rel_tol=1e-12, abs_tol=1e-12) and problem.feasible(fast.subset)
    return matched, fast.evaluated_fraction, exact.evaluated_fraction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--instances", type=int, default=240, help="random instances (>= 200 for the claim)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the instance generator")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rows: dict[str, list[tuple[int, bool, float, float]]] = {f: [] for f in FAMILIES}
    for i in range(args.instances):
        family, n = FAMILIES[i % len(FAMILIES)], int(rng.integers(4, 13))
        problem = make_problem(rng, n)
        table = utility_table(family, rng, n)
        utility = lambda s, t=table: float(t[sum(1 << m for m in s)])  # noqa: E731
        rows[family].append((n, *compare(problem, utility)))

    every = [r for family in FAMILIES for r in rows[family]]
    report = {
        "instances": len(every),
        "optimal_fraction": sum(r[1] for r in every) / len(every),
        "mean_evaluated_fraction": float(np.mean([r[2] for r in every])),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"{'utility':<16}{'instances':>10}{'optimal':>9}{'polyblock eval':>16}{'exhaustive eval':>17}{'ratio':>7}")
    for family in (*FAMILIES, "all"):
        part = every if family == "all" else rows[family]
        fast, exact = np.mean([r[2] for r in part]), np.mean([r[3] for r in part])
        print(
            f"{family:<16}{len(part):>10}{np.mean([r[1] for r in part]):>9.3f}{fast:>16.3f}{exact:>17.3f}"
            f"{fast / exact:>7.2f}"
        )
    print(
        "eval: subsets whose utility was evaluated over 2^N, mean; ratio: polyblock over exhaustive "
        "(exhaustive evaluates every feasible subset)"
    )


if __name__ == "__main__":
    main()
