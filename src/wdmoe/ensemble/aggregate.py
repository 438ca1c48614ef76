"""MoE² aggregation at the access point (papers.md §5.2, §5.8 step 5 [R]): p(y | x) = Σ_{n∈A(x)} w_n(x) p_n(y | x),
over the experts A(x) that the fine level chose for prompt x, with their renormalized gate weights w (a
`wdmoe.ensemble.selection.Routing`, weights summing to 1 per prompt).

Contract: `mix_option_probs` for multiple choice (option probabilities, per prompt), `mix_next_token_logprobs` for
generation (one next-token distribution of the shared vocabulary, in log space so no expert's tiny probabilities
underflow), `ensemble_accuracy` for a whole split.
"""

from __future__ import annotations

import numpy as np
import torch


def mix_option_probs(option_probs: np.ndarray, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Σ_j weight[i, j] · option_probs[index[i, j], i, :].

    Shapes: option_probs (N, I, C) = p_n(choice | x_i); index (I, k) int; weight (I, k), rows summing to 1.
    Returns (I, C), rows summing to 1.
    """
    items = np.arange(index.shape[0])[:, None]  # (I, 1)
    chosen = option_probs[index, items]  # (I, k, C)
    return np.einsum("ik,ikc->ic", weight, chosen)


def mix_next_token_logprobs(logprobs: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """log Σ_j weight[j] · exp(logprobs[j]); logprobs (k, V) of the chosen experts, weight (k,) summing to 1.

    Returns (V,) log-probabilities. A zero weight drops its expert (log 0 = -inf adds nothing).
    """
    return torch.logsumexp(logprobs + weight.clamp(min=0.0).log()[:, None], dim=0)


def ensemble_accuracy(option_probs: np.ndarray, answers: np.ndarray, index: np.ndarray, weight: np.ndarray) -> float:
    """Share of items whose mixed option distribution puts its maximum on the answer (ties: the first option)."""
    mixed = mix_option_probs(option_probs, index, weight)
    return float((mixed.argmax(axis=-1) == answers).mean())
