"""SSE streaming and concurrent clients, against a real uvicorn server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.integration.serve.conftest import LIMITS, load_engine
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as base:
        yield base


def sse_events(response: httpx.Response) -> list[Any]:
    events: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return events


def test_chat_stream_matches_the_plain_answer(url: str) -> None:
    request = {"messages": [{"role": "user", "content": "stream me"}], "max_tokens": 7, "temperature": 0}
    plain = httpx.post(f"{url}/v1/chat/completions", json=request, timeout=60).json()

    with httpx.stream("POST", f"{url}/v1/chat/completions", timeout=60,
                      json={**request, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = sse_events(response)

    assert events[-1] == "[DONE]"
    chunks, usage = events[:-2], events[-2]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == plain["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert usage["usage"] == plain["usage"] and usage["choices"] == []
    assert usage["wdmoe"]["bytes_on_air"] == pytest.approx(plain["wdmoe"]["bytes_on_air"])


def test_completion_stream_sends_pieces_as_they_come(url: str) -> None:
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60,
                      json={"prompt": "abc", "max_tokens": 5, "temperature": 0, "stream": True}) as response:
        events = sse_events(response)

    pieces = [e["choices"][0]["text"] for e in events[:-1]]
    plain = httpx.post(f"{url}/v1/completions", json={"prompt": "abc", "max_tokens": 5, "temperature": 0}, timeout=60)
    assert "".join(pieces) == plain.json()["choices"][0]["text"]
    assert len([p for p in pieces if p]) >= 2  # streamed token by token, not in one piece


def test_simultaneous_requests_get_their_sequential_answers(url: str) -> None:
    bodies = [{"prompt": prompt, "max_tokens": 6, "temperature": 0} for prompt in ("one", "two ", "three", "4",
                                                                                  "five!", "six six")]
    sequential = [httpx.post(f"{url}/v1/completions", json=b, timeout=60).json()["choices"][0]["text"]
                  for b in bodies]

    async def together() -> list[str]:
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                             "max_tokens": 3, "stream": True})
            answers = await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies), chat)
        return [a.json()["choices"][0]["text"] for a in answers[:-1]]

    assert asyncio.run(together()) == sequential


def test_dashboard_state_follows_the_requests(url: str, engine: Engine) -> None:
    before = httpx.get(f"{url}/dashboard/state").json()

    httpx.post(f"{url}/v1/completions", json={"prompt": "dash", "max_tokens": 2, "temperature": 0}, timeout=60)
    after = httpx.get(f"{url}/dashboard/state").json()

    assert len(after["devices"]) == engine.model.num_devices
    assert after["requests"] == before["requests"] + 1
    assert sum(d["tokens"] for d in after["devices"]) > sum(d["tokens"] for d in before["devices"])
    assert sum(after["usage"]["0"]) == sum(before["usage"].get("0", [0])) + 2 * (4 + 1)  # top-2 pairs, 5 tokens
    assert all(d["bandwidth_hz"] is not None and "snr_dl_db" in d for d in after["devices"])


def test_dashboard_history_and_dropped_pairs_add_up_to_the_step_records(text_model_dir: Path) -> None:
    """The sparkline history and the dropped-pair counts against the model's own step records (WLR drops some)."""
    engine = load_engine(text_model_dir, name="wlr", theta=0.7)
    steps: list[Any] = []
    engine.model.telemetry.listeners.append(steps.append)  # the engine clears model.steps after each request
    try:
        with serve_in_thread(create_app(engine, limits=LIMITS)) as base:
            httpx.post(f"{base}/v1/completions", json={"prompt": "drop some", "max_tokens": 5, "temperature": 0},
                       timeout=60)
            state = httpx.get(f"{base}/dashboard/state").json()
        assert [h["step"] for h in state["history"]] == list(range(len(steps)))
        for entry, step in zip(state["history"], steps, strict=True):
            assert entry["phase"] == step.phase and entry["tokens"] == step.num_tokens
            assert entry["bytes_on_air"] == sum(int(r.bits_down.sum() + r.bits_up.sum()) for r in step.layers) / 8
            assert entry["modeled_s"] == pytest.approx(sum(r.modeled.layer_s for r in step.layers))
            pairs = sum(int(r.keep.sum()) for r in step.layers)
            assert entry["experts_per_token"] == pytest.approx(pairs / (step.num_tokens * len(step.layers)))
        dropped = {layer: sum(int((~r.keep).sum()) for s in steps for r in s.layers if r.layer == int(layer))
                   for layer in state["dropped"]}
        assert {layer: sum(v) for layer, v in state["dropped"].items()} == dropped
        assert sum(dropped.values()) > 0  # theta 0.7 drops experts: the figure is not trivially zero
        last = steps[-1].layers
        mean_band = np.mean([r.decision.bandwidth_hz for r in last], axis=0)
        assert [d["bandwidth_hz"] for d in state["devices"]] == pytest.approx(mean_band.tolist())
    finally:
        engine.close()
        engine.model.close()
