"""MoE² stage 2: two-level expert selection (papers.md §5.5): the coarse subset S* under budgets, then per prompt
the top-k within S* (pure numpy).

Contract, coarse level: given a `SelectionProblem` (per-expert energy (N,), delays (N, C), an energy budget and C
per-category delay budgets) and a utility U over subsets, `coarse_select` returns the feasible nonempty S that
maximizes U, as a `Selection` (subset, value, number of subsets whose utility was evaluated). U must be monotone
non-decreasing (S ⊆ T implies U(S) <= U(T)) and defined on every subset, ∅ included; with monotone U and the
monotone costs of `wdmoe.ensemble.costs`, both methods return the exact optimum:

    SearchMethod.EXHAUSTIVE   every subset (the check; N <= 12 in practice)
    SearchMethod.POLYBLOCK    discrete monotonic optimization by polyblock outer approximation (papers.md §5.7)

Fine level: `fine_select(gate_probs, subset, k)` keeps the k most probable experts of S* per prompt and
renormalizes their gate probabilities (the gate restricted to S*, papers.md §5.4 [R]), as a `Routing`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from wdmoe.ensemble.costs import RequestCosts, subset_delay_s, subset_energy_j
from wdmoe.errors import WdmoeError

Utility = Callable[[frozenset[int]], float]
"""U(S): the value of answering with the experts S (e.g. validation accuracy of the gated ensemble of S)."""


class InfeasibleSelectionError(WdmoeError):
    """No nonempty subset of experts fits the budgets: every single expert breaks one of them."""


def members(mask: int) -> frozenset[int]:
    """The expert indices of a bitmask (bit n set <=> expert n in S)."""
    return frozenset(n for n in range(mask.bit_length()) if mask >> n & 1)


@dataclass(frozen=True)
class SelectionProblem:
    """The budgets and the per-expert costs the coarse level holds them against.

    Attributes:
        energy_j: (N,) joules per request of each expert (`RequestCosts.worst_case_energy_j` by default).
        delay_s: (N, C) seconds per request of each expert in each category.
        energy_budget_j: E_max, joules per request; inf for none.
        delay_budgets_s: (C,) T_max^c, seconds per request of category c; inf for none.
        top_k: None: E(S) = sum over S; k: the sum of the k largest (`costs.subset_energy_j`).
        aggregation_s: seconds of ensemble aggregation added to a nonempty subset's delay.
    """

    energy_j: np.ndarray
    delay_s: np.ndarray
    energy_budget_j: float
    delay_budgets_s: np.ndarray
    top_k: int | None = None
    aggregation_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "energy_j", np.asarray(self.energy_j, dtype=float))
        object.__setattr__(self, "delay_s", np.asarray(self.delay_s, dtype=float))
        object.__setattr__(self, "delay_budgets_s", np.atleast_1d(np.asarray(self.delay_budgets_s, dtype=float)))
        n, c = self.delay_s.shape if self.delay_s.ndim == 2 else (-1, -1)
        if self.energy_j.shape != (n,) or c < 1:
            raise ValueError(
                f"energy_j has shape {self.energy_j.shape} and delay_s {self.delay_s.shape}; give "
                "(experts,) and (experts, categories)"
            )
        for field, unit in (("energy_j", "J"), ("delay_s", "s")):
            if not (getattr(self, field) >= 0.0).all():  # NaN fails too
                raise ValueError(f"{field} holds {getattr(self, field).min()} {unit}; per-expert costs must be >= 0")
        if not self.energy_budget_j >= 0.0:
            raise ValueError(
                f"energy_budget_j = {self.energy_budget_j} J; an energy budget must be >= 0 J (math.inf for none)"
            )
        if self.delay_budgets_s.shape != (c,):
            raise ValueError(
                f"delay_budgets_s has {self.delay_budgets_s.size} values; give one budget in seconds "
                f"per category, {c} in all"
            )
        bad = np.flatnonzero(~(self.delay_budgets_s >= 0.0))
        if bad.size:
            raise ValueError(
                f"delay_budgets_s[{bad[0]}] = {self.delay_budgets_s[bad[0]]} s; a delay budget must "
                "be >= 0 s (math.inf for none)"
            )
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k = {self.top_k} experts; give k >= 1, or None to sum the whole subset")
        if not self.aggregation_s >= 0.0:
            raise ValueError(f"aggregation_s = {self.aggregation_s} s must be >= 0 s")

    @classmethod
    def from_costs(
        cls,
        costs: RequestCosts,
        energy_budget_j: float,
        delay_budgets_s: Sequence[float] | np.ndarray,
        top_k: int | None = None,
        aggregation_s: float = 0.0,
    ) -> SelectionProblem:
        """The problem of modeled or measured costs, each expert's energy taken in its costliest category."""
        return cls(
            costs.worst_case_energy_j(),
            np.asarray(costs.delay_s, dtype=float),
            energy_budget_j,
            np.asarray(delay_budgets_s, dtype=float),
            top_k,
            aggregation_s,
        )

    @property
    def num_experts(self) -> int:
        return int(self.energy_j.shape[0])

    def feasible(self, subset: Collection[int]) -> bool:
        """E(S) <= energy_budget_j and T_c(S) <= delay_budgets_s[c] for every category c."""
        return subset_energy_j(self.energy_j, subset, self.top_k) <= self.energy_budget_j and bool(
            (subset_delay_s(self.delay_s, subset, self.aggregation_s) <= self.delay_budgets_s).all()
        )

    def _violation(self, n: int) -> str:
        if self.energy_j[n] > self.energy_budget_j:
            return f"expert {n} needs {self.energy_j[n]:.4g} J > energy_budget_j = {self.energy_budget_j:.4g} J"
        c = int(np.argmax(self.delay_s[n] + self.aggregation_s - self.delay_budgets_s))
        return (
            f"expert {n} needs {self.delay_s[n, c] + self.aggregation_s:.4g} s > delay_budgets_s[{c}] = "
            f"{self.delay_budgets_s[c]:.4g} s"
        )

    def fitting_experts(self) -> list[int]:
        """The experts that fit the budgets alone; raises InfeasibleSelectionError when there are none."""
        fitting = [n for n in range(self.num_experts) if self.feasible((n,))]
        if not fitting:
            raise InfeasibleSelectionError(
                "no expert fits the budgets alone, so no subset does: "
                + ("; ".join(self._violation(n) for n in range(self.num_experts)) or "there are no experts")
                + "; raise a budget or add an expert"
            )
        return fitting


