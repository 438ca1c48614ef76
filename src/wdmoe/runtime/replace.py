"""Updating, the runtime side: swap a running `DistributedMoE` onto a new placement between requests.

Contract: `apply_placement(model, placement, split_dir)` takes a split directory written for `placement` (by
`wdmoe.model.split.split_model`), builds its device pool (in-process by default), rebinds the model's `Runtime` to
it (every device live, the routing table derived from the new placement), and rebuilds the radio decider when one
was set (its scenario resized when the device count changed). The BS weights, the KV-cache-free model state and
the telemetry stay; nothing restarts. Call it only between requests: a generation in flight would see two placements.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from wdmoe.backends.base import DevicePool
from wdmoe.errors import PlacementError
from wdmoe.model.shards import Manifest
from wdmoe.placement import Placement

if TYPE_CHECKING:
    from wdmoe.runtime.model import DistributedMoE


@dataclass(frozen=True)
class Swap:
    """What `apply_placement` changed: device counts before and after, and the wall time of the swap (s)."""

    devices_before: int
    devices_after: int
    split_dir: Path
    wall_s: float


def _check_same_model(old: Manifest, new: Manifest, placement: Placement) -> None:
    if new.placement != placement:
        raise PlacementError(f"the split in question holds placement {new.placement}, not the one to apply")
    same = (old.family, old.model_type, old.placement.num_experts, old.placement.moe_layers) == (
        new.family,
        new.model_type,
        new.placement.num_experts,
        new.placement.moe_layers,
    )
    if not same:
        raise PlacementError(
            f"the new split is a {new.model_type} with {new.placement.num_experts} experts in MoE layers "
            f"{list(new.placement.moe_layers)}; the running model is a {old.model_type} with "
            f"{old.placement.num_experts} in {list(old.placement.moe_layers)}: split the same model"
        )


def apply_placement(
    model: DistributedMoE,
    placement: Placement,
    split_dir: Path,
    pool: DevicePool | None = None,
    dtype: torch.dtype | None = None,
) -> Swap:
    """Run `model` on `placement` from now on, with the shards of `split_dir` (module docstring).

    Args:
        pool: the new device pool; default in-process devices on the model's torch device, each loading its own
            shard of `split_dir` (cast to `dtype`; None keeps the stored dtype).
    """
    from wdmoe.backends.local import LocalDevicePool

    start = time.perf_counter()
    split_dir = Path(split_dir)
    manifest = Manifest.read(split_dir)
    _check_same_model(model.manifest, manifest, placement)
    new_pool = pool or LocalDevicePool(split_dir, manifest, str(model.device), dtype)
    before = model.num_devices
    old_pool = model.runtime.rebind(new_pool, placement)
    model.manifest, model.root = manifest, split_dir
    old_pool.close()
    if model.wireless is not None:  # the decider knows D and the placement: rebuild it
        wireless = model.wireless
        scenario = wireless.scenario
        if scenario.num_devices != placement.num_devices:
            scenario = type(scenario).model_validate({**scenario.model_dump(), "num_devices": placement.num_devices})
        model.set_policy(wireless.policy, scenario)
    return Swap(before, placement.num_devices, split_dir, time.perf_counter() - start)
