"""Held-out perplexity and next-token accuracy of a causal LM over token blocks.

Each document's token ids are cut into blocks of at most `block_size` tokens; every block is one forward pass
(a prefill step, so a policy decides over all of its tokens at once), and every token after the first of a block
is predicted from the ones before it. Works with a `DistributedMoE` or a plain transformers model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LanguageScores:
    """perplexity = exp(mean NLL per predicted token); next_token_accuracy = share of argmax hits."""

    perplexity: float
    next_token_accuracy: float
    nll_sum: float
    tokens: int


def blocks(documents: Iterable[Sequence[int]], block_size: int) -> list[list[int]]:
    """Cut each document into consecutive blocks of at most `block_size` ids; blocks of one token are dropped."""
    if block_size < 2:
        raise ValueError(f"block_size = {block_size}: need at least 2 tokens per block")
    out = []
    for ids in documents:
        for start in range(0, len(ids), block_size):
            chunk = list(ids[start : start + block_size])
            if len(chunk) >= 2:
                out.append(chunk)
    return out


@torch.inference_mode()
def language_scores(model: Any, documents: Iterable[Sequence[int]], block_size: int = 128,
                    progress: Any = None) -> LanguageScores:
    """Perplexity and next-token accuracy of `model` over `documents` (lists of token ids)."""
    nll_sum, hits, count = 0.0, 0, 0
    for chunk in blocks(documents, block_size):
        ids = torch.tensor([chunk])
        logits = model(ids).logits[0, :-1].float()  # (n-1, V)
        target = ids[0, 1:]
        nll_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        hits += int((logits.argmax(-1) == target).sum())
        count += int(target.numel())
        if progress is not None:
            progress(1)
    if count == 0:
        raise ValueError("no token to score: the documents are empty or shorter than 2 tokens")
    return LanguageScores(math.exp(nll_sum / count), hits / count, nll_sum, count)
