"""`wdmoe bench` against a wrong URL, no server or a keyed server: one line naming --url and what to do."""

from __future__ import annotations

import asyncio
import socket

import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from wdmoe.errors import WdmoeError
from wdmoe.serve.bench import run_bench
from wdmoe.serve.server import serve_in_thread


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://127.0.0.1:21", "http://", "127.0.0.1"])
def test_a_url_without_an_http_scheme_and_host_is_refused(url: str) -> None:
    with pytest.raises(WdmoeError, match="expected http://HOST:PORT"):
        asyncio.run(run_bench(url, num_requests=1))


def test_no_server_is_one_clear_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]  # closed when the block ends: nothing listens there
    with pytest.raises(WdmoeError, match=rf"--url http://127.0.0.1:{port}: no server answered"):
        asyncio.run(run_bench(f"http://127.0.0.1:{port}", num_requests=1, timeout_s=5))


def test_a_server_that_wants_a_key_is_named_with_the_option_to_give() -> None:
    async def models(_request: object) -> JSONResponse:
        return JSONResponse({"error": {"message": "missing key"}}, status_code=401)

    app = Starlette(routes=[Route("/v1/models", models)])
    with serve_in_thread(app) as url, pytest.raises(WdmoeError, match=r"wants an API key \(401\); give --api-key-file"):
        asyncio.run(run_bench(url, num_requests=1))
