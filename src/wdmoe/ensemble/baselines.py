"""MoE² baselines of the coarse level (papers.md §5.9 [R]): other rules for the subset S under the same budgets.

Contract: every rule takes a `SelectionProblem` and a utility, returns a feasible nonempty `Selection` (raising
`InfeasibleSelectionError` when no expert fits alone, like `coarse_select`), and never breaks a budget:

    best_single        the single expert of largest utility
    most_experts       the uniform ensemble: as many experts as fit, cheapest energy first
    random_feasible    a random maximal feasible subset (seeded by the caller's rng)
    greedy_per_joule   grow S by the largest utility gain per joule while a gain is left
"""

from __future__ import annotations

import numpy as np

from wdmoe.ensemble.selection import CountingUtility, Selection, SelectionProblem, Utility, members


def best_single(problem: SelectionProblem, utility: Utility) -> Selection:
    """The expert that fits alone with the largest U({n}) (ties: the lower index)."""
    oracle = CountingUtility(utility)
    best = max(problem.fitting_experts(), key=lambda n: (oracle(1 << n), -n))
    return oracle.selection(1 << best, problem, "best-single")


def _fill(problem: SelectionProblem, order: list[int]) -> int:
    """Add the experts in `order` one by one, each only if the subset stays feasible; a bitmask."""
    mask = 0
    for n in order:
        if problem.feasible(members(mask | 1 << n)):
            mask |= 1 << n
    return mask


def most_experts(problem: SelectionProblem, utility: Utility) -> Selection:
    """The uniform ensemble of all feasible experts: the fitting experts, cheapest energy first (ties: the lower
    index), each added while the subset stays feasible. Every fitting expert meets the delay budgets alone and
    both energy rules of `costs.subset_energy_j` are smallest on the cheapest experts, so this is a feasible subset
    of the largest size. Route it with uniform gate probabilities (`fine_select(np.ones(N), S, k)`)."""
    oracle = CountingUtility(utility)
    order = sorted(problem.fitting_experts(), key=lambda n: (problem.energy_j[n], n))
    return oracle.selection(_fill(problem, order), problem, "most-experts")


def random_feasible(problem: SelectionProblem, utility: Utility, rng: np.random.Generator) -> Selection:
    """A random maximal feasible subset: the fitting experts in a random order, each added if it still fits."""
    oracle = CountingUtility(utility)
    order = [int(n) for n in rng.permutation(problem.fitting_experts())]
    return oracle.selection(_fill(problem, order), problem, "random-feasible")


def greedy_per_joule(problem: SelectionProblem, utility: Utility) -> Selection:
    """Start from ∅ and add the fitting expert with the largest (U(S + n) - U(S)) / e_n among those that keep S
    feasible (e_n = 0 counts as 1e-12 J; ties: the lower index); stop when no addition fits or, once S is
    nonempty, none gains. Evaluates U(∅)."""
    oracle = CountingUtility(utility)
    fitting = problem.fitting_experts()
    mask = 0
    while True:
        base = oracle(mask)
        fits = [n for n in fitting if not mask >> n & 1 and problem.feasible(members(mask | 1 << n))]
        if not fits:
            break
        gain = {n: (oracle(mask | 1 << n) - base) / max(float(problem.energy_j[n]), 1e-12) for n in fits}
        best = max(fits, key=lambda n: (gain[n], -n))
        if mask and gain[best] <= 0.0:
            break
        mask |= 1 << best
    return oracle.selection(mask, problem, "greedy-per-joule")
