"""The in-process device pool (the embedded default): every device is an `ExpertWorker` in this process."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.backends.worker import ExpertWorker
from wdmoe.model.shards import Manifest


class LocalDevicePool:
    """D in-process devices; each loads only its own shard. Batches run one after another.

    All devices compute on `torch_device` (one GPU can hold them all), with weights cast to `dtype` (None: as stored).
    """

    def __init__(
        self, root: Path, manifest: Manifest, torch_device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        self.num_devices = manifest.placement.num_devices
        self.workers = [ExpertWorker(root, manifest, d, torch_device, dtype) for d in range(self.num_devices)]

    def dispatch(self, batches: Sequence[DeviceBatch]) -> list[DeviceResult]:
        return [self.workers[b.device].run(b) for b in batches]

    def close(self) -> None:
        self.workers.clear()
