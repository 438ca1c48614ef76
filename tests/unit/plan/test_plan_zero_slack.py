"""The placement heuristic when memory is exactly full (zero slack: total expert bytes = the devices' memory, a
bin-packing puzzle): it finds a packing whenever one exists. References: the exact solver (plan/exact.py) on
random small clusters with zero slack, and enumeration of every assignment on instances small enough for it,
with memory moved between devices so that some have no packing at all (then the heuristic must say so)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from wdmoe.plan.errors import PlanError
from wdmoe.plan.exact import solve_exact
from wdmoe.plan.instances import small_cluster
from wdmoe.plan.inter import round_robin_primary, search_primary


def _used(primary: np.ndarray, sizes: np.ndarray, devices: int) -> np.ndarray:
    return np.bincount(primary.ravel(), weights=sizes.ravel(), minlength=devices)


@pytest.mark.parametrize("seed", range(40))
def test_zero_slack_cluster_packs_like_the_exact_solver(seed: int) -> None:
    case = small_cluster(seed, slack=0.0)
    model, capacity = case.model, case.capacity_bytes
    assert capacity.sum() == model.expert_bytes.sum()  # memory exactly full
    optimum = solve_exact(model, capacity)  # raises if no placement fits: one always does here

    primary = search_primary(model, capacity)

    assert np.all(_used(primary, model.expert_bytes, model.num_devices) <= capacity)
    assert model.token_s(primary) >= optimum.latency_s * (1 - 1e-9)
    robin = round_robin_primary(*primary.shape, model.num_devices)
    if np.all(_used(robin, model.expert_bytes, model.num_devices) <= capacity):
        assert model.token_s(primary) <= model.token_s(robin) * (1 + 1e-12)


def _packs_by_enumeration(sizes: np.ndarray, capacity: np.ndarray) -> bool:
    """Every assignment of the items to devices, vectorized: does one fit?"""
    owner = np.array(list(itertools.product(range(capacity.size), repeat=sizes.size)))  # (D^items, items)
    loads = np.stack([np.where(owner == d, sizes.ravel(), 0).sum(axis=1) for d in range(capacity.size)], axis=1)
    return bool(np.any(np.all(loads <= capacity, axis=1)))


def _tiny_seeds(count: int) -> list[int]:
    """Seeds of small clusters with at most 4^8 assignments."""
    seeds = []
    for seed in itertools.count():
        case = small_cluster(seed, slack=0.0)
        if case.model.num_devices ** case.model.expert_bytes.size <= 4 ** 8:
            seeds.append(seed)
        if len(seeds) == count:
            return seeds
    return seeds


@pytest.mark.parametrize("seed", _tiny_seeds(30))
def test_a_packing_is_found_exactly_when_enumeration_finds_one(seed: int) -> None:
    case = small_cluster(seed, slack=0.0)
    model, full = case.model, case.capacity_bytes
    rng = np.random.default_rng(seed)
    shift = int(rng.uniform(0.0, 0.6) * full.max())
    giver, taker = (int(d) for d in rng.permutation(full.size)[:2])
    for capacity in (full, full + np.where(np.arange(full.size) == taker, shift, 0)
                     - np.where(np.arange(full.size) == giver, min(shift, int(full[giver])), 0)):
        expected = _packs_by_enumeration(model.expert_bytes, capacity)

        if expected:
            primary = search_primary(model, capacity)
            assert np.all(_used(primary, model.expert_bytes, model.num_devices) <= capacity)
        else:
            with pytest.raises(PlanError, match="do not pack"):
                search_primary(model, capacity)
