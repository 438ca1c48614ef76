"""`wdmoe device`: run this machine as device K of a Ray cluster (see docs/cluster.md).

    wdmoe device token ~/.wdmoe/token                       # once, on the BS; copy the file to every device
    wdmoe device start --address BS:6379 --device-id 3 --token-file ~/.wdmoe/token --split-dir /data/split

`start` joins the cluster as a Ray node that offers the resource `wdmoe_device_K` (so device K's actor lands here)
with token authentication on, and blocks until stopped (Ctrl-C or SIGTERM stop the node).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from wdmoe.cli.common import console, user_errors

app = typer.Typer(help="Run this machine as an expert device of a Ray cluster.", no_args_is_help=True)


@app.command("token")
def token(path: Annotated[Path, typer.Argument(help="Where to write the new token (refuses to overwrite).")]) -> None:
    """Write a new random cluster token, readable by its owner only (mode 0600)."""
    with user_errors():
        from wdmoe.backends.ray_cluster import write_token_file

        if path.exists():
            raise ValueError(f"{path} exists; remove it first or choose another path")
        write_token_file(path)
    console.print(f"wrote a new token to {path}; copy it (mode 0600) to the BS and every device")


@app.command("start")
def start(
    address: Annotated[str, typer.Option(help="The head's GCS address HOST:PORT (`ray start --head` prints it).")],
    device_id: Annotated[int, typer.Option(min=0, help="Which device of the split this machine is (K).")],
    token_file: Annotated[
        Path | None, typer.Option(help="The cluster token file, mode 0600 (default: ~/.ray/auth_token).")
    ] = None,
    split_dir: Annotated[
        Path | None,
        typer.Option(help="This machine's copy of the split directory (needs manifest.json and its own shard)."),
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(min=0, help="CPUs Ray may schedule here (default: all).")] = None,
    object_store_mb: Annotated[int, typer.Option(min=64, help="Object store size, MiB.")] = 200,
    direct_ports: Annotated[
        str | None,
        typer.Option(help="Ports LOW-HIGH the BS may reach this node's direct sockets on (default: any free port)."),
    ] = None,
) -> None:
    """Join the cluster at ADDRESS as device K's node, token authentication on; blocks until stopped."""
    with user_errors():
        from wdmoe.backends.ray_cluster import DEFAULT_TOKEN_FILE, device_node_command, device_node_env

        if split_dir is not None:
            check_local_shard(split_dir, device_id)
        env = device_node_env(token_file or DEFAULT_TOKEN_FILE, split_dir, direct_ports)
        cmd = device_node_command(address, device_id, num_cpus, object_store_mb, block=True)
    console.print(f"device {device_id}: joining {address} ({' '.join(cmd[1:])})")
    os.execve(cmd[0], cmd, env)  # this process becomes the Ray node; its exit status is the node's


def check_local_shard(split_dir: Path, device: int) -> None:
    """Fail before joining if this machine's shard of `device` is missing or does not match its manifest."""
    from wdmoe.model.shards import Manifest

    manifest = Manifest.read(split_dir)
    if not 0 <= device < manifest.placement.num_devices:
        raise ValueError(
            f"--device-id {device}: the split in {split_dir} has devices 0..{manifest.placement.num_devices - 1}"
        )
    manifest.device_shard(split_dir, device)