@dataclass(frozen=True)
class Selection:
    """A chosen subset, its utility, and how many distinct subsets' utilities the search evaluated."""

    subset: frozenset[int]
    value: float
    evaluated: int
    num_experts: int
    rule: str

    @property
    def evaluated_fraction(self) -> float:
        """Subsets evaluated over the 2^N subsets of the lattice."""
        return self.evaluated / 2.0**self.num_experts


class CountingUtility:
    """Caches U by bitmask and counts the distinct subsets evaluated (the oracle of papers.md §5.7)."""

    def __init__(self, utility: Utility) -> None:
        self.utility = utility
        self.cache: dict[int, float] = {}

    def __call__(self, mask: int) -> float:
        if mask not in self.cache:
            self.cache[mask] = float(self.utility(members(mask)))
        return self.cache[mask]

    def selection(self, mask: int, problem: SelectionProblem, rule: str) -> Selection:
        return Selection(members(mask), self(mask), len(self.cache), problem.num_experts, rule)


class SearchMethod(Enum):
    EXHAUSTIVE = "exhaustive"
    POLYBLOCK = "polyblock"


def exhaustive_select(problem: SelectionProblem, utility: Utility) -> Selection:
    """Evaluate U on every feasible nonempty subset and keep the best (ties: the smallest bitmask)."""
    problem.fitting_experts()
    oracle = CountingUtility(utility)
    best, best_value = 0, -math.inf
    for mask in range(1, 1 << problem.num_experts):
        if problem.feasible(members(mask)) and oracle(mask) > best_value:
            best, best_value = mask, oracle(mask)
    return oracle.selection(best, problem, SearchMethod.EXHAUSTIVE.value)


def _minimal_infeasible(problem: SelectionProblem, mask: int) -> int:
    """A minimal infeasible y ⊆ mask (mask infeasible): drop members, lightest first, while y stays infeasible.
    One pass suffices: infeasibility is closed upward, so a member kept once stays needed."""
    load = np.maximum(
        problem.energy_j / max(problem.energy_budget_j, 1e-300),
        (problem.delay_s / np.maximum(problem.delay_budgets_s, 1e-300)).max(axis=1),
    )
    y = mask
    for n in sorted(members(mask), key=lambda n: (load[n], n)):
        if not problem.feasible(members(y & ~(1 << n))):
            y &= ~(1 << n)
    return y


