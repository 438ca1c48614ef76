"""`wdmoe serve` binds its port before loading the model and before printing its URL."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from wdmoe.errors import WdmoeError
from wdmoe.serve.server import listen


def test_listen_gives_a_bound_socket_and_names_a_busy_port() -> None:
    first = listen("127.0.0.1", 0)
    port = first.getsockname()[1]
    try:
        assert port > 0
        with pytest.raises(WdmoeError, match=f"--port {port}: cannot listen there"):
            listen("127.0.0.1", port)
    finally:
        first.close()


def test_serve_on_a_busy_port_fails_before_announcing_or_loading() -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "-m", "wdmoe.cli.main", "serve", "--port", str(port)],
                              capture_output=True, text=True, timeout=120, check=False,
                              env={**os.environ, "COLUMNS": "200"})
    finally:
        holder.close()
    assert done.returncode == 2
    assert "serving" not in done.stdout and "http://" not in done.stdout
    assert f"--port {port}: cannot listen there" in done.stderr and "Traceback" not in done.stderr
