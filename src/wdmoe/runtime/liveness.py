"""Which devices are live, and where each expert runs: pure values, changed only by events (no torch).

Contract: `Liveness` is a frozen value (the dead devices and an epoch that counts changes); `apply(liveness,
event)` returns the next value for a `FailoverEvent` ("failed" or "rejoined") and is the only way it changes.
`routing_table(placement, liveness)` derives the expert -> device tables of every MoE layer from the two; the
tables are read-only arrays, rebuilt (never edited) when the liveness changes, and handed to whoever needs them
for one step (the radio decider, the grouping, failover).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from wdmoe.placement import Placement
from wdmoe.runtime.failover import FailoverEvent


@dataclass(frozen=True)
class Liveness:
    """dead: the devices declared failed and not back; epoch: how many events changed `dead` so far."""

    dead: frozenset[int] = frozenset()
    epoch: int = 0


def apply(liveness: Liveness, event: FailoverEvent) -> Liveness:
    """The liveness after `event`: a failed device joins `dead`, a rejoined one leaves it."""
    dead = liveness.dead | {event.device} if event.kind == "failed" else liveness.dead - {event.device}
    return liveness if dead == liveness.dead else Liveness(dead, liveness.epoch + 1)


def apply_all(liveness: Liveness, events: Iterable[FailoverEvent]) -> Liveness:
    for event in events:
        liveness = apply(liveness, event)
    return liveness


@dataclass(frozen=True)
class RoutingTable:
    """The expert -> device tables of every MoE layer for one (placement, liveness); every array is (E,), read-only.

    Attributes:
        primary: the device that serves each expert: its first live replica, or its placement's first device where
            every replica is dead (so every entry is a valid device id, which the radio model needs).
        live: the first live replica, -1 where every replica is dead.
        base: the placement's first device, whatever is dead.
        primary_rows: `primary` as Python lists (the decode grouping reads them without numpy).
    """

    liveness: Liveness
    primary: Mapping[int, np.ndarray]
    live: Mapping[int, np.ndarray]
    base: Mapping[int, np.ndarray]
    primary_rows: Mapping[int, list[int]]


def routing_table(placement: Placement, liveness: Liveness) -> RoutingTable:
    """The tables of `placement` with the devices of `liveness.dead` routed around (`RoutingTable`)."""
    if len(liveness.dead) >= placement.num_devices:
        raise RuntimeError(
            f"all {placement.num_devices} devices have failed ({sorted(liveness.dead)}); no expert is left to run "
            "the request; restart the devices (`wdmoe device start`) and retry"
        )
    primary, live, base = {}, {}, {}
    for layer in placement.moe_layers:
        base[layer] = _frozen(placement.primary_table(layer))
        live[layer] = _frozen(placement.primary_table(layer, liveness.dead)) if liveness.dead else base[layer]
        primary[layer] = _frozen(np.where(live[layer] >= 0, live[layer], base[layer]))
    rows = {layer: table.tolist() for layer, table in primary.items()}
    return RoutingTable(liveness, primary, live, base, rows)


def _frozen(table: np.ndarray) -> np.ndarray:
    table.flags.writeable = False
    return table