def polyblock_select(problem: SelectionProblem, utility: Utility) -> Selection:
    """Exact discrete monotonic optimization by polyblock outer approximation on the Boolean lattice [R].

    [R] (papers.md §5.7, after Tuy, Minoux & Hoai-Phuong 2006; the paper's exact algorithm is unread): the
    feasible set G is normal (closed downward) and is covered by a polyblock, the union of boxes [∅, v] over its
    vertices v, starting from the one vertex "all experts that fit alone". Each step takes the vertex with the
    largest upper bound U(v) (U monotone: U(v) >= U(x) for every x ⊆ v). A feasible vertex with the largest bound
    is optimal. An infeasible one is cut: y ⊆ v minimal infeasible (found with feasibility checks only), and every
    x ⊇ y is infeasible, so the box [∅, v] shrinks to the boxes of v - {i}, i in y. [R] choices of ours: the cut
    uses a minimal infeasible point (few children) instead of §5.7's maximal feasible point; vertices inherit
    their parent's bound and U is evaluated only when one reaches the top; vertices inside another live vertex,
    or already cut, are dropped. The search is best-first, so it stops at the first feasible vertex on top.
    """
    ground = sum(1 << n for n in problem.fitting_experts())
    oracle = CountingUtility(utility)
    heap: list[tuple[float, int, int, int]] = [(-math.inf, 1, 0, ground)]  # (-bound, stale, popcount, mask)
    live, cut = {ground}, set()
    while heap:
        neg_bound, stale, _, v = heapq.heappop(heap)
        if v not in live:
            continue
        if stale:  # an inherited bound: replace it by U(v) and queue again
            heapq.heappush(heap, (-oracle(v), 0, v.bit_count(), v))
            continue
        if problem.feasible(members(v)):
            return oracle.selection(v, problem, SearchMethod.POLYBLOCK.value)
        live.discard(v)
        cut.add(v)
        y = _minimal_infeasible(problem, v)
        for n in members(y):
            child = v & ~(1 << n)
            if child in cut or any(child & w == child for w in live):
                continue
            live -= {w for w in live if w & child == w}
            live.add(child)
            heapq.heappush(heap, (neg_bound, 1, child.bit_count(), child))
    raise AssertionError(
        "the polyblock emptied without a feasible vertex; singletons of fitting experts are "
        "feasible, so the costs are not monotone"
    )


def coarse_select(
    problem: SelectionProblem, utility: Utility, method: SearchMethod = SearchMethod.POLYBLOCK
) -> Selection:
    """The feasible nonempty subset of largest utility; raises InfeasibleSelectionError when none exists."""
    search = polyblock_select if method is SearchMethod.POLYBLOCK else exhaustive_select
    return search(problem, utility)


@dataclass(frozen=True)
class Routing:
    """Per prompt, the experts that answer and their combine weights: shapes (..., k'), k' = min(k, |S|)."""

    index: np.ndarray  # int, expert indices in decreasing gate probability
    weight: np.ndarray  # float, each row sums to 1


def fine_select(gate_probs: np.ndarray, subset: Collection[int], k: int) -> Routing:
    """Top-k of the gate restricted to `subset`, per prompt; gate_probs has shape (..., N).

    Weights are the kept probabilities renormalized to sum to 1, which equals the softmax restricted to S
    followed by top-k and renormalization (papers.md §5.4 [R]); a row whose kept probabilities are all 0 gets
    uniform weights. Ties go to the lower index.
    """
    probs = np.asarray(gate_probs, dtype=float)
    allowed = sorted(set(subset))
    if not allowed or k < 1:
        raise ValueError(f"fine_select needs a nonempty subset and k >= 1, got {len(allowed)} experts and k = {k}")
    if allowed[0] < 0 or allowed[-1] >= probs.shape[-1]:
        raise ValueError(
            f"subset holds expert {allowed[-1] if allowed[0] >= 0 else allowed[0]}, the gate has "
            f"{probs.shape[-1]} experts (0..{probs.shape[-1] - 1})"
        )
    restricted = probs[..., allowed]  # (..., |S|)
    order = np.argsort(-restricted, axis=-1, kind="stable")[..., : min(k, len(allowed))]  # (..., k')
    kept = np.take_along_axis(restricted, order, axis=-1)
    total = kept.sum(axis=-1, keepdims=True)
    weight = np.where(total > 0.0, kept / np.where(total > 0.0, total, 1.0), 1.0 / kept.shape[-1])
    return Routing(np.asarray(allowed)[order], weight)
