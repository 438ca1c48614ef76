"""The HTTP surface beyond generation: parameters refused rather than ignored, model cards by id, /tokenize and
/detokenize against the completion routes, 5xx counted, and an OpenAPI document that says what the server does."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.integration.serve.conftest import LIMITS
from wdmoe.runtime.telemetry import StepRecord
from wdmoe.serve import Engine, create_app
from wdmoe.serve.engine import Sampling
from wdmoe.serve.schemas import NOT_HONOURED

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": 0}
COMPLETION = {"prompt": "hi", "max_tokens": 2, "temperature": 0}
REFUSED_VALUES: dict[str, Any] = {
    "best_of": 3, "suffix": "end", "response_format": {"type": "json_object"}, "tools": [{"type": "function"}],
    "tool_choice": "auto", "functions": [{"name": "f"}], "function_call": "auto", "logprobs": True, "top_logprobs": 2,
}
COMPLETION_ONLY = {"best_of", "suffix"}
CHAT_ONLY = {"response_format", "tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs"}


def test_every_parameter_of_the_table_has_a_refused_value() -> None:
    assert set(REFUSED_VALUES) == set(NOT_HONOURED)


@pytest.mark.parametrize("name", sorted(NOT_HONOURED))
def test_a_parameter_not_honoured_is_refused_naming_it(client: TestClient, name: str) -> None:
    routes = [("/v1/completions", COMPLETION)] if name not in CHAT_ONLY else []
    routes += [("/v1/chat/completions", CHAT)] if name not in COMPLETION_ONLY else []
    for path, body in routes:
        response = client.post(path, json={**body, name: REFUSED_VALUES[name]})

        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["param"] == name and error["message"].startswith(f"{name} = ")
        assert "not supported by this server yet" in error["message"]


@pytest.mark.parametrize("name", sorted(NOT_HONOURED))
def test_a_neutral_value_is_accepted_and_changes_nothing(client: TestClient, name: str) -> None:
    neutral = next(v for v in NOT_HONOURED[name] if v is not None)
    path, body = ("/v1/chat/completions", CHAT) if name in CHAT_ONLY else ("/v1/completions", COMPLETION)
    plain = client.post(path, json=body).json()

    response = client.post(path, json={**body, name: neutral})

    assert response.status_code == 200, response.text
    assert response.json()["choices"] == plain["choices"]


@pytest.mark.parametrize("settings", [{"presence_penalty": 2.0}, {"frequency_penalty": 2.0},
                                      {"frequency_penalty": -2.0, "presence_penalty": 1.0}])
def test_penalties_are_honoured_as_the_engine_samples_them(client: TestClient, engine: Engine,
                                                           settings: dict[str, float]) -> None:
    ids = list(engine.tokenizer("pen", add_special_tokens=False)["input_ids"])
    plain = engine.generate(ids, Sampling(max_tokens=12))
    penalized = engine.generate(ids, Sampling(max_tokens=12, **settings))

    answer = client.post("/v1/completions", json={"prompt": "pen", "max_tokens": 12, "temperature": 0, **settings})

    assert penalized.tokens != plain.tokens  # the setting matters for this prompt
    assert answer.json()["choices"][0]["text"] == engine.decode(penalized.tokens)


def test_logit_bias_is_honoured_and_its_keys_checked(client: TestClient, engine: Engine) -> None:
    a = engine.tokenizer.convert_tokens_to_ids("A")
    forced = client.post("/v1/completions", json={**COMPLETION, "logit_bias": {str(a): 100}})
    outside = client.post("/v1/completions", json={**COMPLETION, "logit_bias": {"100000": 1}})
    not_id = client.post("/v1/chat/completions", json={**CHAT, "logit_bias": {"A": 1}})
    too_big = client.post("/v1/completions", json={**COMPLETION, "logit_bias": {str(a): 101}})

    assert forced.json()["choices"][0]["text"] == "A" * COMPLETION["max_tokens"]
    assert [r.status_code for r in (outside, not_id, too_big)] == [400, 400, 400]
    assert outside.json()["error"]["param"] == not_id.json()["error"]["param"] == "logit_bias"


def test_completions_logprobs_stays_honoured(client: TestClient) -> None:
    response = client.post("/v1/completions", json={**COMPLETION, "logprobs": 2})

    assert response.status_code == 200
    assert len(response.json()["choices"][0]["logprobs"]["top_logprobs"]) == COMPLETION["max_tokens"]


def test_a_model_card_by_id_and_an_unknown_id(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["data"][0]

    card = client.get(f"/v1/models/{listed['id']}")
    unknown = client.get("/v1/models/gpt-4o")

    assert card.status_code == 200 and card.json() == listed
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found" and "'tiny-mixtral'" in error["message"]


def test_tokenize_gives_the_ids_the_completion_routes_use(client: TestClient, engine: Engine) -> None:
    prompt = "count these"
    completion = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 1}).json()
    chat = client.post("/v1/chat/completions", json=CHAT).json()

    ids = client.post("/tokenize", json={"prompt": prompt, "return_token_strs": True}).json()
    chat_ids = client.post("/tokenize", json={"messages": CHAT["messages"]}).json()
    text = client.post("/detokenize", json={"tokens": ids["tokens"]}).json()

    assert ids["tokens"] == list(engine.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert ids["count"] == completion["usage"]["prompt_tokens"] and ids["token_strs"] == list(prompt)
    assert ids["max_model_len"] == engine.context_length
    assert chat_ids["count"] == chat["usage"]["prompt_tokens"] and chat_ids["token_strs"] is None
    assert text == {"prompt": prompt}


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/tokenize", {}, "prompt"),
    ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),  # not both
    ("/detokenize", {"tokens": [1, 100000]}, "tokens"),
])
def test_tokenizer_routes_answer_400_naming_the_field(client: TestClient, path: str, body: dict[str, Any],
                                                      param: str) -> None:
    response = client.post(path, json=body)

    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_tokenizer_routes_need_the_key(engine: Engine) -> None:
    with TestClient(create_app(engine, api_key="k", limits=LIMITS)) as client:
        without = client.post("/tokenize", json={"prompt": "a"})
        with_key = client.post("/detokenize", json={"tokens": [5]}, headers={"Authorization": "Bearer k"})

    assert without.status_code == 401 and with_key.status_code == 200


def test_a_server_fault_is_a_500_and_is_counted(engine: Engine) -> None:
    """A telemetry sink that fails inside the model step: the route answers 500 and the counter sees it."""

    def failing_sink(_step: StepRecord) -> None:
        raise RuntimeError("sink failed")

    with TestClient(create_app(engine, limits=LIMITS), raise_server_exceptions=False) as client:
        engine.sinks.append(failing_sink)
        try:
            failed = client.post("/v1/completions", json=COMPLETION)
        finally:
            engine.sinks.remove(failing_sink)
        ok = client.post("/v1/completions", json=COMPLETION)
        metrics = client.get("/metrics").text

    assert failed.status_code == 500 and ok.status_code == 200
    assert 'wdmoe_requests_total{route="/v1/completions",status="500"} 1.0' in metrics
    assert 'wdmoe_requests_total{route="/v1/completions",status="200"} 1.0' in metrics


def test_the_openapi_document_says_what_the_server_answers(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]

    statuses = {(path, method): set(op["responses"]) for path, ops in paths.items() for method, op in ops.items()}
    assert all("422" not in codes for codes in statuses.values()), statuses
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for path in ("/v1/completions", "/v1/chat/completions"):
        assert {"200", "400", "401", "413", "429", "500", "503"} <= statuses[(path, "post")]
        assert "text/event-stream" in paths[path]["post"]["responses"]["200"]["content"]
        assert paths[path]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"}
    assert {"400", "401", "413", "500"} <= statuses[("/tokenize", "post")] & statuses[("/detokenize", "post")]
    assert {"404", "401"} <= statuses[("/v1/models/{model_id}", "get")]
    documented = set(schema["components"]["schemas"]["CompletionRequest"]["properties"])
    assert {"logit_bias", "presence_penalty", "best_of", "suffix", "ignore_eos"} <= documented
