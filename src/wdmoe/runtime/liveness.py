"""Which devices are live, and where each expert runs: pure values, changed only by events (no torch).

Contract: `Liveness` is a frozen value (the dead devices and an epoch that counts changes); `apply(liveness,
event)` returns the next value for a `FailoverEvent` ("failed" or "rejoined") and is the only way it changes.
`routing_table(placement, liveness)` derives the expert -> device tables of every MoE layer from the two; the
tables are read-only arrays, rebuilt (never edited) when the liveness changes, and handed to whoever needs them
for one step (the radio decider, the grouping, failover). With every device dead there is no table: it raises
`DevicesLost`, which carries that liveness (so its owner can record it and wait for devices to come back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from wdmoe.errors import DevicesUnavailable
from wdmoe.placement import Placement
from wdmoe.runtime.failover import FailoverEvent


@dataclass(frozen=True)
class Liveness:
    """dead: the devices declared failed and not back; epoch: how many events changed `dead` so far."""

    dead: frozenset[int] = frozenset()
    epoch: int = 0


class DevicesLost(DevicesUnavailable):
    """Every device is dead: no expert is left to run a step. `liveness`: that all-dead liveness; `events`: the
    events that led there within the failed step (for the failure counters), in order."""

    def __init__(self, liveness: Liveness, num_devices: int, events: tuple[FailoverEvent, ...] = ()) -> None:
        reasons = "; ".join(f"device {e.device}: {e.reason}" for e in events if e.kind == "failed" and e.reason)
        super().__init__(
            f"all {num_devices} devices have failed{f' ({reasons})' if reasons else ''}; no expert is left to run "
            "the request; retry once they are back (restart them with `wdmoe device start`)"
        )
        self.liveness, self.num_devices, self.events = liveness, num_devices, events

    def with_events(self, events: tuple[FailoverEvent, ...]) -> DevicesLost:
        """The same loss, with `events` (the step's whole history) in place of this one's."""
        return DevicesLost(self.liveness, self.num_devices, events)


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
        raise DevicesLost(liveness, placement.num_devices)
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
