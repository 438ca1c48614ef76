"""Choosing a device pool by name, for the CLI: `local` (in-process, the default) or `ray` (one actor per device).

    root, tmp = split_dir_for(model_dir, devices)          # a split directory as-is, or a split made on the fly
    pool = make_pool("ray", root, Manifest.read(root), emulate_air=True)
    model = DistributedMoE.from_pretrained(root, pool=pool)
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from wdmoe.backends.base import DevicePool
from wdmoe.model.shards import MANIFEST, Manifest

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


def split_dir_for(
    path: Path, num_devices: int | None = None
) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """`path` if it is a split directory, else a split of the HF model at `path` over `num_devices` (default 8)
    in a temporary directory that the caller cleans up after closing the model (the second item)."""
    if (path / MANIFEST).is_file():
        return path, None
    from wdmoe.model.split import load_hf_model, split_model

    tmp = tempfile.TemporaryDirectory(prefix="wdmoe-split-")
    split_model(load_hf_model(path), Path(tmp.name) / "split", num_devices or 8, None, path)
    return Path(tmp.name) / "split", tmp
