"""Run an app with uvicorn on a background thread (for `wdmoe bench --model`, the soak test and the tests).

`serve_in_thread(app)` binds 127.0.0.1 on a free port, yields the base URL once the server accepts connections,
and stops it on exit (open SSE streams get `GRACE_S` seconds before they are cut).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from wdmoe.errors import WdmoeError

GRACE_S = 2
START_TIMEOUT_S = 60.0


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "warning") -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="off",
                          timeout_graceful_shutdown=GRACE_S)


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, bound before the model loads and before the URL is announced, so a busy
    port fails at once with a message (uvicorn would log it and exit after the load)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as exc:
        raise WdmoeError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); choose another "
                         "--port (0: any free port) or stop what holds it") from exc


class StoppingServer(uvicorn.Server):
    """SIGTERM/SIGINT stop the server and `run()` returns normally: uvicorn would re-raise the signal after its
    shutdown, which kills the process before the model is closed and its temporary split removed."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        self._captured_signals.clear()


@contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` on `host`:`port` (0: a free port) while the block runs; yields `http://host:port`."""
    server = uvicorn.Server(uvicorn_config(app, host, port))
    thread = threading.Thread(target=server.run, name="wdmoe-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the server on {host}:{port} did not start within {START_TIMEOUT_S:g} s")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=GRACE_S + 10)
