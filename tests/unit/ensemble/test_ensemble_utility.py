"""ensemble.utility and ensemble.crossfit: the coarse oracle's monotone hull on random score tables, and the
cross-fitted tables that score no item with its own label (nor read the test split)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from wdmoe.ensemble import crossfit as cf
from wdmoe.ensemble.aggregate import ensemble_accuracy
from wdmoe.ensemble.gate import GateConfig
from wdmoe.ensemble.scores import TaskScores
from wdmoe.ensemble.scores import load as load_scores
from wdmoe.ensemble.selection import fine_select
from wdmoe.ensemble.utility import SubsetOracle


def random_oracle(seed: int, reps: int = 2, items: int = 30, experts: int = 5, choices: int = 4) -> SubsetOracle:
    rng = np.random.default_rng(seed)
    gate = rng.dirichlet(np.full(experts, 0.5), size=(reps, items))  # (R, I, N)
    options = rng.dirichlet(np.full(choices, 0.7), size=(reps, experts, items))  # (R, N, I, C)
    return SubsetOracle(gate, options, rng.integers(0, choices, items), top_k=int(rng.integers(1, 4)))


def nonempty_subsets(experts: list[int]) -> list[frozenset[int]]:
    return [frozenset(c) for size in range(1, len(experts) + 1) for c in itertools.combinations(experts, size)]


@pytest.mark.parametrize("seed", range(6))
def test_utility_is_monotone_on_random_tables(seed: int) -> None:
    oracle = random_oracle(seed)
    for small in [frozenset[int](), *nonempty_subsets(list(range(5)))]:
        for n in set(range(5)) - small:
            assert oracle.utility(small | {n}) >= oracle.utility(small)
    assert oracle.utility(()) == 0.0 and oracle.active_subset(()) == frozenset()


@pytest.mark.parametrize("seed", range(6))
def test_utility_is_the_best_subsets_accuracy_and_the_active_subset_achieves_it(seed: int) -> None:
    oracle = random_oracle(seed)
    for s in nonempty_subsets(list(range(5))):
        best = max(oracle.accuracy(t) for t in nonempty_subsets(sorted(s)))
        active = oracle.active_subset(s)
        assert active and active <= s
        assert oracle.utility(s) == best == oracle.accuracy(active)
        tied = [t for t in nonempty_subsets(sorted(s)) if oracle.accuracy(t) == best]
        assert oracle.answer_prob(active) == max(oracle.answer_prob(t) for t in tied)  # the smoother tie-break


def test_accuracy_is_the_mean_over_tables_of_the_gated_top_k_accuracy() -> None:
    oracle = random_oracle(7, reps=3)
    subset = (0, 2, 3)
    per_table = [
        ensemble_accuracy(options, oracle.answers, *vars(fine_select(gate, subset, oracle.top_k)).values())
        for gate, options in zip(oracle.gate_probs, oracle.option_probs, strict=True)
    ]
    assert oracle.accuracy(subset) == pytest.approx(np.mean(per_table))
    assert oracle.accuracy(()) == 0.0


def test_mismatched_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="do not match"):
        SubsetOracle(np.ones((1, 4, 3)) / 3, np.ones((1, 3, 5, 2)) / 2, np.zeros(4, dtype=int), 2)
    with pytest.raises(ValueError, match=r"\(R, I, N\)"):
        SubsetOracle(np.ones((4, 3)), np.ones((1, 3, 4, 2)), np.zeros(4, dtype=int), 2)


def tiny_scores(seed: int = 0, per_split: tuple[int, int, int] = (8, 4, 4), categories: int = 2) -> TaskScores:
    """3 experts, 4 choices, 8-dim embeddings; each expert answers best in its own category."""
    rng = np.random.default_rng(seed)
    splits = np.array(
        [
            s
            for _ in range(categories)
            for s, k in zip(("train", "val", "test"), per_split, strict=True)
            for _ in range(k)
        ]
    )
    cats = np.repeat(np.arange(categories), sum(per_split))
    items = len(splits)
    answers = rng.integers(0, 4, items)
    logprobs = rng.normal(-8.0, 1.0, (3, items, 4))
    for n in range(3):
        logprobs[n, cats == n % categories, answers[cats == n % categories]] += 2.0
    embeddings = rng.normal(size=(items, 8)) + cats[:, None]
    return TaskScores(
        ("a", "b", "c"), logprobs, np.ones((items, 4)), np.zeros((3, items)), embeddings, answers, cats, splits
    )


CONFIG = GateConfig(input_dim=8, hidden=4, num_experts=3, max_epochs=4, patience=2)


def run(scores: TaskScores) -> cf.CrossFit:
    return cf.crossfit(scores, folds=3, repeats=2, config=CONFIG)


def with_answers(scores: TaskScores, answers: np.ndarray) -> TaskScores:
    return dataclasses.replace(scores, answers=answers)


def test_no_item_is_scored_with_its_own_label() -> None:
    scores = tiny_scores()
    base = run(scores)
    pool = np.flatnonzero(scores.splits != "test")
    for position in (0, 5, len(pool) - 1):
        answers = scores.answers.copy()
        answers[pool[position]] = (answers[pool[position]] + 1) % 4
        flipped = run(with_answers(scores, answers))
        others = np.arange(len(pool)) != position
        np.testing.assert_array_equal(flipped.gate_probs[:, position], base.gate_probs[:, position])
        np.testing.assert_array_equal(flipped.option_probs[:, :, position], base.option_probs[:, :, position])
        # not vacuous: the label does reach the items of the other folds (their gates or temperatures change)
        assert not np.array_equal(flipped.gate_probs[:, others], base.gate_probs[:, others]) or not np.array_equal(
            flipped.option_probs[:, :, others], base.option_probs[:, :, others]
        )


def test_the_test_split_is_never_read() -> None:
    scores = tiny_scores()
    test = scores.splits == "test"
    changed = TaskScores(
        scores.expert_names,
        np.where(test[None, :, None], 0.0, scores.logprobs),
        scores.choice_tokens,
        scores.compute_s,
        np.where(test[:, None], 99.0, scores.embeddings),
        np.where(test, 0, scores.answers),
        scores.categories,
        scores.splits,
    )
    a, b = run(scores), run(changed)
    np.testing.assert_array_equal(a.gate_probs, b.gate_probs)
    np.testing.assert_array_equal(a.option_probs, b.option_probs)
    assert a.answers.shape == (int((~test).sum()),)


def test_folds_balance_categories_and_cover_every_item_once() -> None:
    categories = np.repeat(np.arange(4), 120)
    folds = cf.fold_ids(categories, 5, seed=3)
    for c in range(4):
        assert np.bincount(folds[categories == c], minlength=5).tolist() == [24] * 5
    assert not np.array_equal(folds, cf.fold_ids(categories, 5, seed=4))


def test_the_shipped_tables_match_the_shipped_scores() -> None:
    scores, fitted = load_scores(), cf.load()
    pool = np.isin(scores.splits, cf.POOL_SPLITS)
    np.testing.assert_array_equal(fitted.answers, scores.answers[pool])
    reps, items, experts = fitted.gate_probs.shape
    assert (reps, items, experts) == (cf.REPEATS, int(pool.sum()), len(scores.expert_names))
    np.testing.assert_allclose(fitted.gate_probs.sum(-1), 1.0, atol=1e-5)
