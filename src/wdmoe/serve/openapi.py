"""The OpenAPI document says what the server does: the error answers each route really gives, in OpenAI's error
shape, and the event stream of `stream: true`.

FastAPI documents 422 for every body it validates; this server answers 400 (OpenAI's status for a bad request), so
`openapi_schema` drops the 422s and their schemas. Routes declare the rest through the `responses` maps below. The
document also states the served app's own bounds (vocabulary, `max_tokens`, prompts per request: the `BOUND`
markers of `wdmoe.serve.schemas`) and, for each parameter not honoured yet, the only values accepted.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from wdmoe.serve.schemas import BOUND, NOT_HONOURED, ChatRequest, CompletionRequest


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, the body of every error answer."""

    error: ErrorDetail


Responses = dict[int | str, dict[str, Any]]


def error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


UNAUTHORIZED: Responses = {401: error("Missing or wrong API key (when the server was started with one)")}
SERVER_ERROR: Responses = {500: error("The server failed (a bug: please report it)")}
BAD_BODY: Responses = {
    400: error("Invalid body, a value beyond a limit, or a parameter this server does not honour (named in `param`)"),
    413: error("Request body over --max-body-bytes, refused before it is read"),
}
MODEL_RESPONSES: Responses = {**UNAUTHORIZED, **SERVER_ERROR}
TOKENIZER_RESPONSES: Responses = {**BAD_BODY, **UNAUTHORIZED, **SERVER_ERROR}
GENERATION_RESPONSES: Responses = {
    200: {"description": "The completion as JSON, or with `stream: true` Server-Sent Events: `data: <chunk JSON>` "
                         "lines, then `data: [DONE]`",
          # Before OpenAPI 3.2 (no itemSchema) the schema of text/event-stream describes each event.
          "content": {"text/event-stream": {"schema": {
              "type": "object", "required": ["data"],
              "properties": {"data": {"type": "string", "description": "a chunk's JSON, or [DONE] (the last)"}}}}}},
    **BAD_BODY, **UNAUTHORIZED,
    429: error("More requests wait than --max-queue allows (besides the running ones); retry after Retry-After"),
    **SERVER_ERROR,
    503: error("The model cannot serve now (no device alive)"),
}


def openapi_schema(app: FastAPI, bounds: dict[str, tuple[str, int]]) -> dict[str, Any]:
    """The app's OpenAPI document, without FastAPI's 422 (this server answers 400 instead). `bounds` maps each
    BOUND marker to the JSON-schema keyword and value it stands for, e.g. {"vocabulary": ("maximum", 127)}."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    for body in (CompletionRequest, ChatRequest):
        properties = components.get(body.__name__, {}).get("properties", {})
        for name, neutral in NOT_HONOURED.items():
            if name in properties and name not in body.honoured_here:
                values = [v for v in neutral if v is not None]
                properties[name] = {"anyOf": [{"enum": values}, {"type": "null"}],
                                    "description": f"not honoured yet: only {' or '.join(map(repr, values))}"}
    _fill_bounds(schema, bounds)
    app.openapi_schema = schema
    return schema


def _fill_bounds(node: Any, bounds: dict[str, tuple[str, int]]) -> None:
    """Replace each BOUND marker under `node` by the bound it names (in place)."""
    if isinstance(node, dict):
        marker = node.pop(BOUND, None)
        if marker is not None:
            keyword, value = bounds[marker]
            node[keyword] = value
        for child in node.values():
            _fill_bounds(child, bounds)
    elif isinstance(node, list):
        for child in node:
            _fill_bounds(child, bounds)
