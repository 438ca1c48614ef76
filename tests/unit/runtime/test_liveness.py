"""Liveness is a frozen value changed only by events; the routing table is derived from it, never edited."""

from __future__ import annotations

import numpy as np
import pytest

from wdmoe.placement import Placement
from wdmoe.runtime.failover import FailoverEvent
from wdmoe.runtime.liveness import DevicesLost, Liveness, apply, apply_all, routing_table


def replicated() -> Placement:
    # layer 0: expert 0 on devices 0 and 1 (a replica), the others on one device each
    return Placement(num_devices=3, num_experts=4, devices={0: ((0, 1), (1,), (2,), (0,))})


def test_apply_moves_a_device_in_and_out_and_counts_the_changes() -> None:
    start = Liveness()
    failed = apply(start, FailoverEvent("failed", 2, "crashed"))
    assert failed == Liveness(frozenset({2}), 1) and start == Liveness()
    assert apply(failed, FailoverEvent("failed", 2)) is failed  # nothing changed: the same value
    back = apply(failed, FailoverEvent("rejoined", 2))
    assert back == Liveness(frozenset(), 2)
    assert apply_all(start, [FailoverEvent("failed", 0), FailoverEvent("failed", 1)]).dead == {0, 1}


def test_routing_table_routes_around_the_dead_without_editing_an_older_table() -> None:
    placement = replicated()
    healthy = routing_table(placement, Liveness())
    before = {name: getattr(healthy, name)[0].copy() for name in ("primary", "live", "base")}
    table = routing_table(placement, apply(Liveness(), FailoverEvent("failed", 0)))
    np.testing.assert_array_equal(table.primary[0], [1, 1, 2, 0])  # expert 0 to its replica; 3 has none: stays
    np.testing.assert_array_equal(table.live[0], [1, 1, 2, -1])
    np.testing.assert_array_equal(table.base[0], placement.primary_table(0))
    for name, array in before.items():
        np.testing.assert_array_equal(getattr(healthy, name)[0], array)
    with pytest.raises(ValueError):
        table.primary[0][0] = 2  # read-only


def test_no_live_device_is_an_error_that_says_what_to_do() -> None:
    dead = Liveness(frozenset({0, 1, 2}), epoch=3)
    with pytest.raises(DevicesLost, match=r"all 3 devices have failed.*retry once they are back") as lost:
        routing_table(replicated(), dead)
    assert lost.value.liveness == dead  # what the runtime records, so /health says "down" and rejoins are awaited
