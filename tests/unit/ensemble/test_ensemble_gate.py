"""MoE² gate: the restricted softmax, training on the mixture loss, and save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe.ensemble.gate import Gate, GateConfig, load_gate, mixture_nll, save_gate, train_gate
from wdmoe.errors import WdmoeError

NAMES = ("a", "b", "c", "d")


def small_gate() -> Gate:
    torch.manual_seed(0)
    return Gate(GateConfig(input_dim=8, hidden=6, num_experts=4), NAMES)


def test_restricted_probabilities_sum_to_one_on_the_subset_and_vanish_outside() -> None:
    x = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)

    probs = small_gate().probs(x, allowed={1, 3})

    np.testing.assert_allclose(probs[:, [1, 3]].sum(axis=1), 1.0, rtol=1e-6)
    assert (probs[:, [0, 2]] == 0.0).all()


def test_restriction_renormalizes_the_full_gate() -> None:
    gate = small_gate()
    x = np.random.default_rng(1).normal(size=(3, 8)).astype(np.float32)

    full, sub = gate.probs(x), gate.probs(x, allowed=[0, 2])

    np.testing.assert_allclose(sub[:, [0, 2]], full[:, [0, 2]] / full[:, [0, 2]].sum(axis=1, keepdims=True), rtol=1e-5)


def test_an_empty_or_out_of_range_subset_is_refused() -> None:
    x = np.zeros((1, 8), dtype=np.float32)
    with pytest.raises(WdmoeError, match=r"nonempty subset of 0\.\.3"):
        small_gate().probs(x, allowed=[])
    with pytest.raises(WdmoeError, match=r"nonempty subset of 0\.\.3"):
        small_gate().probs(x, allowed=[4])


def test_training_routes_each_cluster_to_the_expert_that_knows_it() -> None:
    rng = np.random.default_rng(0)
    cluster = rng.integers(0, 2, size=200)
    x = (np.eye(8)[cluster] * 3 + rng.normal(scale=0.3, size=(200, 8))).astype(np.float32)
    p = np.full((200, 4), 0.05)
    p[np.arange(200), cluster] = 0.95  # expert 0 is right on cluster 0, expert 1 on cluster 1
    config = GateConfig(input_dim=8, hidden=6, num_experts=4, max_epochs=150, patience=150, lr=1e-2)

    gate, fit = train_gate(NAMES, x[:150], p[:150], x[150:], p[150:], config=config)

    assert (gate.probs(x[150:]).argmax(axis=1) == cluster[150:]).mean() > 0.95
    assert fit.val_loss < 0.2  # −log(0.95) = 0.05 when routing is perfect; uniform routing gives −log(0.275) = 1.29


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    gate = small_gate()
    x = np.random.default_rng(2).normal(size=(4, 8)).astype(np.float32)

    save_gate(gate, tmp_path)
    loaded = load_gate(tmp_path)

    assert loaded.expert_names == NAMES and loaded.config == gate.config
    np.testing.assert_array_equal(loaded.probs(x, [0, 1]), gate.probs(x, [0, 1]))


def test_mixture_loss_is_the_negative_log_of_the_gated_answer_probability() -> None:
    gate = small_gate()
    x = torch.zeros((1, 8))
    answer = torch.tensor([[0.5, 0.1, 0.2, 0.4]])
    g = gate.log_probs(x, [0, 3]).exp()[0].detach()

    loss = mixture_nll(gate, x, answer, [0, 3]).detach()

    assert float(loss) == pytest.approx(-np.log(float(g[0] * 0.5 + g[3] * 0.4)), rel=1e-6)
