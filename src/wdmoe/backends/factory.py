"""Choosing a device pool by name (`wdmoe.runtime.open`): `local` (in-process, the default) or `ray` (one actor
per device).

    pool = make_pool("ray", root, Manifest.read(root), emulate_air=True)
    model = DistributedMoE.from_pretrained(root, pool=pool)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wdmoe.backends.base import DevicePool
from wdmoe.model.shards import Manifest

BACKENDS = ("local", "ray")
RAY_CLUSTER_OPTIONS = ("address", "token_file", "object_store_mb", "num_cpus")


def make_pool(backend: str, root: Path, manifest: Manifest, **opts: Any) -> DevicePool:
    """The device pool `backend` over split directory `root`.

    local: opts go to `LocalDevicePool` (torch_device).
    ray: address, token_file, object_store_mb, num_cpus go to `RayOptions` (no address: a local cluster);
        the rest to `RayDevicePool` (compiled, emulate_air, call_timeout_s, rejoin_after_s, torch_threads, ...).
    """
    if backend == "local":
        from wdmoe.backends.local import LocalDevicePool

        return LocalDevicePool(root, manifest, **opts)
    if backend == "ray":
        try:
            from wdmoe.backends.ray_cluster import RayOptions
            from wdmoe.backends.ray_pool import RayDevicePool
        except ImportError as exc:
            raise ValueError(f"--backend ray needs Ray ({exc}); install it with pip install 'wdmoe[ray]'") from exc
        given = {key: opts.pop(key, None) for key in RAY_CLUSTER_OPTIONS}
        cluster = {key: value for key, value in given.items() if value is not None}  # None: RayOptions' default
        return RayDevicePool(root, manifest, RayOptions(**cluster), **opts)
    raise ValueError(f"backend {backend!r} is unknown; choose one of {', '.join(BACKENDS)}")

