"""The server stays bounded under hostile input: huge bodies are refused before they are read, long prompts before
they are tokenized, dashboard streams are capped, and /health says whether the model can serve."""

from __future__ import annotations

import asyncio
import socket
import time
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.integration.serve.conftest import LIMITS
from wdmoe.runtime.liveness import Liveness
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread


def test_a_30_mb_prompt_is_refused_with_413_while_another_request_completes(engine: Engine) -> None:
    """Refused before parsing or tokenizing (the time it takes is measured by bench/body_limit.py, not here)."""
    huge = b'{"prompt": "' + b"a" * 30_000_000 + b'", "max_tokens": 2}'
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:

        async def both() -> tuple[httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                normal = asyncio.create_task(client.post("/v1/completions", json={"prompt": "fine", "max_tokens": 4,
                                                                                   "temperature": 0}))
                refused = await client.post("/v1/completions", content=huge,
                                            headers={"content-type": "application/json"})
                return refused, await normal

        refused, normal = asyncio.run(both())
    assert refused.status_code == 413
    assert refused.json()["error"]["code"] == "request_too_large" and "limit is" in refused.json()["error"]["message"]
    assert normal.status_code == 200 and normal.json()["usage"]["completion_tokens"] == 4


def test_a_chunked_body_over_the_limit_is_cut_at_the_limit(engine: Engine) -> None:
    small = replace(LIMITS, max_body_bytes=10_000)

    def chunks():  # no Content-Length: the server counts as it reads
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"b" * 1000
        yield b'"}'

    with serve_in_thread(create_app(engine, limits=small)) as url:
        response = httpx.post(f"{url}/v1/completions", content=chunks(), headers={"content-type": "application/json"},
                              timeout=60)
    assert response.status_code == 413


def test_a_prompt_longer_than_the_token_limit_can_hold_is_refused_before_tokenizing(client: TestClient,
                                                                                    engine: Engine) -> None:
    most = LIMITS.max_prompt_tokens * engine.max_token_chars
    response = client.post("/v1/completions", json={"prompt": "x" * (most + 1), "max_tokens": 1})
    chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "y" * (most + 1)}]})

    for r in (response, chat):
        assert r.status_code == 400, r.text
        assert "characters, more than" in r.json()["error"]["message"]
    # At the bound itself the tokenizer decides (the character tokenizer: one token per character, so too long).
    assert "tokens; the limit is" in client.post("/v1/completions", json={"prompt": "x" * most}).json()["error"][
        "message"]


def test_dashboard_streams_are_capped(engine: Engine) -> None:
    capped = replace(LIMITS, max_dashboard_streams=2)
    with serve_in_thread(create_app(engine, limits=capped)) as url:

        async def open_three() -> list[int]:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                held = []
                for _ in range(2):
                    stream = client.stream("GET", "/dashboard/events")
                    response = await stream.__aenter__()
                    lines = response.aiter_lines()  # kept: dropping the iterator would close the response
                    assert (await lines.__anext__()).startswith("data: ")  # the first snapshot: the stream is open
                    held.append((stream, response, lines))
                third = await client.get("/dashboard/events")
                for stream, _, _ in held:
                    await stream.__aexit__(None, None, None)
                return [r.status_code for _, r, _ in held] + [third.status_code]

        codes = asyncio.run(open_three())
        assert codes == [200, 200, 503]
        time.sleep(0.5)  # the closed streams give their slots back
        with httpx.stream("GET", f"{url}/dashboard/events", timeout=30) as again:
            assert again.status_code == 200


def test_health_says_degraded_and_down_as_devices_die(engine: Engine, client: TestClient) -> None:
    runtime = engine.model.runtime
    before = runtime.liveness
    try:
        assert client.get("/health").json()["status"] == "ok"
        runtime.liveness = Liveness(frozenset({0}), before.epoch + 1)
        degraded = client.get("/health")
        runtime.liveness = Liveness(frozenset(range(engine.model.num_devices)), before.epoch + 2)
        down = client.get("/health")
    finally:
        runtime.liveness = before
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
    assert degraded.json()["devices_alive"] == engine.model.num_devices - 1
    assert down.status_code == 503 and down.json()["status"] == "down" and down.json()["devices_alive"] == 0


@pytest.mark.parametrize("value", ["abc", "-"])
def test_a_content_length_that_is_not_a_number_is_a_clear_400(engine: Engine, value: str) -> None:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {value}\r\n\r\n".encode())
            answer = sock.recv(4096).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 400")


def test_a_client_that_expects_100_continue_gets_the_413_without_sending_the_body(engine: Engine) -> None:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 30000000\r\nExpect: 100-continue\r\n\r\n")
            parts = []  # no body was sent: only an early answer can come; read it until the server closes
            while chunk := sock.recv(4096):
                parts.append(chunk)
            answer = b"".join(parts).decode(errors="replace")
    assert answer.startswith("HTTP/1.1 413") and "request_too_large" in answer
