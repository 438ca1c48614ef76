"""Perception, part 1: what each device publishes (`ResourceStatus`) and the registry that keeps the latest one.

Contract: a device (an edge server in CoEL's words, papers.md §4.2 [V: it broadcasts its resource status]) publishes
a frozen `ResourceStatus`; the `Registry` keeps the newest status per device and forgets a device whose newest
status is older than `ttl_s` (papers.md §4.2 [R]: expiry after 3 broadcast periods). The registry reads time only
through its injected clock, so tests replay it exactly. The message schema is our [R] reconstruction.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from wdmoe.plan.errors import ClusterError
from wdmoe.radio.compute import DeviceProfile


@dataclass(frozen=True)
class ResourceStatus:
    """One device's resources at one instant.

    Attributes:
        device: the device's id (a name, unique in the cluster).
        profile: its compute figures (FLOP/s, memory bytes/s, per-call overhead, powers; wdmoe.radio.compute).
        free_memory_bytes: memory free for expert weights, bytes.
        timestamp_s: when it was measured, seconds on the registry's clock.
        link_rate_bps: the BS-device Shannon rate over the whole band, bit/s (a fixed link), or None.
        distance_m: the BS-device ground distance in metres, sampled through the cluster's channel, or None.
            Exactly one of link_rate_bps and distance_m is set.
        load: utilisation in [0, 1); the planner sees (1 - load) of the FLOP/s and memory bytes/s [R].
        host_memory_bytes: a slower host-memory tier (intra-server plans only), bytes.
        host_bytes_per_s: the weight bandwidth of that tier (PCIe or unified memory), bytes/s.
    """

    device: str
    profile: DeviceProfile
    free_memory_bytes: int
    timestamp_s: float = 0.0
    link_rate_bps: float | None = None
    distance_m: float | None = None
    load: float = 0.0
    host_memory_bytes: int = 0
    host_bytes_per_s: float = 0.0

    def __post_init__(self) -> None:
        where = f"device {self.device!r}"
        if (self.link_rate_bps is None) == (self.distance_m is None):
            raise ClusterError(
                f"{where}: give exactly one of link_rate_bps (bit/s) and distance_m (m), got "
                f"link_rate_bps = {self.link_rate_bps}, distance_m = {self.distance_m}"
            )
        checks = (
            ("free_memory_bytes", self.free_memory_bytes, "bytes", self.free_memory_bytes >= 0),
            ("link_rate_bps", self.link_rate_bps, "bit/s", self.link_rate_bps is None or self.link_rate_bps > 0),
            ("distance_m", self.distance_m, "m", self.distance_m is None or self.distance_m > 0),
            ("load", self.load, "(fraction)", 0.0 <= self.load < 1.0),
            ("host_memory_bytes", self.host_memory_bytes, "bytes", self.host_memory_bytes >= 0),
            ("host_bytes_per_s", self.host_bytes_per_s, "bytes/s", self.host_bytes_per_s >= 0),
            ("timestamp_s", self.timestamp_s, "s", math.isfinite(self.timestamp_s)),
        )
        for field, value, unit, ok in checks:
            if not ok:
                rule = "must be in [0, 1)" if field == "load" else "must be >= 0 (> 0 for rates and distances)"
                raise ClusterError(f"{where}: {field} = {value} {unit}: {rule}")
        if self.host_memory_bytes > 0 and self.host_bytes_per_s <= 0:
            raise ClusterError(
                f"{where}: host_memory_bytes = {self.host_memory_bytes} bytes needs "
                f"host_bytes_per_s > 0 bytes/s, got {self.host_bytes_per_s}"
            )

    def effective_profile(self) -> DeviceProfile:
        """The profile the planner uses: FLOP/s and memory bytes/s scaled by (1 - load) [R]; memory = free."""
        left = 1.0 - self.load
        return dataclasses.replace(
            self.profile,
            flops_per_s=self.profile.flops_per_s * left,
            mem_bytes_per_s=self.profile.mem_bytes_per_s * left,
            memory_bytes=float(self.free_memory_bytes),
        )


class Registry:
    """The newest `ResourceStatus` of every device; entries older than `ttl_s` seconds are expired.

    `clock` returns seconds (time.monotonic by default); pass a fake one in tests.
    """

    def __init__(self, ttl_s: float = 3.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not ttl_s > 0:
            raise ClusterError(f"registry ttl_s = {ttl_s} s: must be > 0")
        self.ttl_s = ttl_s
        self.clock = clock
        self._latest: dict[str, ResourceStatus] = {}

    def publish(self, status: ResourceStatus) -> None:
        """Keep `status` unless the registry already holds a newer one for the same device."""
        held = self._latest.get(status.device)
        if held is None or status.timestamp_s >= held.timestamp_s:
            self._latest[status.device] = status

    def remove(self, device: str) -> None:
        """Forget a device at once (it announced that it leaves)."""
        self._latest.pop(device, None)

    def live(self) -> tuple[ResourceStatus, ...]:
        """The statuses not older than ttl_s, sorted by device id; expired ones are dropped for good."""
        now_s = self.clock()
        self._latest = {d: s for d, s in self._latest.items() if now_s - s.timestamp_s <= self.ttl_s}
        return tuple(self._latest[d] for d in sorted(self._latest))
