"""A real Ray cluster on 127.0.0.1 for the Ray backend's tests: a head (the BS) and one node per device.

Token authentication is on for the whole session, with a token file in a temporary directory. Every node runs with
a small object store; the cluster stops at the end of the session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

from wdmoe.backends.ray_cluster import (  # noqa: E402
    DEVICE_SLOTS,
    NAMESPACE,
    device_resource,
    enable_auth,
    write_token_file,
)
from wdmoe.placement import Placement  # noqa: E402
from wdmoe.runtime.liveness import DevicesLost  # noqa: E402
from wdmoe.runtime.model import DistributedMoE  # noqa: E402

NUM_DEVICES = 3
DIRECT_PORTS = "20000-60000"  # what a node started by `wdmoe device start` lets its direct sockets use
OBJECT_STORE_BYTES = 100 * 1024 * 1024


def descendants(pid: int) -> list[int]:
    """The pids of every live descendant of process `pid` (read from /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class DeviceCluster:
    """The session's Ray cluster: `nodes[k]` is the node that offers device k's resource."""

    def __init__(self, token_file: Path) -> None:
        from ray.cluster_utils import Cluster

        self.token_file = token_file
        self.cli_nodes: list[subprocess.Popen[bytes]] = []
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(num_cpus=2, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False),
        )
        self.nodes: dict[int, Any] = {d: self.add_device_node(d) for d in range(NUM_DEVICES)}
        self.cluster.connect(namespace=NAMESPACE)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_device_node(self, device: int) -> Any:
        node = self.cluster.add_node(
            num_cpus=1, object_store_memory=OBJECT_STORE_BYTES, resources={device_resource(device): float(DEVICE_SLOTS)}
        )
        self.nodes = {**getattr(self, "nodes", {}), device: node}
        return node

    def kill_device_node(self, device: int) -> None:
        """Device `device`'s machine loses power: its workers (the actor) and its Ray processes die at once.

        `Cluster.remove_node` kills the node's Ray processes but not its worker processes, which outlive their
        raylet for a while and keep answering the BS's direct calls: on a fast, quiet machine a whole generation
        could finish before the orphaned actor exits. A real node failure takes the workers down too.
        """
        node = self.nodes.pop(device)
        (raylet,) = node.all_processes["raylet"]
        for pid in descendants(raylet.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.cluster.remove_node(node, allow_graceful=False)

    def ensure_device_node(self, device: int) -> None:
        """Give device `device` a node again if a test left it without one (so one failure does not cascade)."""
        if not any(n["Alive"] and device_resource(device) in n["Resources"] for n in ray.nodes()):
            self.add_device_node(device)

    def node_id_of(self, device: int) -> str:
        """The id of the live node that offers device `device`'s resource (however it was started)."""
        (node_id,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and device_resource(device) in n["Resources"]]
        return str(node_id)

    def start_device_cli(self, device: int, token_file: Path) -> subprocess.Popen[bytes]:
        """Device `device`'s node started the documented way, `wdmoe device start` (stopped at shutdown)."""
        cmd = [sys.executable, "-c", "from wdmoe.cli.device_cmd import app; app()", "start",
               f"--address={self.address}", f"--device-id={device}", f"--token-file={token_file}", "--num-cpus=1",
               "--object-store-mb=100", f"--direct-ports={DIRECT_PORTS}"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.cli_nodes.append(proc)
        return proc

    def shutdown(self) -> None:
        for proc in self.cli_nodes:
            proc.terminate()  # `ray start --block` stops the node's processes on SIGTERM
            proc.wait(timeout=60)
        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("auth") / "token")


@pytest.fixture(scope="session")
def ray_cluster(token_file: Path) -> Iterator[DeviceCluster]:
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    enable_auth(token_file)
    cluster = DeviceCluster(token_file)
    try:
        yield cluster
    finally:
        cluster.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def replicated_split(tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[str, object]) -> Path:
    """The tiny Mixtral over 3 devices with every expert on two of them: e on devices e mod 3 and e+1 mod 3."""
    from wdmoe.model.split import split_model

    row = tuple((e % NUM_DEVICES, (e + 1) % NUM_DEVICES) for e in range(8))
    placement = Placement(NUM_DEVICES, 8, {0: row, 1: row})
    out = tmp_path_factory.mktemp("replicated") / "split"
    split_model(tiny_models["mixtral"], out, NUM_DEVICES, placement)
    return out


def ray_model(split: Path, cluster: DeviceCluster, **opts: Any) -> DistributedMoE:
    from wdmoe.backends.factory import make_pool
    from wdmoe.model.shards import Manifest

    pool = make_pool("ray", split, Manifest.read(split), address=cluster.address, torch_threads=1, **opts)
    return DistributedMoE.from_pretrained(split, pool=pool)


def wait_all_live(model: DistributedMoE, timeout_s: float = 120.0) -> None:
    """Run tiny requests until every failed device has rejoined (a rejoin is noticed at a layer step, or by the
    runtime's background check)."""
    import torch

    deadline = time.monotonic() + timeout_s
    while model.runtime.dead:
        if time.monotonic() > deadline:
            raise TimeoutError(f"devices {sorted(model.runtime.dead)} did not rejoin within {timeout_s:.0f} s")
        with contextlib.suppress(DevicesLost):  # every device dead: the runtime's background check brings them back
            model.generate(torch.tensor([[5, 6]]), max_new_tokens=1, do_sample=False)
        time.sleep(0.2)


@pytest.fixture(scope="session")
def mixtral_ray(ray_cluster: DeviceCluster, mixtral_split: Path) -> Iterator[DistributedMoE]:
    """The tiny Mixtral split (round robin, no replicas) on the cluster's devices; healthy at each test's start."""
    model = ray_model(mixtral_split, ray_cluster, call_timeout_s=2.0, rejoin_after_s=0.5)
    yield model
    model.close()


@pytest.fixture()
def healthy_mixtral(mixtral_ray: DistributedMoE) -> Iterator[DistributedMoE]:
    yield mixtral_ray
    mixtral_ray.set_policy(None)
    mixtral_ray.pool.emulate_air = False  # type: ignore[attr-defined]
    mixtral_ray.pool.transport = "direct"  # type: ignore[attr-defined]
    mixtral_ray.pool.rejoin_after_s = 0.5  # type: ignore[attr-defined]
    wait_all_live(mixtral_ray)


@pytest.fixture(scope="session")
def replicated_ray(ray_cluster: DeviceCluster, replicated_split: Path) -> Iterator[DistributedMoE]:
    model = ray_model(replicated_split, ray_cluster, call_timeout_s=2.0, rejoin_after_s=0.0)
    yield model
    model.close()
