"""Placement is pure data: round robin, primaries with dead devices, JSON round trip, validation."""

from __future__ import annotations

import pytest

from wdmoe.errors import PlacementError
from wdmoe.placement import Placement


def test_round_robin_puts_expert_e_on_device_e_mod_d() -> None:
    placement = Placement.round_robin([1, 3], num_experts=8, num_devices=3)
    assert placement.moe_layers == (1, 3)
    assert placement.primary_table(3).tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
    assert placement.experts_on(2) == [(1, 2), (1, 5), (3, 2), (3, 5)]


def test_primary_skips_dead_replicas() -> None:
    rows = tuple((e % 2, 2) for e in range(4))
    placement = Placement(3, 4, {0: rows})
    assert placement.primary_table(0, dead=frozenset({0})).tolist() == [2, 1, 2, 1]
    assert placement.primary_table(0, dead=frozenset({0, 1, 2})).tolist() == [-1, -1, -1, -1]


def test_json_round_trip() -> None:
    placement = Placement(2, 3, {0: ((0,), (1, 0), (1,)), 4: ((1,), (0,), (0, 1))})
    assert Placement.from_json(placement.to_json()) == placement


def test_unknown_device_id_is_refused_with_the_range() -> None:
    with pytest.raises(PlacementError, match=r"device 5, but device ids run 0\.\.3"):
        Placement(4, 2, {0: ((0,), (5,))})


def test_malformed_json_is_refused() -> None:
    with pytest.raises(PlacementError, match="malformed"):
        Placement.from_json({"num_devices": 2})
