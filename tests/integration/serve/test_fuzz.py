"""Schemathesis over the app's own OpenAPI schema: generated and mutated bodies never get a 5xx."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.strategies import one_of

from wdmoe.serve import Engine, Limits, create_app

EXAMPLES_PER_OPERATION = 20
SMALL = Limits(max_prompt_tokens=16, max_tokens=2, max_prompts=2, max_queue=8)  # keeps every example fast


def test_no_input_gets_a_server_error(engine: Engine) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(engine, limits=SMALL))
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: dict[str, set[int]] = {}

    for operation in operations:
        modes = [operation.as_strategy(generation_mode=mode) for mode in schemathesis.GenerationMode]

        @given(case=one_of(modes))
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            response = case.call()
            statuses.setdefault(case.operation.label, set()).add(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path}: {response.status_code} {response.text}"

        call()

    engine.max_queue = 32
    labels = {operation.label for operation in operations}
    assert {"POST /v1/completions", "POST /v1/chat/completions", "GET /v1/models"} <= labels
    assert 200 in statuses["POST /v1/completions"] and 400 in statuses["POST /v1/completions"]
