"""MoE² end to end on the local task (papers.md §5.8 steps 4-5): the selection problem, the utility oracle, MoE² and
the baselines, each evaluated on the test split.

Contract: `EnsembleSystem.load()` gathers the shipped parts (precomputed scores, the trained gate, the cross-fitted
score tables, the modeled costs). The coarse oracle is a `utility.SubsetOracle`: `accuracy(T)` is A(T), the
accuracy of the gated top-k ensemble restricted to T (A(∅) = 0), `utility(S)` its monotone hull U(S) = max over
nonempty T ⊆ S of A(T), and `active_subset(S)` the maximizing T (ties: larger mean probability of the right choice,
fewer experts, smaller bitmask): the experts the fine level actually routes among once S is chosen. U is monotone by
construction, so the polyblock search is exact on it; A alone is not (papers.md §5.7; our reconstruction [R]).
`estimator` says which items A is measured on (never the test split):

    "crossfit"    (default) the 480 train + val items, each scored out of fold by a gate retrained without its fold
                  and temperatures fit without it (`crossfit.py`), mean over the repeats [R]
    "val"         the 160 validation items with the shipped gate (the first version; noisy, kept for comparison)

`run_policy(policy, E_max, T_max)` picks a subset under the budgets with that policy's rule and returns its test
accuracy (the shipped gate) and the mean energy the chosen experts spent per test request:

    moe2              polyblock search on U (selection.coarse_select), gate top-k within active_subset(S*)
    moe2-exhaustive   the same by exhaustive search (the check)
    (the baselines below choose with the same A, and route the gate's top-k within their own S)
    best-single       baselines.best_single
    uniform-feasible  baselines.most_experts with every member answering, equal weights, energy held at Σ_S
    random-feasible   baselines.random_feasible, gate top-k; the mean over RANDOM_DRAWS seeds
    greedy-per-joule  baselines.greedy_per_joule, gate top-k
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdmoe.ensemble import baselines
from wdmoe.ensemble import crossfit as crossfit_mod
from wdmoe.ensemble import gate as gate_mod
from wdmoe.ensemble import scores as scores_mod
from wdmoe.ensemble.aggregate import ensemble_accuracy
from wdmoe.ensemble.costs import RequestCosts
from wdmoe.ensemble.profiles import AGGREGATION_S, modeled_costs
from wdmoe.ensemble.selection import (
    InfeasibleSelectionError,
    SearchMethod,
    SelectionProblem,
    coarse_select,
    fine_select,
)
from wdmoe.ensemble.utility import SubsetOracle

TOP_K = 2  # experts per prompt at the fine level (papers.md §5.4: k is [U], 2 is ours [R])
RANDOM_DRAWS = 20
ESTIMATORS = ("crossfit", "val")
POLICIES = ("moe2", "moe2-exhaustive", "best-single", "uniform-feasible", "random-feasible", "greedy-per-joule")


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    subset: tuple[str, ...]  # the experts routed among (MoE²: active_subset(S*); random-feasible: the last draw)
    test_accuracy: float  # NaN when no expert fits the budgets
    mean_energy_j: float  # per test request, the experts actually asked
    evaluated_fraction: float  # subsets whose utility the rule evaluated, over 2^N


class EnsembleSystem:
    def __init__(
        self,
        scores: scores_mod.TaskScores,
        gate: gate_mod.Gate,
        costs: RequestCosts,
        top_k: int = TOP_K,
        fitted: crossfit_mod.CrossFit | None = None,
    ) -> None:
        """`fitted` given: A is cross-fitted on it (estimator "crossfit"); None: A is on the validation split."""
        self.scores, self.gate, self.costs, self.top_k = scores, gate, costs, top_k
        self.val, self.test = scores.take("val"), scores.take("test")
        self.temperatures = scores_mod.fit_temperatures(scores.take("train"))  # (N,), on the gate's training split
        self.val_probs = scores_mod.option_probs(self.val.mean_logprobs, self.temperatures)  # (N, I, C)
        self.test_probs = scores_mod.option_probs(self.test.mean_logprobs, self.temperatures)
        self.val_gate = gate.probs(self.val.embeddings)  # (I, N), the full-set gate
        self.test_gate = gate.probs(self.test.embeddings)
        self.names = scores.expert_names
        self.estimator = "val" if fitted is None else "crossfit"
        if fitted is None:
            self.oracle = SubsetOracle(self.val_gate[None], self.val_probs[None], self.val.answers, top_k)
        else:
            self.oracle = SubsetOracle(fitted.gate_probs, fitted.option_probs, fitted.answers, top_k)

    @classmethod
    def load(
        cls,
        categories_costs: RequestCosts | None = None,
        estimator: str = "crossfit",
        gate_dir: Path = gate_mod.GATE_DIR,
    ) -> EnsembleSystem:
        """The shipped parts, or a gate directory `wdmoe ensemble train-gate --out` wrote (its own scores too when
        it was trained with --rescore)."""
        from wdmoe.ensemble.experts import EXPERT_NAMES
        from wdmoe.ensemble.profiles import deployment, task_categories

        own_scores = (gate_dir / scores_mod.SCORES_FILE.name).is_file()
        scores = scores_mod.load(gate_dir / scores_mod.SCORES_FILE.name if own_scores else scores_mod.SCORES_FILE)
        if categories_costs is None:
            meta = scores_mod.load_meta(gate_dir / scores_mod.META_FILE.name if own_scores else scores_mod.META_FILE)
            dep = deployment(EXPERT_NAMES, meta["num_parameters"])
            categories_costs = modeled_costs(dep, task_categories(np.array(meta["prompt_tokens"]), scores.categories))
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator {estimator!r}: expected one of {ESTIMATORS}")
        fitted = crossfit_mod.load(gate_dir / crossfit_mod.CROSSFIT_FILE.name) if estimator == "crossfit" else None
        return cls(scores, gate_mod.load_gate(gate_dir), categories_costs, fitted=fitted)

    def accuracy(self, subset: Collection[int]) -> float:
        """A(T) of the chosen estimator (cached)."""
        return self.oracle.accuracy(subset)

    def active_subset(self, subset: Collection[int]) -> frozenset[int]:
        """The nonempty T ⊆ S of largest A(T) (`SubsetOracle.active_subset`); ∅ for S = ∅."""
        return self.oracle.active_subset(subset)

    def utility(self, subset: Collection[int]) -> float:
        """U(S) = max over nonempty T ⊆ S of A(T): monotone non-decreasing by construction [R]."""
        return self.oracle.utility(subset)

    def problem(self, energy_budget_j: float, delay_budget_s: float, top_k: int | None) -> SelectionProblem:
        budgets = np.full(len(self.costs.category_names), delay_budget_s)
        return SelectionProblem.from_costs(self.costs, energy_budget_j, budgets, top_k, AGGREGATION_S)

    def _test(self, subset: Collection[int], uniform: bool) -> tuple[float, float]:
        """Test accuracy and mean energy per request of answering with `subset`."""
        if uniform:
            routing = fine_select(np.ones_like(self.test_gate), subset, len(subset))
        else:
            routing = fine_select(self.test_gate, subset, self.top_k)
        accuracy = ensemble_accuracy(self.test_probs, self.test.answers, routing.index, routing.weight)
        energy = np.asarray(self.costs.energy_j)[routing.index, self.test.categories[:, None]]  # (I, k)
        return accuracy, float(energy.sum(axis=1).mean())

    def run_policy(self, policy: str, energy_budget_j: float, delay_budget_s: float) -> PolicyResult:
        uniform = policy == "uniform-feasible"
        problem = self.problem(energy_budget_j, delay_budget_s, None if uniform else self.top_k)
        try:
            if policy == "random-feasible":
                return self._random(problem)
            rules = {
                "moe2": lambda: coarse_select(problem, self.utility, SearchMethod.POLYBLOCK),
                "moe2-exhaustive": lambda: coarse_select(problem, self.utility, SearchMethod.EXHAUSTIVE),
                "best-single": lambda: baselines.best_single(problem, self.accuracy),
                "uniform-feasible": lambda: baselines.most_experts(problem, self.accuracy),
                "greedy-per-joule": lambda: baselines.greedy_per_joule(problem, self.accuracy),
            }
            selection = rules[policy]()
        except InfeasibleSelectionError:
            return PolicyResult(policy, (), math.nan, math.nan, 0.0)
        routed = self.active_subset(selection.subset) if policy.startswith("moe2") else selection.subset
        accuracy, energy = self._test(routed, uniform)
        return PolicyResult(
            policy,
            tuple(self.names[n] for n in sorted(routed)),
            accuracy,
            energy,
            selection.evaluated_fraction,
        )

    def _random(self, problem: SelectionProblem) -> PolicyResult:
        results = []
        for seed in range(RANDOM_DRAWS):
            selection = baselines.random_feasible(problem, self.accuracy, np.random.default_rng(seed))
            results.append((selection, *self._test(selection.subset, uniform=False)))
        last = results[-1][0]
        return PolicyResult(
            "random-feasible",
            tuple(self.names[n] for n in sorted(last.subset)),
            float(np.mean([r[1] for r in results])),
            float(np.mean([r[2] for r in results])),
            float(np.mean([r[0].evaluated_fraction for r in results])),
        )
