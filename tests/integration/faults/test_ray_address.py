"""A wrong `--ray-address` fails within a bounded time with a message that names it (Ray alone retries such an
address for about 12 minutes)."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

from wdmoe.backends.ray_cluster import REACH_TIMEOUT_S, ClusterUnreachable, check_reachable
from wdmoe.errors import WdmoeError


def closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as sock:
        return int(sock.getsockname()[1])


def test_an_address_where_nothing_listens_is_refused_at_once() -> None:
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=f"--ray-address 127.0.0.1:{port}: no Ray head answers there"):
        check_reachable(f"127.0.0.1:{port}")
    assert time.monotonic() - start < REACH_TIMEOUT_S


@pytest.mark.parametrize("address", ["127.0.0.1", "head:port", ":6379"])
def test_an_address_that_is_not_host_port_is_an_input_error(address: str) -> None:
    with pytest.raises(WdmoeError, match="is not HOST:PORT"):
        check_reachable(address)


def test_wdmoe_run_with_a_wrong_ray_address_prints_one_line_and_exits_3(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    from wdmoe.cli.main import app

    port = closed_port()
    start = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--backend", "ray", "--ray-address", f"127.0.0.1:{port}",
                                      "--prompt-ids", "1,2,3", "--max-new-tokens", "2", "--json"])
    assert result.exit_code == 3, result.output
    assert time.monotonic() - start < 120  # the shipped model's split and load, then the refusal; not 12 minutes
    assert result.stdout == ""  # --json: stdout holds the JSON or nothing
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert f"--ray-address 127.0.0.1:{port}" in errors[0] and "ray start --head" in errors[0]
