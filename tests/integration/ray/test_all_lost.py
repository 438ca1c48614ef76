"""Every device actor SIGKILLed while the server streams over the direct transport (the issue's "Must show", on
Ray): the stream ends with an error event and `[DONE]`; Ray's nodes are still up, so the pool starts new actors,
the runtime's background check finds them (/health "ok" with no request meanwhile) and the next request succeeds
without a restart, with the tokens of before."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from tests.integration.ray.test_failover import kill_actor
from wdmoe import DistributedMoE
from wdmoe.runtime.telemetry import StepRecord
from wdmoe.serve import Engine, Limits, create_app
from wdmoe.serve.server import serve_in_thread

BODY = {"prompt": [5, 17, 99, 3, 42], "max_tokens": 10, "temperature": 0}


def after_steps(model: DistributedMoE, steps: int, action: Any) -> None:
    """Call `action()` once, after the next `steps` forward steps have finished."""
    seen = [0]

    def listener(_record: StepRecord) -> None:
        seen[0] += 1
        if seen[0] == steps:
            model.telemetry.listeners.remove(listener)
            action()

    model.telemetry.listeners.append(listener)


def test_every_device_killed_mid_stream_ends_it_with_an_error_and_the_devices_come_back(
    healthy_mixtral: DistributedMoE,
) -> None:
    model = healthy_mixtral
    engine = Engine(model, name="tiny-mixtral")
    try:
        with serve_in_thread(create_app(engine, limits=Limits(max_tokens=16))) as url:
            healthy = httpx.post(f"{url}/v1/completions", json=BODY, timeout=120).json()["choices"][0]["text"]
            after_steps(model, 4, lambda: [kill_actor(model, d) for d in range(model.num_devices)])
            with httpx.stream("POST", f"{url}/v1/completions", json={**BODY, "stream": True}, timeout=120) as stream:
                lines = [line.removeprefix("data: ") for line in stream.iter_lines() if line.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            error = json.loads(lines[-2])["error"]
            assert error["code"] == "devices_unavailable" and "devices have failed" in error["message"]
            down = httpx.get(f"{url}/health", timeout=30)
            assert down.status_code == 503 and down.json()["status"] == "down"

            deadline = time.monotonic() + 120.0  # new actors on the live nodes; no request meanwhile
            while httpx.get(f"{url}/health", timeout=30).json()["status"] != "ok":
                assert time.monotonic() < deadline, "the devices did not come back within 120 s"
                time.sleep(0.2)
            again = httpx.post(f"{url}/v1/completions", json=BODY, timeout=120)
            assert again.status_code == 200 and again.json()["choices"][0]["text"] == healthy
    finally:
        engine.close()
