"""Cross-fitted score tables for the coarse oracle (docs/ensemble.md, "The coarse utility" [R]).

Why: A(T) on the 40 validation items per category alone is noisy (one item = 0.6 points) and picked subsets that
did worse on test. Estimating A(T) on train + validation (480 items) instead needs predictions that never saw the
item they score: the shipped gate was trained on train, and the per-expert temperatures were fit there.

Contract: `crossfit(scores, folds, repeats)` splits the train + val items into `folds` folds, stratified by category
(`fold_ids`, seeded by the repeat). For each held-out fold k it retrains the gate (`gate.train_gate`, the shipped
recipe: routing targets at ROUTE_TEMPERATURE) on folds ∉ {k, k+1 mod K}, early-stops on fold k+1, fits the
per-expert temperatures on every fold but k, and scores fold k with both: `CrossFit.gate_probs` (R, I, N) and
`option_probs` (R, N, I, C) are out-of-fold for every item (no item's label is used to score it; a unit test flips
labels to check). Nothing of the test split is read. `save` / `load` round-trip through `CROSSFIT_FILE`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdmoe.atomic import write_atomic
from wdmoe.ensemble import gate as gate_mod
from wdmoe.ensemble import scores as scores_mod
from wdmoe.errors import WdmoeError

CROSSFIT_FILE = gate_mod.GATE_DIR / "crossfit.npz"
FOLDS, REPEATS = 5, 10
POOL_SPLITS = ("train", "val")


def answer_probs(split: scores_mod.TaskScores, temperatures: np.ndarray) -> np.ndarray:
    """(I, N): p_n(right choice | x_i), calibrated by the per-expert temperatures."""
    return scores_mod.option_probs(split.mean_logprobs, temperatures)[:, np.arange(split.num_items), split.answers].T


def routing_probs(split: scores_mod.TaskScores) -> np.ndarray:
    """(I, N): p_n(right choice | x_i) at the gate's shared training temperature (gate.ROUTE_TEMPERATURE)."""
    return answer_probs(split, np.full(len(split.expert_names), gate_mod.ROUTE_TEMPERATURE))


def subset_items(split: scores_mod.TaskScores, keep: np.ndarray) -> scores_mod.TaskScores:
    """The items of `split` where `keep` (bool, (I,)) holds."""
    return scores_mod.TaskScores(
        split.expert_names,
        split.logprobs[:, keep],
        split.choice_tokens[keep],
        split.compute_s[:, keep],
        split.embeddings[keep],
        split.answers[keep],
        split.categories[keep],
        split.splits[keep],
    )


def fold_ids(categories: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """(I,) fold of each item: per category, a seeded permutation dealt round-robin, so folds balance categories."""
    out = np.empty(len(categories), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for category in np.unique(categories):
        index = np.flatnonzero(categories == category)
        out[rng.permutation(index)] = np.arange(len(index)) % folds
    return out


@dataclass(frozen=True)
class CrossFit:
    answers: np.ndarray  # (I,) of the pooled items
    categories: np.ndarray  # (I,)
    folds: np.ndarray  # (R, I) fold of each item in each repeat
    gate_probs: np.ndarray  # (R, I, N) out-of-fold full-set gate
    option_probs: np.ndarray  # (R, N, I, C) out-of-fold calibrated p_n(choice | x)


def crossfit(
    scores: scores_mod.TaskScores,
    folds: int = FOLDS,
    repeats: int = REPEATS,
    config: gate_mod.GateConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CrossFit:
    """Out-of-fold gate and option probabilities of every train + val item; see the module docstring.
    `progress(done, total)` is called after each of the repeats x folds gate fits."""
    if folds < 3:
        raise WdmoeError(f"cross-fitting needs 3+ folds (train, early stopping, held out), got {folds}")
    pool = subset_items(scores, np.isin(scores.splits, POOL_SPLITS))
    n, items, choices = pool.logprobs.shape
    gates, options, fold_table = np.zeros((repeats, items, n)), np.zeros((repeats, n, items, choices)), []
    for r in range(repeats):
        fold = fold_ids(pool.categories, folds, seed=r)
        fold_table.append(fold)
        for k in range(folds):
            held, stop = fold == k, fold == (k + 1) % folds
            fit, rest = subset_items(pool, ~held & ~stop), subset_items(pool, ~held)
            early = subset_items(pool, stop)
            targets = routing_probs(fit), routing_probs(early)
            gate, _ = gate_mod.train_gate(
                pool.expert_names, fit.embeddings, targets[0], early.embeddings, targets[1], config=config
            )
            temperatures = scores_mod.fit_temperatures(rest)
            gates[r, held] = gate.probs(pool.embeddings[held])
            options[r][:, held] = scores_mod.option_probs(pool.mean_logprobs[:, held], temperatures)
            if progress is not None:
                progress(r * folds + k + 1, repeats * folds)
    return CrossFit(pool.answers, pool.categories, np.array(fold_table), gates, options)


def save(fit: CrossFit, path: Path) -> None:
    write_atomic(path, lambda tmp: _savez(fit, tmp))


def _savez(fit: CrossFit, tmp: Path) -> None:
    with tmp.open("wb") as handle:
        np.savez_compressed(
            handle,
            answers=fit.answers,
            categories=fit.categories,
            folds=fit.folds,
            gate_probs=fit.gate_probs.astype(np.float32),
            option_probs=fit.option_probs.astype(np.float32),
        )


def load(path: Path = CROSSFIT_FILE) -> CrossFit:
    if not path.is_file():
        raise WdmoeError(f"no cross-fitted tables in {path}: run `wdmoe ensemble train-gate` first")
    with np.load(path) as data:
        return CrossFit(
            data["answers"],
            data["categories"],
            data["folds"],
            data["gate_probs"].astype(np.float64),
            data["option_probs"].astype(np.float64),
        )
