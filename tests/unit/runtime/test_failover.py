"""Failover routing (pure numpy), against an independent re-derivation of the softmax over the new top-k."""

from __future__ import annotations

import numpy as np

from wdmoe.runtime.failover import reroute


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def test_substitute_weights_are_the_softmax_over_the_new_top_k() -> None:
    logits = np.array([[3.0, 2.5, 1.0, 0.5]])  # token 0; top-2 = experts 0, 1
    index = np.array([[0, 1]])
    weight = softmax(logits[0])[[0, 1]] / softmax(logits[0])[[0, 1]].sum()
    live = np.array([0, -1, 2, 3])  # expert 1's only device is dead
    route = reroute(index, weight[None], np.ones((1, 2), bool), np.array([[False, True]]), live, logits)
    assert route.index.tolist() == [[0, 2]]  # next best live expert by logit
    expected = softmax(logits[0, [0, 2]])
    np.testing.assert_allclose(route.weight[0], expected, rtol=1e-12)
    assert (route.replica, route.substitute, route.dropped) == (0, 1, 0)


def test_replica_keeps_the_expert_and_the_weight() -> None:
    index, weight = np.array([[4, 1]]), np.array([[0.7, 0.3]])
    live = np.array([0, 1, 2, 3, 2])  # expert 4 still has a live replica (device 2)
    route = reroute(index, weight, np.ones((1, 2), bool), np.array([[True, False]]), live, None)
    assert route.index.tolist() == [[4, 1]] and route.weight.tolist() == [[0.7, 0.3]]
    assert (route.replica, route.substitute, route.dropped) == (1, 0, 0)


def test_without_logits_the_slot_is_dropped_and_the_rest_renormalized() -> None:
    index, weight = np.array([[0, 1], [2, 3]]), np.array([[0.6, 0.2], [0.5, 0.5]])
    live = np.array([-1, 1, 2, 3])
    affected = np.array([[True, False], [False, False]])
    route = reroute(index, weight, np.ones((2, 2), bool), affected, live, None)
    assert route.keep.tolist() == [[False, True], [True, True]]
    np.testing.assert_allclose(route.weight, [[0.0, 0.8], [0.5, 0.5]])  # token 0 keeps its mass 0.8
    assert route.dropped == 1


def test_a_substitute_is_never_an_expert_the_token_already_uses() -> None:
    logits = np.array([[5.0, 4.0, 3.0]])
    live = np.array([-1, 1, 2])
    route = reroute(np.array([[0, 1]]), np.array([[0.5, 0.5]]), np.ones((1, 2), bool),
                    np.array([[True, False]]), live, logits)
    assert route.index.tolist() == [[2, 1]]
