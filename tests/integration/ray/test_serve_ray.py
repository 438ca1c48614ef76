"""`wdmoe serve --backend ray`: the engine runs on Ray device actors and answers like the in-process one."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.integration.ray.conftest import DeviceCluster
from wdmoe.backends.ray_pool import RayDevicePool
from wdmoe.cli.serve_cmd import Backend, load_engine


def test_the_server_engine_runs_on_ray_devices(
    ray_cluster: DeviceCluster, mixtral_split: Path, token_file: Path
) -> None:
    local = load_engine(mixtral_split, None, "topk", 0.5, None, Backend.local)
    remote = load_engine(mixtral_split, None, "topk", 0.5, None, Backend.ray, address=ray_cluster.address,
                         token_file=token_file)
    try:
        assert isinstance(remote.model.pool, RayDevicePool)
        ids = torch.tensor([[5, 17, 99, 3]])
        expected = local.model.generate(ids, max_new_tokens=6, do_sample=False)
        assert torch.equal(remote.model.generate(ids, max_new_tokens=6, do_sample=False), expected)
    finally:
        for engine in (remote, local):
            engine.close()
            engine.model.close()
