"""The server: `create_app(engine, api_key=None, limits=Limits())` builds the FastAPI app around one engine.

Routes: the OpenAI ones under /v1 (bearer key when `api_key` is set), GET /health, GET /metrics (Prometheus),
the dashboard at / with its SSE stream at /dashboard/events. Every error is a JSON body in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`: 400 for bad values, 401 for a missing or wrong key, 404/405 for
unknown routes, 413 for a body over `limits.max_body_bytes` (refused before it is read), 429 when the queue is full,
503 when the dashboard has its most live streams, and 503 (retryable, `Retry-After`) when the devices cannot run
the model (`DevicesUnavailable`: every device lost; a stream then ends with an error event and `[DONE]`). The
caller owns the engine (and closes it).
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from wdmoe.errors import DevicesUnavailable
from wdmoe.serve.body_limit import BodyLimit
from wdmoe.serve.dashboard import DashboardState, dashboard_router
from wdmoe.serve.engine import Engine, QueueFull
from wdmoe.serve.metrics import Metrics
from wdmoe.serve.prompts import BadRequest
from wdmoe.serve.responses import RETRY_AFTER_S, devices_error, error_body
from wdmoe.serve.routes import ServeContext, openai_router
from wdmoe.serve.schemas import Limits


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
    app.include_router(dashboard_router(dashboard, limits.max_dashboard_streams))

    @app.get("/health")
    async def health() -> JSONResponse:
        """ok: every device live; degraded: some dead (their experts go to replicas or substitutes); down: none
        live, the model cannot serve (503)."""
        alive, total = engine.devices_alive()
        status = "ok" if alive == total else "degraded" if alive else "down"
        body = {"status": status, "model": engine.name, "devices": total, "devices_alive": alive,
                "devices_dead": sorted(engine.model.runtime.dead), "queue": engine.pending,
                "max_queue": engine.max_queue}
        return JSONResponse(body, status_code=503 if status == "down" else 200)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        metrics.queue_depth.set(engine.pending)
        metrics.devices_alive.set(engine.devices_alive()[0])
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.middleware("http")
    async def require_key(request: Request, call_next: Any) -> Response:
        """Before anything else (even the body is not read): /v1 needs `Authorization: Bearer <api_key>`."""
        if api_key is not None and request.url.path.startswith("/v1"):
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
                body = error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                  "authentication_error", code="invalid_api_key")
                return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        response: Response = await call_next(request)
        return response

    @app.middleware("http")
    async def count_requests(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        route = request.scope.get("route")
        metrics.requests.labels(route=getattr(route, "path", "unmatched"), status=str(response.status_code)).inc()
        return response

    _install_error_handlers(app, metrics)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)  # added last: the outermost, before any other
    return app


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    @app.exception_handler(BadRequest)
    async def bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "invalid_request_error", exc.param), status_code=400)

    @app.exception_handler(DevicesUnavailable)
    async def devices_unavailable(_request: Request, exc: DevicesUnavailable) -> JSONResponse:
        metrics.requests_failed.labels(reason="devices_unavailable").inc()
        return JSONResponse(devices_error(exc), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(QueueFull)
    async def queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse(error_body(str(exc), "rate_limit_error"), status_code=429, headers={"Retry-After": "1"})

    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return JSONResponse(error_body("invalid request body: " + "; ".join(problems), "invalid_request_error",
                                       param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(exc.detail), "invalid_request_error"), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))
