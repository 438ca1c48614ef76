"""ensemble.selection and ensemble.baselines: polyblock against exhaustive search, hand cases, top-k routing,
baselines within budget, and errors that name the field."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.ensemble.baselines import best_single, greedy_per_joule, most_experts, random_feasible
from wdmoe.ensemble.costs import RequestCosts
from wdmoe.ensemble.selection import (
    InfeasibleSelectionError,
    SearchMethod,
    SelectionProblem,
    Utility,
    coarse_select,
    fine_select,
    members,
)


def table_utility(table: np.ndarray) -> Utility:
    return lambda s: float(table[sum(1 << n for n in s)])


def random_monotone_utility(rng: np.random.Generator, n: int) -> Utility:
    """U(S) = max over T ⊆ S of r(T), r random: monotone and otherwise without structure."""
    table = rng.random(1 << n)
    for mask in range(1 << n):  # ascending, so every strict submask is final before its supersets
        for i in range(n):
            if mask >> i & 1:
                table[mask] = max(table[mask], table[mask ^ 1 << i])
    return table_utility(table)


def additive_utility(values: list[float]) -> Utility:
    return lambda s: float(sum(values[n] for n in s))


def random_problem(rng: np.random.Generator, n: int) -> SelectionProblem:
    energy, delay = rng.exponential(1.0, n), rng.exponential(1.0, (n, 2))
    top_k = None if rng.random() < 0.5 else int(rng.integers(1, 4))
    return SelectionProblem(
        energy,
        delay,
        float(rng.uniform(0.5, 1.0) * energy.sum()),
        np.quantile(delay, 0.8, axis=0) + 1e-9,
        top_k,
        float(rng.uniform(0.0, 0.1)),
    )


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_polyblock_finds_the_exhaustive_optimum(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, n)
    utility = random_monotone_utility(rng, n) if seed % 2 else additive_utility(rng.exponential(1.0, n).tolist())
    try:
        exact = coarse_select(problem, utility, SearchMethod.EXHAUSTIVE)
    except InfeasibleSelectionError:
        with pytest.raises(InfeasibleSelectionError):
            coarse_select(problem, utility, SearchMethod.POLYBLOCK)
        return

    fast = coarse_select(problem, utility, SearchMethod.POLYBLOCK)

    assert fast.value == pytest.approx(exact.value, rel=1e-12)
    assert fast.value == utility(fast.subset)
    assert fast.subset and problem.feasible(fast.subset)
    assert 1 <= fast.evaluated <= 2**n


def test_hand_knapsack() -> None:
    # energies 1, 2, 3, 4 J, budget 5 J, additive values 1, 3, 3.5, 4: the best pair within 5 J is {1, 2} (6.5);
    # feasible nonempty subsets: the 4 singletons and {0,1}, {0,2}, {0,3}, {1,2}, so exhaustive evaluates 8.
    problem = SelectionProblem(np.array([1.0, 2.0, 3.0, 4.0]), np.zeros((4, 1)), 5.0, np.array([1.0]))
    utility = additive_utility([1.0, 3.0, 3.5, 4.0])

    exact = coarse_select(problem, utility, SearchMethod.EXHAUSTIVE)
    fast = coarse_select(problem, utility)

    assert exact.subset == fast.subset == frozenset({1, 2})
    assert exact.value == fast.value == 6.5
    assert exact.evaluated == 8
    assert exact.evaluated_fraction == 8 / 16
    assert fast.rule == "polyblock"


def test_delay_budget_of_one_category_excludes_an_expert() -> None:
    # expert 2 is the most valuable but too slow for category 1 (3 s > 2 s); aggregation adds 0.5 s to everyone
    delay = np.array([[1.0, 1.0], [1.0, 1.5], [0.1, 2.5]])
    problem = SelectionProblem(np.ones(3), delay, math.inf, np.array([5.0, 2.0]), aggregation_s=0.5)

    chosen = coarse_select(problem, additive_utility([1.0, 1.0, 10.0]))

    assert chosen.subset == frozenset({0, 1})


def test_top_k_energy_admits_larger_subsets() -> None:
    # three experts of 3 J under a 6 J budget: any pair sums to 6 J, the top-2 worst case of all three is 6 J too
    whole = SelectionProblem(np.full(3, 3.0), np.zeros((3, 1)), 6.0, np.array([1.0]))
    top2 = SelectionProblem(np.full(3, 3.0), np.zeros((3, 1)), 6.0, np.array([1.0]), top_k=2)
    utility = additive_utility([1.0, 1.0, 1.0])

    assert len(coarse_select(whole, utility).subset) == 2
    assert coarse_select(top2, utility).subset == frozenset({0, 1, 2})


def test_polyblock_evaluates_a_fraction_of_twelve_experts() -> None:
    rng = np.random.default_rng(7)
    energy = rng.uniform(1.0, 3.0, 12)
    problem = SelectionProblem(energy, np.zeros((12, 1)), 0.4 * energy.sum(), np.array([1.0]))
    utility = random_monotone_utility(rng, 12)

    exact = coarse_select(problem, utility, SearchMethod.EXHAUSTIVE)
    fast = coarse_select(problem, utility)

    assert fast.value == exact.value
    assert fast.evaluated < exact.evaluated / 4


RULES = [
    lambda p, u: coarse_select(p, u),
    lambda p, u: coarse_select(p, u, SearchMethod.EXHAUSTIVE),
    best_single,
    most_experts,
    lambda p, u: random_feasible(p, u, np.random.default_rng(0)),
    greedy_per_joule,
]


@pytest.mark.parametrize("rule", RULES)
def test_no_expert_fits(rule: object) -> None:
    # expert 0 is too slow (1.5 s > 1 s), expert 1 too costly (3 J > 2.5 J): no subset fits, not even a singleton
    problem = SelectionProblem(np.array([2.0, 3.0]), np.array([[1.5], [0.5]]), 2.5, np.array([1.0]))

    with pytest.raises(InfeasibleSelectionError) as error:
        rule(problem, additive_utility([1.0, 1.0]))  # type: ignore[operator]

    assert "expert 0 needs 1.5 s > delay_budgets_s[0] = 1 s" in str(error.value)
    assert "expert 1 needs 3 J > energy_budget_j = 2.5 J" in str(error.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"energy_budget_j": -1.0}, r"energy_budget_j = -1.0 J; an energy budget must be >= 0 J"),
        ({"energy_budget_j": math.nan}, r"energy_budget_j = nan J"),
        (
            {"delay_budgets_s": np.array([1.0])},
            r"delay_budgets_s has 1 values; give one budget in seconds per category",
        ),
        ({"delay_budgets_s": np.array([1.0, -2.0])}, r"delay_budgets_s\[1\] = -2.0 s; a delay budget must be >= 0 s"),
        ({"top_k": 0}, r"top_k = 0 experts"),
        ({"aggregation_s": -0.1}, r"aggregation_s = -0.1 s"),
        ({"energy_j": np.array([1.0, -1.0, 1.0])}, r"energy_j holds -1.0 J"),
        ({"delay_s": np.full((3, 2), np.nan)}, r"delay_s holds nan s"),
    ],
)
def test_bad_budgets_name_the_field(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "energy_j": np.ones(3),
        "delay_s": np.ones((3, 2)),
        "energy_budget_j": 1.0,
        "delay_budgets_s": np.ones(2),
    }
    with pytest.raises(ValueError, match=message):
        SelectionProblem(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_problem_from_costs_takes_the_costliest_category() -> None:
    costs = RequestCosts(("a", "b"), ("x", "y"), np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[5.0, 1.0], [2.0, 7.0]]))

    problem = SelectionProblem.from_costs(costs, 6.0, [2.5, 5.0])

    np.testing.assert_array_equal(problem.energy_j, [5.0, 7.0])
    assert problem.fitting_experts() == [0]


def test_fine_select_by_hand() -> None:
    probs = np.array([[0.1, 0.4, 0.2, 0.3], [0.5, 0.1, 0.0, 0.4]])  # (prompts, experts)

    routing = fine_select(probs, {0, 2, 3}, k=2)

    np.testing.assert_array_equal(routing.index, [[3, 2], [0, 3]])
    np.testing.assert_allclose(routing.weight, [[0.6, 0.4], [5 / 9, 4 / 9]])


def test_fine_select_small_subset_ties_and_zero_probabilities() -> None:
    assert fine_select(np.array([0.2, 0.8]), {0}, k=2).index.tolist() == [0]
    tie = fine_select(np.array([0.25, 0.25, 0.25, 0.25]), {1, 2, 3}, k=2)
    zero = fine_select(np.array([0.0, 0.0, 1.0]), {0, 1}, k=2)

    assert tie.index.tolist() == [1, 2]
    np.testing.assert_allclose(zero.weight, [0.5, 0.5])
    with pytest.raises(ValueError, match=r"subset holds expert 5, the gate has 3 experts"):
        fine_select(np.ones(3) / 3, {0, 5}, k=1)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_baselines_respect_the_budgets_and_never_beat_the_optimum(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, n)
    utility = random_monotone_utility(rng, n)
    try:
        optimum = coarse_select(problem, utility, SearchMethod.EXHAUSTIVE)
    except InfeasibleSelectionError:
        return
    fitting = problem.fitting_experts()

    single = best_single(problem, utility)
    most = most_experts(problem, utility)
    randomly = random_feasible(problem, utility, np.random.default_rng(seed))
    greedy = greedy_per_joule(problem, utility)

    for chosen in (single, most, randomly, greedy):
        assert chosen.subset and problem.feasible(chosen.subset)
        assert chosen.value == utility(chosen.subset) <= optimum.value
    assert single.value == max(utility(frozenset({m})) for m in fitting)
    sizes = [bin(mask).count("1") for mask in range(1, 1 << n) if problem.feasible(members(mask))]
    assert len(most.subset) == max(sizes)
    assert all(not problem.feasible(randomly.subset | {m}) for m in set(fitting) - randomly.subset)
    assert random_feasible(problem, utility, np.random.default_rng(seed)).subset == randomly.subset


def test_greedy_per_joule_by_hand() -> None:
    # gains per joule from ∅: 2/1, 5/4, 3/2 -> take 0; then within 5 J only 2 fits (1 + 2 = 3 J, 1 + 4 > 5 J)
    problem = SelectionProblem(np.array([1.0, 4.0, 2.0]), np.zeros((3, 1)), 5.0, np.array([1.0]))

    chosen = greedy_per_joule(problem, additive_utility([2.0, 5.0, 3.0]))

    assert chosen.subset == frozenset({0, 2})
    assert coarse_select(problem, additive_utility([2.0, 5.0, 3.0])).subset == frozenset({0, 1})
