"""Placement: which device(s) serve each (layer, expert). Pure data, no torch.

WDMoE's default puts expert e of every MoE layer on device e mod D (one expert index per device). Replicas are
allowed: an expert may list several devices; the first live one is its primary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdmoe.errors import PlacementError


@dataclass(frozen=True)
class Placement:
    """(layer, expert) -> device ids, for `num_experts` experts in each of `moe_layers`, on `num_devices` devices.

    Attributes:
        num_devices: D.
        num_experts: E, routed experts per MoE layer.
        devices: {layer: ((device ids of expert 0), (device ids of expert 1), ...)}.
    """

    num_devices: int
    num_experts: int
    devices: Mapping[int, tuple[tuple[int, ...], ...]]

    def __post_init__(self) -> None:
        if self.num_devices < 1:
            raise PlacementError(f"num_devices = {self.num_devices}: need at least 1 device")
        for layer, experts in self.devices.items():
            if len(experts) != self.num_experts:
                raise PlacementError(
                    f"placement of layer {layer} lists {len(experts)} experts; the model has {self.num_experts}"
                )
            for expert, ids in enumerate(experts):
                if not ids:
                    raise PlacementError(
                        f"placement leaves expert {expert} of layer {layer} on no device; "
                        f"give it at least one of devices 0..{self.num_devices - 1}"
                    )
                bad = [d for d in ids if not 0 <= d < self.num_devices]
                if bad:
                    raise PlacementError(
                        f"placement puts expert {expert} of layer {layer} on device {bad[0]}, "
                        f"but device ids run 0..{self.num_devices - 1}"
                    )

    @classmethod
    def round_robin(cls, moe_layers: Iterable[int], num_experts: int, num_devices: int) -> Placement:
        """WDMoE's default: expert e of every MoE layer on device e mod num_devices."""
        if num_devices < 1:
            raise PlacementError(f"num_devices = {num_devices}: need at least 1 device")
        row = tuple((e % num_devices,) for e in range(num_experts))
        return cls(num_devices, num_experts, {int(layer): row for layer in moe_layers})

    @property
    def moe_layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.devices))

    def primary_table(self, layer: int, dead: frozenset[int] = frozenset()) -> np.ndarray:
        """(E,) int64: the first live device of each expert of `layer` (-1 where every replica is dead)."""
        return np.array(
            [next((d for d in ids if d not in dead), -1) for ids in self.devices[layer]], dtype=np.int64
        )

    def experts_on(self, device: int) -> list[tuple[int, int]]:
        """The (layer, expert) pairs a device holds, in order."""
        return [
            (layer, e)
            for layer in self.moe_layers
            for e, ids in enumerate(self.devices[layer])
            if device in ids
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "num_devices": self.num_devices,
            "num_experts": self.num_experts,
            "layers": {str(layer): [list(ids) for ids in self.devices[layer]] for layer in self.moe_layers},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Placement:
        try:
            layers = {
                int(layer): tuple(tuple(int(d) for d in ids) for ids in experts)
                for layer, experts in data["layers"].items()
            }
            return cls(int(data["num_devices"]), int(data["num_experts"]), layers)
        except (KeyError, TypeError, AttributeError) as exc:
            raise PlacementError(
                f"placement is malformed ({exc!r}); expected num_devices, num_experts, layers"
            ) from exc
