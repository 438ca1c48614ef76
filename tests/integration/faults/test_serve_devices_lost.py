"""Every device lost while the server streams (the issue's "Must show"): the client gets an error event in OpenAI's
error shape and `[DONE]`; while no device is live, requests get a retryable 503 with the JSON error shape and
/health says "down"; the metrics count every failure; devices that come back are found by the background check
(/health "ok" with no request meanwhile), and the next request succeeds without a restart."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.faults.conftest import at_step, killable_model
from tests.integration.faults.pools import KillablePool
from tests.integration.serve.conftest import LIMITS
from wdmoe.runtime.model import DistributedMoE
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread

REQUEST = {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 12, "temperature": 0}


@pytest.fixture()
def served(round_robin_split: Path) -> Iterator[tuple[str, DistributedMoE, KillablePool]]:
    model, pool = killable_model(round_robin_split)
    engine = Engine(model, name="tiny-mixtral")
    try:
        with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
            yield url, model, pool
    finally:
        engine.close()
        model.close()


def sse_events(response: httpx.Response) -> list[object]:
    events: list[object] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, flags=re.MULTILINE)
    assert match, name
    return float(match.group(1))


def test_all_devices_killed_mid_stream_end_it_with_an_error_event_and_done_and_the_server_recovers(
    served: tuple[str, DistributedMoE, KillablePool],
) -> None:
    url, model, pool = served
    healthy = httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60).json()["choices"][0]
    assert healthy["finish_reason"] == "length"

    at_step(model, 4, lambda: pool.kill(0, 1, 2))  # after the stream's 4th decode step
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**REQUEST, "stream": True}, timeout=60) as stream:
        assert stream.status_code == 200
        events = sse_events(stream)
    assert events[-1] == "[DONE]"
    error = events[-2]
    assert isinstance(error, dict) and set(error) == {"error"}
    assert error["error"]["code"] == "devices_unavailable" and error["error"]["type"] == "server_error"
    assert "all 3 devices have failed" in error["error"]["message"]
    pieces = [e["choices"][0]["delta"].get("content", "") for e in events[:-2] if isinstance(e, dict)]
    assert "".join(pieces) and healthy["message"]["content"].startswith("".join(pieces))  # tokens came first

    health = httpx.get(f"{url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["status"] == "down"
    assert health.json()["devices_dead"] == [0, 1, 2]
    refused = httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60)
    assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
    assert refused.json()["error"]["code"] == "devices_unavailable"
    assert set(refused.json()["error"]) == {"message", "type", "param", "code"}

    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    for device in range(3):
        assert metric(metrics, f'wdmoe_device_failures_total{{device="{device}"}}') == 1.0
    assert metric(metrics, 'wdmoe_requests_failed_total{reason="devices_unavailable"}') == 2.0
    assert metric(metrics, "wdmoe_devices_alive") == 0.0

    pool.revive(0, 1, 2)
    deadline = time.monotonic() + 10.0  # no request meanwhile: only the background check can notice
    while httpx.get(f"{url}/health", timeout=10).json()["status"] != "ok":
        assert time.monotonic() < deadline, "the devices that came back were not noticed within 10 s"
        time.sleep(0.05)
    again = httpx.post(f"{url}/v1/chat/completions", json=REQUEST, timeout=60)
    assert again.status_code == 200 and again.json()["choices"][0] == healthy  # no restart, the same answer
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert metric(metrics, 'wdmoe_device_rejoins_total{device="1"}') == 1.0
    assert metric(metrics, "wdmoe_devices_alive") == 3.0
