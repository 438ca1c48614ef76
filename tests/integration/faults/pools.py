"""A device pool whose devices a test can kill and bring back: the in-process devices (`LocalDevicePool`, the real
experts) behind the failure semantics of a remote pool.

A killed device answers nothing: a dispatch that includes it raises `DeviceFailure` naming it, with the results of
the devices that did answer, exactly as `RayDevicePool` does when an actor dies; the pool then stops using it. A
device brought back (`revive`) is reported once by `rejoined()`, as a replacement actor is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from wdmoe.backends.base import DeviceBatch, DeviceFailure, DeviceResult
from wdmoe.backends.local import LocalDevicePool


class KillablePool:
    """`LocalDevicePool` devices that `kill(...)` and `revive(...)` take down and bring back (any thread)."""

    def __init__(self, inner: LocalDevicePool) -> None:
        self.inner = inner
        self.num_devices = inner.num_devices
        self.killed: set[int] = set()
        self.failed: set[int] = set()  # noticed by a dispatch, not yet reported back by rejoined()
        self.dispatched: list[set[int]] = []  # the devices of every dispatch, in order
        self.rejoin_calls = 0
        self._lock = threading.Lock()

    def kill(self, *devices: int) -> None:
        with self._lock:
            self.killed.update(devices)

    def revive(self, *devices: int) -> None:
        with self._lock:
            self.killed.difference_update(devices)

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]:
        with self._lock:
            killed = set(self.killed)
        self.dispatched.append({b.device for b in batches})
        lost = {b.device: "killed by the test (its process is gone)" for b in batches if b.device in killed}
        results = self.inner.dispatch([b for b in batches if b.device not in lost])
        if lost:
            with self._lock:
                self.failed.update(lost)
            raise DeviceFailure(lost, results, 0.0)
        return results

    def rejoined(self) -> frozenset[int]:
        with self._lock:
            self.rejoin_calls += 1
            back = frozenset(self.failed - self.killed)
            self.failed -= back
        return back

    def close(self) -> None:
        self.inner.close()
