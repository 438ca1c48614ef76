"""`wdmoe bench` against a wrong URL, no server or a keyed server (one line naming --url and what to do), against
streams cut short (failures), and its arrival process and percentiles."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from wdmoe.errors import WdmoeError
from wdmoe.serve.bench import RequestResult, arrival_times, bench_one, run_bench, summarize_bench
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


def _streaming_server(events_of: dict[int, list[str]]) -> Starlette:
    """A server whose /v1/completions streams the SSE lines `events_of[len(prompt)]` (the prompt picks the case)."""

    async def models(_request: Request) -> JSONResponse:
        return JSONResponse({"data": [{"id": "m", "max_model_len": 64, "wdmoe": {"vocab_size": 10}}]})

    async def completions(request: Request) -> StreamingResponse:
        body = await request.json()

        async def lines() -> AsyncIterator[str]:
            for line in events_of[len(body["prompt"])]:
                yield line + "\n\n"

        return StreamingResponse(lines(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/models", models), Route("/v1/completions", completions, methods=["POST"])])


def _piece(text: str, finish: str | None) -> str:
    return "data: " + json.dumps({"choices": [{"text": text, "finish_reason": finish}]})


def test_a_stream_cut_before_its_finish_reason_or_done_is_a_failure() -> None:
    usage = "data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}})
    cases = {
        1: [_piece("a", None), _piece("b", "length"), usage, "data: [DONE]"],  # complete
        2: [_piece("a", None), _piece("b", "length"), usage],  # no [DONE]
        3: [_piece("a", None), "data: [DONE]"],  # no finish_reason
        4: [_piece("a", None)],  # neither
    }
    with serve_in_thread(_streaming_server(cases)) as url:
        results = [asyncio.run(_one_result(url, [1] * n)) for n in cases]

    assert [r.ok for r in results] == [True, False, False, False]
    assert [r.error for r in results[1:]] == ["cut stream: no [DONE]", "cut stream: no finish_reason",
                                             "cut stream: no finish_reason and [DONE]"]
    assert results[0].completion_tokens == 2


async def _one_result(url: str, prompt: list[int]) -> RequestResult:
    async with httpx.AsyncClient(timeout=10) as client:
        return await bench_one(client, url, "m", prompt, 2)


def test_arrivals_are_a_seeded_poisson_process_of_the_rate() -> None:
    times = arrival_times(4000, request_rate=20.0, seed=1)
    gaps = np.diff(times)

    assert times[0] == 0.0 and times == arrival_times(4000, 20.0, seed=1) and times != arrival_times(4000, 20.0, 2)
    assert np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.05)  # exponential gaps: mean 1/rate, std 1/rate
    assert gaps.std() == pytest.approx(1 / 20.0, rel=0.08)
    assert arrival_times(3, None, seed=0) == [0.0, 0.0, 0.0] == arrival_times(3, float("inf"), seed=0)


def test_the_summary_has_p99_and_max() -> None:
    results = [RequestResult(True, None, 1, 2, ttft, ttft * 2, None, None) for ttft in np.linspace(0.01, 1.0, 100)]

    report = summarize_bench(results, duration_s=1.0)

    assert report["ttft_s"]["max"] == pytest.approx(1.0)
    assert report["ttft_s"]["p99"] == pytest.approx(float(np.percentile(np.linspace(0.01, 1.0, 100), 99)))
    assert report["e2e_s"]["max"] == pytest.approx(2.0)
    assert set(summarize_bench([], 0.0)["tpot_s"]) == {"mean", "p50", "p95", "p99", "max"}
