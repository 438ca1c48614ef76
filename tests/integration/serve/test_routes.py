"""The OpenAI routes in-process: answers, logprobs against the model itself, keys, limits, malformed bodies."""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from tests.integration.serve.conftest import LIMITS, NUM_DEVICES
from wdmoe.runtime.telemetry import StepRecord
from wdmoe.serve import Engine, create_app
from wdmoe.serve.engine import Sampling


def test_models_and_health(client: TestClient) -> None:
    models = client.get("/v1/models").json()
    health = client.get("/health").json()

    assert models["data"][0]["id"] == "tiny-mixtral"
    assert models["data"][0]["wdmoe"] == {"vocab_size": 128, "tokenizer": True, "devices": NUM_DEVICES,
                                          "max_tokens": LIMITS.max_tokens}
    assert health["status"] == "ok" and health["devices"] == NUM_DEVICES


def test_completion_is_the_models_greedy_continuation(client: TestClient, engine: Engine) -> None:
    ids = list(engine.tokenizer("hello wor", add_special_tokens=False)["input_ids"])
    expected = engine.model.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False)[0, len(ids):].tolist()

    body = client.post("/v1/completions", json={"prompt": "hello wor", "max_tokens": 6, "temperature": 0}).json()

    assert body["choices"][0]["text"] == engine.decode(expected)
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": len(ids), "completion_tokens": 6, "total_tokens": len(ids) + 6}
    assert body["wdmoe"]["bytes_on_air"] > 0 and body["wdmoe"]["energy_j"] > 0


def test_echo_logprobs_match_the_model(client: TestClient, engine: Engine) -> None:
    ids = list(engine.tokenizer("abc de", add_special_tokens=False)["input_ids"])
    logp = torch.log_softmax(engine.model(torch.tensor([ids])).logits[0].float(), dim=-1)
    expected = [float(logp[i - 1, ids[i]]) for i in range(1, len(ids))]

    body = client.post("/v1/completions", json={"prompt": [ids, ids[:3]], "max_tokens": 1, "temperature": 0,
                                                "echo": True, "logprobs": 1}).json()

    first = body["choices"][0]["logprobs"]
    assert first["token_logprobs"][0] is None
    assert first["token_logprobs"][1 : len(ids)] == pytest.approx(expected, abs=1e-5)
    assert len(first["token_logprobs"]) == len(ids) + 1  # the prompt, then the one new token
    assert first["token_logprobs"][-1] == pytest.approx(float(logp[-1].max()), abs=1e-5)  # greedy
    assert first["tokens"][: len(ids)] == list("abc de")
    assert body["choices"][0]["text"].startswith("abc de")
    assert len(body["choices"][1]["logprobs"]["token_logprobs"]) == 4


def test_token_id_prompts_without_a_tokenizer(ids_engine: Engine) -> None:
    with TestClient(create_app(ids_engine, limits=LIMITS)) as client:
        ids_answer = client.post("/v1/completions", json={"prompt": [5, 6, 7], "max_tokens": 3, "temperature": 0})
        text_answer = client.post("/v1/completions", json={"prompt": "5 6 7", "max_tokens": 3, "temperature": 0})
        chat = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "5, 6, 7"}],
                                                         "max_tokens": 3, "temperature": 0})
        words = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3})

    text = ids_answer.json()["choices"][0]["text"]
    assert [int(t) for t in text.split()] and len(text.split()) == 3
    assert text_answer.json()["choices"][0]["text"] == text
    assert chat.json()["choices"][0]["message"]["content"] == text
    assert words.status_code == 400 and "no tokenizer" in words.json()["error"]["message"]


def test_chat_uses_a_template_and_answers(client: TestClient) -> None:
    body = client.post("/v1/chat/completions", json={
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "max_completion_tokens": 4, "temperature": 0}).json()

    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["prompt_tokens"] > len("be brief") + len("hi")  # the template adds role markers


