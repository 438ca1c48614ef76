"""Against a real uvicorn server on 127.0.0.1: a client that disconnects cancels its work (waiting or running,
streamed or not), and stop strings that span tokens give the same text streamed and not, through the official
`openai` client too."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.integration.serve.conftest import LIMITS
from wdmoe.runtime.telemetry import StepRecord
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread

LONG = replace(LIMITS, max_tokens=64)
DEADLINE_S = 30.0


@pytest.fixture(scope="module")
def url(engine: Engine) -> Iterator[str]:
    with serve_in_thread(create_app(engine, limits=LONG)) as base:
        yield base


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {DEADLINE_S} s: {what}")
        time.sleep(0.02)


def cancelled(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return float(re.search(r"^wdmoe_requests_cancelled_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]


async def abandon(url: str, body: dict[str, object], stream: bool, after: threading.Event | None = None) -> None:
    """Send `body`, then disconnect: once `after` is set, or (streamed) once the answer's headers came."""
    async with httpx.AsyncClient(base_url=url, timeout=DEADLINE_S) as client:
        if stream:
            async with client.stream("POST", "/v1/completions", json={**body, "stream": True}):
                if after is not None:
                    await asyncio.to_thread(after.wait, DEADLINE_S)
            return
        task = asyncio.create_task(client.post("/v1/completions", json=body))
        await asyncio.to_thread(after.wait, DEADLINE_S) if after is not None else await asyncio.sleep(0.3)
        task.cancel()  # closes the connection
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("stream", [False, True])
def test_a_waiting_request_whose_client_left_never_runs(url: str, engine: Engine, stream: bool) -> None:
    """A job holds the worker; the request waits, its client leaves, and once the worker is free the request is
    retired without a single forward step."""
    release = threading.Event()
    steps: list[StepRecord] = []
    before = cancelled(url)
    blocker = engine.submit(release.wait, DEADLINE_S)
    try:
        asyncio.run(abandon(url, {"prompt": "queued", "max_tokens": 8}, stream))
        wait_for(lambda: cancelled(url) == before + 1, "the server sees the client go")
        assert engine.pending == 2  # the blocker and the abandoned request, retired at the next step
        engine.sinks.append(steps.append)
    finally:
        release.set()
    assert blocker.result(timeout=DEADLINE_S)
    wait_for(lambda: engine.pending == 0, "the abandoned request is retired")
    engine.sinks.remove(steps.append)
    assert steps == []


@pytest.mark.parametrize("stream", [False, True])
def test_a_running_request_whose_client_left_stops_after_its_current_token(url: str, engine: Engine,
                                                                           stream: bool) -> None:
    """The prefill holds the worker until the server has seen the client go; then at most one more token follows,
    of the 64 asked for."""
    started, seen_gone = threading.Event(), threading.Event()
    steps: list[str] = []

    def hold(step: StepRecord) -> None:
        steps.append(step.phase)
        if not started.is_set():
            started.set()
            seen_gone.wait(DEADLINE_S)

    before = cancelled(url)
    engine.sinks.append(hold)
    try:
        body = {"prompt": "run long", "max_tokens": 64, "temperature": 0}
        client = threading.Thread(target=asyncio.run, args=(abandon(url, body, stream, after=started),))
        client.start()
        wait_for(lambda: cancelled(url) == before + 1, "the server sees the client go")
        seen_gone.set()
        client.join(DEADLINE_S)
        wait_for(lambda: engine.pending == 0, "the request ends")
    finally:
        seen_gone.set()
        engine.sinks.remove(hold)
    assert steps[0] == "prefill" and steps.count("decode") <= 1, steps


@pytest.fixture(scope="module")
def greedy_text(url: str) -> str:
    body = {"prompt": "stop here", "max_tokens": 24, "temperature": 0}
    return str(httpx.post(f"{url}/v1/completions", json=body, timeout=DEADLINE_S).json()["choices"][0]["text"])


def stops_of(text: str) -> list[list[str]]:
    """Stop strings over several tokens (one character is one token here): one that occurs, one whose first
    characters occur but never the whole (held back, then sent), and both together."""
    spanning = text[6:9]
    never = text[2:4] + "\x07"
    return [[spanning], [never], [never, spanning]]


def test_stream_and_plain_answers_agree_under_stop_strings_that_span_tokens(url: str, greedy_text: str) -> None:
    for stop in stops_of(greedy_text):
        for path, body in (("/v1/completions", {"prompt": "stop here"}),
                           ("/v1/chat/completions", {"messages": [{"role": "user", "content": "stop here"}]})):
            request = {**body, "max_tokens": 24, "temperature": 0, "stop": stop}
            plain = httpx.post(f"{url}{path}", json=request, timeout=DEADLINE_S).json()["choices"][0]
            pieces, finish = [], None
            with httpx.stream("POST", f"{url}{path}", json={**request, "stream": True}, timeout=DEADLINE_S) as r:
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        choice = httpx.Response(200, content=line[6:]).json()["choices"][0]
                        pieces.append(choice.get("text") or choice.get("delta", {}).get("content") or "")
                        finish = choice["finish_reason"] or finish
            text = plain.get("text", plain.get("message", {}).get("content"))
            assert "".join(pieces) == text, (path, stop)
            assert finish == plain["finish_reason"], (path, stop)
            if stop == [stops_of(greedy_text)[1][0]] and path == "/v1/completions":
                assert text == greedy_text and finish == "length"  # the held-back text was sent in the end


def test_the_openai_client_streams_and_non_streams_identically_under_stop_strings(url: str, greedy_text: str) -> None:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=DEADLINE_S)
    model = client.models.list().data[0].id
    for stop in stops_of(greedy_text):
        plain = client.completions.create(model=model, prompt="stop here", max_tokens=24, temperature=0, stop=stop)
        streamed = client.completions.create(model=model, prompt="stop here", max_tokens=24, temperature=0,
                                             stop=stop, stream=True)
        chunks = list(streamed)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text, stop
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason

        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "stop here"}]
        chat = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0, stop=stop)
        chat_stream = client.chat.completions.create(model=model, messages=messages, max_tokens=24, temperature=0,
                                                     stop=stop, stream=True)
        deltas = [c.choices[0].delta.content or "" for c in chat_stream if c.choices]
        assert "".join(deltas) == chat.choices[0].message.content, stop
    assert plain.choices[0].text != greedy_text  # the spanning stop string did cut the text
