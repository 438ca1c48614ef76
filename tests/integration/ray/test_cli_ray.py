"""`wdmoe run --backend ray` gives the in-process backend's tokens."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
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


def test_run_with_the_ray_backend_and_no_address_starts_its_own_cluster(mixtral_split: Path, tmp_path: Path) -> None:
    """The one-machine command of docs/cluster.md, in a fresh process: a local Ray cluster of its own, with a new
    token in ~/.ray/auth_token (HOME is a temporary directory here), the chosen transport, the in-process tokens."""
    args = ["run", "-m", str(mixtral_split), "--prompt-ids", "5,17,99", "--max-new-tokens", "8", "--json"]
    local = CliRunner().invoke(app, args)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", "from wdmoe.cli.main import app; app()", *args, "--backend", "ray",
         "--transport", "compiled"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours = json.loads(proc.stdout)
    assert ours["backend"] == "ray" and ours["tokens"] == json.loads(local.stdout)["tokens"]
    token = tmp_path / ".ray" / "auth_token"
    assert token.is_file() and stat.S_IMODE(token.stat().st_mode) == 0o600
