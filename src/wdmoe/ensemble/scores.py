"""MoE² precomputation (papers.md §5.8 step 2): every expert's option log-likelihoods on every task item, the
prompts' embeddings, and the measured compute time of every request, stored once so that gate training and the
selection oracle never run an LLM again.

Contract: `precompute(workers, items, encoder)` returns `TaskScores` with logprobs (N, I, C) = log p_n(choice c |
context of item i), choice_tokens (I, C) = the tokens each choice is scored on (the shared tokenizer), compute_s
(N, I) = seconds worker n spent on item i (on this machine), embeddings (I, 384), answers (I,), categories (I,) and
splits (I,); `save` / `load` round-trip it through one .npz file. `option_probs(split.mean_logprobs, τ)` is
p_n(y | x): the softmax over the choices of the per-token log-likelihoods / τ_n (papers.md §5.8 step 2 [R]; per
token, because summed log-likelihoods favour the choices of fewer tokens whatever the expert knows).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdmoe.atomic import write_atomic, write_json_atomic
from wdmoe.ensemble.embed import SentenceEncoder
from wdmoe.ensemble.experts import BOS, ExpertWorker
from wdmoe.ensemble.task import CATEGORIES, CategorizedItem
from wdmoe.eval.multiple_choice import encode_pair

SCORES_FILE = Path(__file__).resolve().parent.parent / "data" / "ensemble" / "scores.npz"


@dataclass(frozen=True)
class TaskScores:
    expert_names: tuple[str, ...]
    logprobs: np.ndarray  # (N, I, C) log p_n(choice | context), summed over the choice's tokens
    choice_tokens: np.ndarray  # (I, C) int, tokens of each choice (the shared tokenizer, as scored)
    compute_s: np.ndarray  # (N, I) measured seconds per request (all C choices)
    embeddings: np.ndarray  # (I, 384) the gate's input φ(x)
    answers: np.ndarray  # (I,) int
    categories: np.ndarray  # (I,) int, index into CATEGORIES
    splits: np.ndarray  # (I,) str: train / val / test

    def take(self, split: str) -> TaskScores:
        keep = self.splits == split
        return TaskScores(
            self.expert_names,
            self.logprobs[:, keep],
            self.choice_tokens[keep],
            self.compute_s[:, keep],
            self.embeddings[keep],
            self.answers[keep],
            self.categories[keep],
            self.splits[keep],
        )

    @property
    def mean_logprobs(self) -> np.ndarray:
        """(N, I, C) log p_n(choice | context) per token of the choice: what p_n(y | x) is made of."""
        return self.logprobs / np.maximum(self.choice_tokens, 1)[None]

    @property
    def num_items(self) -> int:
        return int(self.answers.shape[0])


TEMPERATURES = np.geomspace(0.02, 64.0, 71)  # the grid fit_temperatures searches


def option_probs(logprobs: np.ndarray, temperatures: np.ndarray | None = None) -> np.ndarray:
    """Softmax over the last axis (the choices) of logprobs / τ_n: p_n(y | x) from summed log-likelihoods.

    logprobs (N, I, C) (`TaskScores.mean_logprobs`); temperatures (N,) or None for τ = 1. A temperature keeps each
    expert's argmax (its accuracy) and only sets its confidence, so that mixtures and the mixture loss are neither
    ruled by a few confidently wrong experts nor flattened to uniform [R].
    """
    if temperatures is not None:
        logprobs = logprobs / np.asarray(temperatures, dtype=float)[:, None, None]
    shifted = logprobs - logprobs.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def fit_temperatures(split: TaskScores) -> np.ndarray:
    """(N,) per-expert τ of TEMPERATURES that maximizes the likelihood of the right choices of `split`."""
    items = np.arange(split.num_items)
    best = []
    for n in range(len(split.expert_names)):
        nll = [
            -np.log(option_probs(split.mean_logprobs[n : n + 1] / t)[0, items, split.answers] + 1e-300).mean()
            for t in TEMPERATURES
        ]
        best.append(TEMPERATURES[int(np.argmin(nll))])
    return np.array(best)


def precompute(
    workers: Sequence[ExpertWorker], items: Sequence[CategorizedItem], encoder: SentenceEncoder
) -> TaskScores:
    logprobs = np.zeros((len(workers), len(items), len(items[0].item.choices)))
    compute_s = np.zeros((len(workers), len(items)))
    tokenizer = workers[0].tokenizer  # shared by every expert
    tokens = [[len(encode_pair(tokenizer, c.item.context, ch, BOS)[1]) for ch in c.item.choices] for c in items]
    for n, worker in enumerate(workers):
        for i, c in enumerate(items):
            timed = worker.option_logprobs(c.item)
            logprobs[n, i], compute_s[n, i] = timed.value, timed.compute_s
    return TaskScores(
        tuple(w.name for w in workers),
        logprobs,
        np.array(tokens),
        compute_s,
        encoder.encode([c.item.context for c in items]),
        np.array([c.item.answer for c in items]),
        np.array([CATEGORIES.index(c.category) for c in items]),
        np.array([c.split for c in items]),
    )


def save(scores: TaskScores, path: Path) -> None:
    write_atomic(path, lambda tmp: _savez(scores, tmp))


def _savez(scores: TaskScores, tmp: Path) -> None:
    with tmp.open("wb") as handle:
        np.savez_compressed(
            handle,
            expert_names=np.array(scores.expert_names),
            logprobs=scores.logprobs.astype(np.float32),
            choice_tokens=scores.choice_tokens.astype(np.int16),
            compute_s=scores.compute_s.astype(np.float32),
            embeddings=scores.embeddings.astype(np.float16),
            answers=scores.answers,
            categories=scores.categories,
            splits=scores.splits,
        )


def load(path: Path = SCORES_FILE) -> TaskScores:
    with np.load(path) as data:
        return TaskScores(
            tuple(str(n) for n in data["expert_names"]),
            data["logprobs"].astype(np.float64),
            data["choice_tokens"].astype(np.int64) if "choice_tokens" in data else np.ones(data["logprobs"].shape[1:]),
            data["compute_s"].astype(np.float64),
            data["embeddings"].astype(np.float32),
            data["answers"],
            data["categories"],
            data["splits"].astype(str),
        )


META_FILE = SCORES_FILE.with_name("meta.json")


def task_meta(workers: Sequence[ExpertWorker], items: Sequence[CategorizedItem]) -> dict[str, list[int]]:
    """What the cost model needs: every expert's parameter count, and per item the tokens one request prefills
    (context + choice, with <s>, once per choice) in the shared tokenizer."""
    tokenizer = workers[0].tokenizer
    tokens = [sum(len(tokenizer(c.item.context + choice)["input_ids"]) for choice in c.item.choices) for c in items]
    return {"num_parameters": [w.info.num_parameters for w in workers], "prompt_tokens": tokens}


def save_meta(meta: dict[str, list[int]], path: Path) -> None:
    write_json_atomic(path, meta, indent=None)


def load_meta(path: Path = META_FILE) -> dict[str, list[int]]:
    return dict(json.loads(path.read_text(encoding="utf-8")))
