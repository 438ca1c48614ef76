"""Security: only holders of the cluster token join or call devices; token files must be private; shards verified."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from tests.integration.ray.conftest import DeviceCluster
from wdmoe import DistributedMoE
from wdmoe.backends.direct import DirectError, DirectLink
from wdmoe.backends.ray_cluster import RayOptions, check_token_file, device_resource, write_token_file
from wdmoe.backends.ray_pool import RayDevicePool
from wdmoe.cli.run_cmd import generate_report
from wdmoe.errors import ShardError
from wdmoe.model.shards import Manifest

CLIENT = """
import sys, ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)
    actors = ray.util.list_named_actors(all_namespaces=True)
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
    sys.exit(3)
print("JOINED", actors)
"""


def client_env(token_file: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_AUTH_MODE"] = "token"
    env["HOME"] = str(token_file.parent if token_file else Path("/nonexistent"))  # no ~/.ray/auth_token to find
    if token_file is not None:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_file)
    return env


def test_a_client_with_another_token_cannot_connect(ray_cluster: DeviceCluster, tmp_path: Path) -> None:
    wrong = write_token_file(tmp_path / "wrong-token")
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, ray_cluster.address], env=client_env(wrong), capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "JOINED" not in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_a_client_with_the_token_can_connect(ray_cluster: DeviceCluster) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CLIENT, ray_cluster.address], env=client_env(ray_cluster.token_file),
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0 and "JOINED" in proc.stdout, proc.stdout + proc.stderr[-2000:]


def test_a_device_node_with_another_token_cannot_join(ray_cluster: DeviceCluster, tmp_path: Path) -> None:
    wrong = write_token_file(tmp_path / "wrong-token")
    proc = ray_cluster.start_device_cli(7, wrong)
    try:
        returncode = proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        returncode = None
    resources = ray.cluster_resources()
    assert device_resource(7) not in resources
    assert returncode not in (None, 0)


def test_token_files_readable_by_others_are_refused(tmp_path: Path) -> None:
    token = write_token_file(tmp_path / "token")
    assert check_token_file(token) == token
    token.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        check_token_file(token)


def test_a_device_refuses_a_shard_that_does_not_match_the_manifest(
    ray_cluster: DeviceCluster, mixtral_split: Path, tmp_path: Path
) -> None:
    split = tmp_path / "split"
    shutil.copytree(mixtral_split, split)
    shard = split / "devices" / "device-1.safetensors"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardError, match="checksum mismatch for devices/device-1"):
        RayDevicePool(split, Manifest.read(split), RayOptions(address=ray_cluster.address), torch_threads=1)


def test_a_client_without_the_device_key_cannot_call_a_device_on_its_direct_socket(
    healthy_mixtral: DistributedMoE,
) -> None:
    pool = healthy_mixtral.pool
    assert pool.transport == "direct"  # type: ignore[attr-defined]
    actor = pool.actors[0]  # type: ignore[attr-defined]
    before = ray.get(actor.refused_connections.remote())
    address = pool.info[0].direct_address  # type: ignore[attr-defined]
    with pytest.raises(DirectError, match="refused the handshake"):
        DirectLink(address, os.urandom(32), 0)  # e.g. a key guessed, or the one of a replaced actor
    deadline = time.monotonic() + 10
    while ray.get(actor.refused_connections.remote()) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ray.get(actor.refused_connections.remote()) == before + 1
    report = generate_report(healthy_mixtral, [5, 6, 7], 3)  # the BS's own link is untouched
    assert len(report["tokens"]) == 3 and "failover" not in report
