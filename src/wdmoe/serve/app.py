"""The server: `create_app(engine, api_key=None, limits=Limits())` builds the FastAPI app around one engine.

Routes: the OpenAI ones under /v1 and vLLM's /tokenize and /detokenize (bearer key when `api_key` is set),
GET /health, GET /metrics (Prometheus), the dashboard at / with its SSE stream at /dashboard/events. Every error is
a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`: 400 for bad values and for
parameters the server does not honour, 401 for a missing or wrong key, 404 for an unknown model id, 404/405 for
unknown routes, 413 for a body over `limits.max_body_bytes` (refused before it is read), 429 when `max_queue`
requests already wait besides the running ones, 500 for a server fault, 503 when the dashboard has its most live
streams, and 503 (retryable, `Retry-After`) when the devices cannot run the model (`DevicesUnavailable`: every
device lost; a stream then ends with an error event and `[DONE]`). Every answer, 5xx included, is counted in
`wdmoe_requests_total`. The caller owns the engine (and closes it).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from wdmoe.errors import DevicesUnavailable
from wdmoe.serve.body_limit import BodyLimit
from wdmoe.serve.dashboard import DashboardState, dashboard_router
from wdmoe.serve.engine import Engine, QueueFull
from wdmoe.serve.metrics import Metrics
from wdmoe.serve.openapi import openapi_schema
from wdmoe.serve.prompts import BadRequest
from wdmoe.serve.responses import RETRY_AFTER_S, devices_error, error_body
from wdmoe.serve.routes import ClientGone, ModelNotFound, ServeContext, openai_router, tokenizer_router
from wdmoe.serve.schemas import Limits

Scope = dict[str, Any]
GUARDED_PREFIXES = ("/v1", "/tokenize", "/detokenize")  # the paths that reach the model need the key
CLIENT_GONE_STATUS = 499  # nginx's "client closed request": counted in the metrics, seen by no client


def create_app(engine: Engine, api_key: str | None = None, limits: Limits | None = None) -> FastAPI:
    """The app serving `engine`; with `api_key`, every /v1 route needs `Authorization: Bearer <api_key>`."""
    limits = limits or Limits(max_queue=engine.max_queue)
    engine.max_queue = limits.max_queue
    metrics = Metrics(engine.model.num_devices)
    dashboard = DashboardState(engine)
    engine.sinks.extend([metrics.observe_step, dashboard.update])
    engine.failure_sinks.append(metrics.record_device_failure)
    engine.model.runtime.listeners.append(metrics.observe_failover)  # every failure and rejoin, failed steps too
    ctx = ServeContext(engine, limits, metrics, dashboard)

    app = FastAPI(title="wdmoe", version="0.1.0",
                  description="OpenAI-compatible server of a MoE model split between a base station and devices.")
    app.state.ctx = ctx

    app.include_router(openai_router(ctx))
    app.include_router(tokenizer_router(ctx))
    app.include_router(dashboard_router(dashboard, limits.max_dashboard_streams))

    @app.get("/health")
    async def health() -> JSONResponse:
        """ok: every device live; degraded: some dead (their experts go to replicas or substitutes); down: none
        live, the model cannot serve (503)."""
        alive, total = engine.devices_alive()
        status = "ok" if alive == total else "degraded" if alive else "down"
        body = {"status": status, "model": engine.name, "devices": total, "devices_alive": alive,
                "devices_dead": sorted(engine.model.runtime.dead), "queue": engine.pending,
                "running": engine.running, "waiting": engine.waiting,
                "max_batch": engine.slots, "max_queue": engine.max_queue}
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        metrics.queue_depth.set(engine.pending)
        metrics.devices_alive.set(engine.devices_alive()[0])
        metrics.running.set(engine.running)
        metrics.waiting.set(engine.waiting)
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    _install_error_handlers(app, metrics)
    bounds = {"vocabulary": ("maximum", engine.vocab_size - 1), "max_tokens": ("maximum", limits.max_tokens),
              "max_prompts": ("maxItems", limits.max_prompts), "max_choices": ("maximum", limits.max_prompts)}
    app.openapi = lambda: openapi_schema(app, bounds)  # type: ignore[method-assign]
    # Plain ASGI middlewares (not @app.middleware, whose wrapping hides a client's disconnect from the routes and
    # lets an unhandled exception pass uncounted). The last added is the outermost: count every answer, then the
    # key before even the body limit reads anything.
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.add_middleware(RequireKey, api_key=api_key)
    app.add_middleware(CountRequests, metrics=metrics)
    return app


class RequireKey:
    """ASGI middleware: the guarded paths need `Authorization: Bearer <api_key>` (checked before the body is read);
    no key, no check."""

    def __init__(self, app: Any, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if self.api_key is not None and scope["type"] == "http" and scope["path"].startswith(GUARDED_PREFIXES):
            scheme, _, given = Headers(scope=scope).get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), self.api_key.encode()):
                body = error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  "authentication_error", code="invalid_api_key")
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CountRequests:
    """ASGI middleware: every HTTP answer in `wdmoe_requests_total{route, status}`; an exception that escapes the
    app (uvicorn then answers 500, or cuts a stream already started) counts as 500."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_and_note(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        failed = True
        try:
            await self.app(scope, receive, send_and_note)
            failed = False
        finally:
            code = 500 if failed or not status else status[0]
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, status=str(code)).inc()


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error", exc.param), status_code=400)

    @app.exception_handler(DevicesUnavailable)
    async def devices_unavailable(_request: Request, exc: DevicesUnavailable) -> JSONResponse:
        metrics.requests_failed.labels(reason="devices_unavailable").inc()
        return JSONResponse(devices_error(exc), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(ModelNotFound)
    async def no_such_model(_request: Request, exc: ModelNotFound) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error", "model", "model_not_found"),
                            status_code=404)

    @app.exception_handler(ClientGone)
    async def client_gone(_request: Request, _exc: ClientGone) -> Response:
        return Response(status_code=CLIENT_GONE_STATUS)

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "rate_limit_error"), status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems: list[str] = []
        for error in exc.errors():
            where = ".".join(_field_parts(error.get("loc", ()))) or "body"
            problem = f"{where}: {error.get('msg', 'invalid')}"
            if problem not in problems:
                problems.append(problem)
        first = exc.errors()[0] if exc.errors() else {}
        param = next(iter(_field_parts(first.get("loc", ()))), None)
        problems = problems[:5]
        return JSONResponse(error_body("invalid request body: " + "; ".join(problems), "invalid_request_error",
                                       param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))


def _field_parts(loc: Any) -> list[str]:
    """The parts of a pydantic error location that name fields or list indexes; the others name union branches
    ("TokenizePrompt", "constrained-str", "list[int]") and mean nothing to a client."""
    return [str(p) for p in loc if p != "body" and (isinstance(p, int) or (p.isidentifier() and not p[0].isupper()))]