def test_sampling_with_a_seed_repeats(client: TestClient) -> None:
    request = {"prompt": "xyz", "max_tokens": 8, "temperature": 1.0, "seed": 1234}

    first = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    second = client.post("/v1/completions", json=request).json()["choices"][0]["text"]

    assert first == second


def test_stop_string_cuts_the_text(client: TestClient) -> None:
    full = client.post("/v1/completions", json={"prompt": "q", "max_tokens": 8, "temperature": 0}).json()
    text = full["choices"][0]["text"]
    stop = text[3:5]

    cut = client.post("/v1/completions", json={"prompt": "q", "max_tokens": 8, "temperature": 0, "stop": stop})

    assert cut.json()["choices"][0]["text"] == text[: text.find(stop)]
    assert cut.json()["choices"][0]["finish_reason"] == "stop"


def test_api_key_guards_every_v1_route(engine: Engine) -> None:
    with TestClient(create_app(engine, api_key="s3cret", limits=LIMITS)) as client:
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        calls: list[tuple[str, str, Any]] = [("GET", "/v1/models", None), ("POST", "/v1/completions", {"prompt": "a"}),
                                             ("POST", "/v1/chat/completions", chat)]
        for method, path, body in calls:
            missing = client.request(method, path, json=body)
            wrong = client.request(method, path, json=body, headers={"Authorization": "Bearer nope"})
            right = client.request(method, path, json=body, headers={"Authorization": "Bearer s3cret"})
            assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200), path
            assert missing.json()["error"]["type"] == "authentication_error"
        assert client.get("/health").status_code == 200  # not under /v1
        assert client.get("/v1/unknown").status_code == 401  # every /v1 path, known or not
        malformed = client.post("/v1/completions", content=b"{", headers={"Content-Type": "application/json"})
        assert malformed.status_code == 401  # the key is checked before the body


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"prompt": "a" * (LIMITS.max_prompt_tokens + 1)}, "prompt", "limit is 64 tokens"),
    ({"prompt": "a", "max_tokens": LIMITS.max_tokens + 1}, "max_tokens", "limit is 16"),
    ({"prompt": [1, 2, 999]}, "prompt", "outside the vocabulary"),
    ({"prompt": []}, "prompt", "prompt: List should have at least 1 item"),
    ({"prompt": ["a"] * (LIMITS.max_prompts + 1)}, "prompt", "limit is 8"),
    ({"prompt": "a", "stream": True, "echo": True}, "stream", "streaming takes one prompt"),
])
def test_limits_answer_400(client: TestClient, body: dict[str, Any], param: str, words: str) -> None:
    response = client.post("/v1/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert words in response.json()["error"]["message"]


@pytest.mark.parametrize(("path", "content"), [
    ("/v1/completions", b"{not json"),
    ("/v1/completions", b"[]"),
    ("/v1/completions", b'{"max_tokens": 3}'),
    ("/v1/completions", b'{"prompt": "a", "max_tokens": -1}'),
    ("/v1/completions", b'{"prompt": "a", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "a", "n": 0}'),
    ("/v1/completions", b'{"prompt": [-1]}'),
    ("/v1/chat/completions", b'{"messages": []}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "robot", "content": "x"}]}'),
    ("/v1/chat/completions", b'{"messages": "hi"}'),
])
def test_malformed_bodies_answer_400_with_a_message(client: TestClient, path: str, content: bytes) -> None:
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("invalid request body: ")


def test_unknown_route_and_method_keep_the_error_shape(client: TestClient) -> None:
    assert client.get("/v1/nothing").json()["error"]["message"] == "Not Found"
    assert client.get("/v1/completions").status_code == 405


def test_max_queue_counts_the_waiting_requests_besides_the_running_ones(engine: Engine) -> None:
    """One request may run (max_batch 1 here) and --max-queue 1 more wait; the next is refused with 429."""
    release, held = threading.Event(), threading.Event()

    def hold(_step: StepRecord) -> None:  # keeps the first request's step on the worker until the checks are done
        held.set()
        release.wait(30)

    ids = list(engine.tokenizer("queue", add_special_tokens=False)["input_ids"])
    max_batch, engine.scheduler.max_batch = engine.scheduler.max_batch, 1
    engine.sinks.append(hold)
    try:
        with TestClient(create_app(engine, limits=replace(LIMITS, max_queue=1))) as client:
            running = engine.start(ids, Sampling(max_tokens=2))
            assert held.wait(30)
            waiting = engine.start(ids, Sampling(max_tokens=1))
            refused = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})
            metrics, health = client.get("/metrics").text, client.get("/health").json()
            release.set()
            assert len(running.future.result(timeout=30).tokens) == 2
            assert len(waiting.future.result(timeout=30).tokens) == 1
            admitted = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 1})
    finally:
        release.set()
        engine.sinks.remove(hold)
        engine.scheduler.max_batch = max_batch
        engine.max_queue = LIMITS.max_queue  # the shared engine serves the other tests

    assert refused.status_code == 429 and "retry later" in refused.json()["error"]["message"]
    assert "1 requests wait besides the 1 that may run" in refused.json()["error"]["message"]
    assert "wdmoe_requests_running 1.0" in metrics and "wdmoe_requests_waiting 1.0" in metrics
    assert (health["running"], health["waiting"], health["max_queue"]) == (1, 1, 1)
    assert admitted.status_code == 200


