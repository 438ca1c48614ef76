"""The device-pool interface: the only code that moves activations between the BS and the devices.

Per MoE layer, the BS sends each device one `DeviceBatch` (the distinct tokens it needs, and which of its experts
each (token, expert) assignment uses) and receives one `DeviceResult` (one unweighted expert output per
assignment, and the device's measured compute time). Weighting and combining stay at the BS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

# The Ray data paths (`RayDevicePool(transport=...)`), here so the CLI checks --transport without importing Ray.
TRANSPORTS = ("direct", "compiled", "plain")


@dataclass(frozen=True)
class DeviceBatch:
    """What one device computes for one MoE layer step.

    Attributes:
        device: the device id.
        layer: the MoE layer index.
        hidden: (n, H) the distinct token states sent down.
        token_index: (m,) int64, the row of `hidden` of each assignment.
        expert: (m,) int64, the expert of each assignment (one the device holds for this layer).
        dl_s / ul_s: the radio model's downlink / uplink air time of this device for this step, in seconds (0 when
            no scenario is set); a pool that emulates the radio waits them, the others ignore them.
    """

    device: int
    layer: int
    hidden: torch.Tensor
    token_index: torch.Tensor
    expert: torch.Tensor
    dl_s: float = 0.0
    ul_s: float = 0.0


@dataclass(frozen=True)
class DeviceResult:
    """output: (m, H) unweighted expert outputs in assignment order; compute_s: the device's measured time;
    air_s: the emulated air time the device waited (downlink + uplink, 0 unless the pool emulates the radio)."""

    device: int
    output: torch.Tensor
    compute_s: float
    air_s: float = 0.0


class DevicePool(Protocol):
    """A set of expert devices that run batches for one MoE layer step and return their results in order."""

    num_devices: int

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]: ...

    def close(self) -> None: ...


class DeviceFailure(RuntimeError):
    """Raised by `dispatch` when devices did not answer: which ones and why, and the results of those that did.

    Attributes:
        failed: {device: reason}, e.g. "actor died" or "no answer within 2.0 s".
        results: the results of the devices that answered, in the order of their batches.
        detect_s: seconds from the start of the dispatch until the failure was noticed.
    """

    def __init__(self, failed: dict[int, str], results: list[DeviceResult], detect_s: float) -> None:
        reasons = "; ".join(f"device {d}: {why}" for d, why in sorted(failed.items()))
        super().__init__(f"{len(failed)} device(s) failed during dispatch ({reasons})")
        self.failed = failed
        self.results = results
        self.detect_s = detect_s


@runtime_checkable
class RejoiningPool(Protocol):
    """A pool whose failed devices can come back: `rejoined()` returns (without blocking) those that did."""

    def rejoined(self) -> frozenset[int]: ...
