"""MoE² aggregation against hand-computed mixtures."""

from __future__ import annotations

import math

import numpy as np
import torch

from wdmoe.ensemble.aggregate import ensemble_accuracy, mix_next_token_logprobs, mix_option_probs


def test_option_mixture_matches_hand_computation() -> None:
    # 3 experts, 2 items, 2 choices
    option_probs = np.array(
        [
            [[0.9, 0.1], [0.2, 0.8]],
            [[0.3, 0.7], [0.6, 0.4]],
            [[0.5, 0.5], [1.0, 0.0]],
        ]
    )
    index = np.array([[0, 1], [2, 0]])
    weight = np.array([[0.75, 0.25], [0.5, 0.5]])

    mixed = mix_option_probs(option_probs, index, weight)

    # item 0: 0.75*[0.9,0.1] + 0.25*[0.3,0.7] = [0.75, 0.25]; item 1: 0.5*[1,0] + 0.5*[0.2,0.8] = [0.6, 0.4]
    np.testing.assert_allclose(mixed, [[0.75, 0.25], [0.6, 0.4]])
    np.testing.assert_allclose(mixed.sum(axis=1), 1.0)


def test_accuracy_follows_the_mixture_not_the_top_expert() -> None:
    option_probs = np.array([[[0.6, 0.4]], [[0.0, 1.0]]])  # expert 0 prefers choice 0, expert 1 choice 1
    answers = np.array([1])

    alone = ensemble_accuracy(option_probs, answers, np.array([[0]]), np.array([[1.0]]))
    mixed = ensemble_accuracy(option_probs, answers, np.array([[0, 1]]), np.array([[0.6, 0.4]]))

    # mixed: 0.6*[0.6,0.4] + 0.4*[0,1] = [0.36, 0.64] -> choice 1
    assert alone == 0.0
    assert mixed == 1.0


def test_next_token_mixture_is_the_log_of_the_weighted_probabilities() -> None:
    p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    weight = torch.tensor([0.25, 0.75])

    mixed = mix_next_token_logprobs(p.log(), weight)

    expected = [0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.1, 0.25 * 0.1 + 0.75 * 0.8]
    np.testing.assert_allclose(mixed.exp().numpy(), expected, rtol=1e-6)
    assert math.isclose(float(mixed.exp().sum()), 1.0, rel_tol=1e-6)


def test_zero_weight_drops_an_expert_even_with_minus_infinity_logprobs() -> None:
    logprobs = torch.tensor([[0.0, -math.inf], [-math.inf, 0.0]])

    mixed = mix_next_token_logprobs(logprobs, torch.tensor([1.0, 0.0]))

    assert mixed.tolist() == [0.0, -math.inf]