def test_metrics_cover_the_radio_and_the_devices(client: TestClient) -> None:
    client.post("/v1/completions", json={"prompt": "metrics", "max_tokens": 3, "temperature": 0})

    text = client.get("/metrics").text

    for name in ("wdmoe_ttft_seconds_count", "wdmoe_tpot_seconds_count", "wdmoe_modeled_ttft_seconds_count",
                 "wdmoe_modeled_air_latency_seconds_count", 'wdmoe_bytes_on_air_total{direction="down"}',
                 "wdmoe_energy_joules_total", 'wdmoe_device_tokens_total{device="2"}', "wdmoe_experts_dropped_total",
                 'wdmoe_device_failures_total{device="0"} 0.0', "wdmoe_queue_depth"):
        assert name in text, name
    assert all(line.startswith(("#", "wdmoe_")) for line in text.splitlines() if line)


def test_device_failures_are_counted(engine: Engine, client: TestClient) -> None:
    engine.record_device_failure(1)

    assert 'wdmoe_device_failures_total{device="1"} 1.0' in client.get("/metrics").text


@pytest.mark.parametrize("tiny", [1e-38, 1e-12, 5e-7])
def test_a_tiny_positive_temperature_is_greedy_not_a_500(client: TestClient, tiny: float) -> None:
    greedy = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5, "temperature": 0})
    cold = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 5, "temperature": tiny})

    assert cold.status_code == 200, cold.text
    assert cold.json()["choices"][0]["text"] == greedy.json()["choices"][0]["text"]


def test_ignore_eos_goes_on_past_eos(client: TestClient, engine: Engine) -> None:
    """The tiny model has no EOS: make its third greedy token the EOS for this test."""
    body = {"prompt": "eos", "max_tokens": 8, "temperature": 0}
    free = client.post("/v1/completions", json=body).json()
    ids = list(engine.tokenizer("eos", add_special_tokens=False)["input_ids"])
    third = engine.model.generate(torch.tensor([ids]), max_new_tokens=3, do_sample=False)[0, -1].item()
    saved, engine.scheduler.eos_ids = engine.scheduler.eos_ids, {int(third)}
    try:
        stopped = client.post("/v1/completions", json=body).json()
        ignored = client.post("/v1/completions", json={**body, "ignore_eos": True}).json()
    finally:
        engine.scheduler.eos_ids = saved

    assert stopped["usage"]["completion_tokens"] <= 3 and stopped["choices"][0]["finish_reason"] == "stop"
    assert ignored["usage"]["completion_tokens"] == 8 and ignored["choices"][0]["finish_reason"] == "length"
    assert ignored["choices"][0]["text"] == free["choices"][0]["text"]  # EOS is kept and generation goes on
    assert free["choices"][0]["text"].startswith(stopped["choices"][0]["text"])
