"""`wdmoe run --backend ray` gives the in-process backend's tokens."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tests.integration.ray.conftest import DeviceCluster
from wdmoe.cli.main import app


def test_run_with_the_ray_backend_gives_the_in_process_tokens(
    ray_cluster: DeviceCluster, mixtral_split: Path, token_file: Path
) -> None:
    runner = CliRunner()
    args = ["run", "-m", str(mixtral_split), "--prompt-ids", "5,17,99", "--max-new-tokens", "8", "--json"]
    local = runner.invoke(app, args)
    remote = runner.invoke(
        app, [*args, "--backend", "ray", "--ray-address", ray_cluster.address, "--token-file", str(token_file)]
    )
    assert local.exit_code == 0, local.output
    assert remote.exit_code == 0, remote.output
    ours, theirs = json.loads(remote.stdout), json.loads(local.stdout)
    assert ours["backend"] == "ray" and theirs["backend"] == "local"
    assert ours["tokens"] == theirs["tokens"]
