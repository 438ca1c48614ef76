"""The unigram baseline: perplexity of tokens under add-one-smoothed training-token frequencies."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def unigram_counts(train_ids: Sequence[int], vocab_size: int) -> list[int]:
    """Training-token counts per id (what a model directory stores as unigram_counts.json)."""
    return np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=vocab_size).tolist()


def unigram_perplexity_from_counts(counts: Sequence[int], eval_ids: Sequence[int]) -> float:
    """exp(-(1/N) Σ ln p(t)) with p(t) = (count(t) + 1) / (Σ counts + V), V = len(counts)."""
    if len(eval_ids) == 0:
        raise ValueError("no evaluation token: the unigram perplexity needs at least one")
    table = np.asarray(counts, dtype=np.float64)
    logp = np.log((table + 1.0) / (table.sum() + table.shape[0]))
    return math.exp(-float(logp[np.asarray(eval_ids, dtype=np.int64)].mean()))
