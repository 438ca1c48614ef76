"""The device-pool interface: the only code that moves activations between the BS and the devices.

Per MoE layer, the BS sends each device one `DeviceBatch` (the distinct tokens it needs, and which of its experts
each (token, expert) assignment uses) and receives one `DeviceResult` (one unweighted expert output per
assignment, and the device's measured compute time). Weighting and combining stay at the BS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class DeviceBatch:
    """What one device computes for one MoE layer step.

    Attributes:
        device: the device id.
        layer: the MoE layer index.
        hidden: (n, H) the distinct token states sent down.
        token_index: (m,) int64, the row of `hidden` of each assignment.
        expert: (m,) int64, the expert of each assignment (one the device holds for this layer).
    """

    device: int
    layer: int
    hidden: torch.Tensor
    token_index: torch.Tensor
    expert: torch.Tensor


@dataclass(frozen=True)
class DeviceResult:
    """output: (m, H) unweighted expert outputs in assignment order; compute_s: the device's measured time."""

    device: int
    output: torch.Tensor
    compute_s: float


class DevicePool(Protocol):
    """A set of expert devices that run batches for one MoE layer step and return their results in order."""

    num_devices: int

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]: ...

    def close(self) -> None: ...
