"""The live dashboard: state aggregated from the engine's telemetry, a JSON snapshot, and an SSE stream of it.

`DashboardState.update(step)` runs on the engine's worker thread; `snapshot()` on the event loop; a lock keeps
them apart. The page (`static/index.html`, plain JS, no build step) paints the `/dashboard/state` snapshot at once,
then follows the SSE stream: the BS, the devices with their link SNR, modeled latency, load and bandwidth share, the
expert-usage heatmap per MoE layer (dropped pairs marked), and sparklines of the last steps.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from wdmoe.runtime.telemetry import StepRecord
from wdmoe.serve.engine import Engine
from wdmoe.serve.responses import error_body

STATIC_DIR = Path(__file__).resolve().parent / "static"
HISTORY = 120  # forward steps kept for the sparklines
STREAM_MAX_S = 600.0  # an SSE connection ends after this; EventSource reconnects by itself
HEARTBEAT_S = 5.0
POLL_S = 0.2


def _db(linear: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in 10 * np.log10(np.maximum(linear, 1e-30))]


class DashboardState:
    """Cumulative load, expert usage (kept and dropped pairs), the last step's per-device figures, and a short
    per-step history for the sparklines.

    Scopes, as the page labels them: `tokens`, `pairs`, `compute_s`, `usage`, `dropped` are totals since the server
    started; `latency_s` and `bandwidth_hz` are the last forward step's, each the mean over that step's MoE layers
    (the modeled round trip DL + compute + UL, the policy's bandwidth share); `history` holds the last HISTORY steps.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.lock = threading.Lock()
        self.version = 0
        num_devices = engine.model.num_devices
        self.tokens = np.zeros(num_devices, dtype=np.int64)
        self.pairs = np.zeros(num_devices, dtype=np.int64)
        self.compute_s = np.zeros(num_devices)
        self.latency_s = np.zeros(num_devices)
        self.bandwidth_hz: np.ndarray | None = None
        self.usage: dict[int, np.ndarray] = {}  # MoE layer -> (E,) kept (token, expert) pairs
        self.dropped: dict[int, np.ndarray] = {}  # MoE layer -> (E,) pairs the router chose and the policy dropped
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.steps = 0
        self.requests = 0
        self.last_step: dict[str, Any] = {}

    def update(self, step: StepRecord) -> None:
        num_experts = self.engine.model.placement.num_experts
        with self.lock:
            latency = np.zeros_like(self.latency_s)
            bandwidth: list[np.ndarray] = []
            modeled_s, bits, kept_pairs, dropped_pairs, tokens = 0.0, 0, 0, 0, 0
            for rec in step.layers:
                self.tokens += rec.tokens_down
                self.pairs += rec.assignments
                self.compute_s += rec.device_time_s
                kept = np.bincount(rec.topk_index[rec.keep].ravel(), minlength=num_experts)
                dropped = np.bincount(rec.topk_index[~rec.keep].ravel(), minlength=num_experts)
                self.usage[rec.layer] = self.usage.get(rec.layer, np.zeros(num_experts, dtype=np.int64)) + kept
                self.dropped[rec.layer] = self.dropped.get(rec.layer, np.zeros(num_experts, dtype=np.int64)) + dropped
                latency += rec.modeled.total_s if rec.modeled is not None else rec.device_time_s
                modeled_s += rec.modeled.layer_s if rec.modeled is not None else 0.0
                bits += int(rec.bits_down.sum() + rec.bits_up.sum())
                kept_pairs, dropped_pairs = kept_pairs + int(kept.sum()), dropped_pairs + int(dropped.sum())
                tokens += rec.num_tokens
                if rec.decision is not None:
                    bandwidth.append(np.asarray(rec.decision.bandwidth_hz, dtype=float))
            if step.layers:
                self.latency_s = latency / len(step.layers)
            if bandwidth and len({b.shape for b in bandwidth}) == 1:
                self.bandwidth_hz = np.mean(bandwidth, axis=0)
            modeled = bool(step.layers) and all(rec.modeled is not None for rec in step.layers)
            self.history.append({
                "step": self.steps, "phase": step.phase, "tokens": step.num_tokens, "wall_s": step.wall_s,
                "modeled_s": modeled_s if modeled else None, "bytes_on_air": bits / 8,
                "experts_per_token": kept_pairs / tokens if tokens else None, "dropped_pairs": dropped_pairs,
            })
            self.steps += 1
            self.last_step = {"phase": step.phase, "tokens": step.num_tokens, "wall_s": step.wall_s}
            self.version += 1

    def request_done(self) -> None:
        with self.lock:
            self.requests += 1
            self.version += 1

    def snapshot(self) -> dict[str, Any]:
        model = self.engine.model
        wireless = model.wireless
        with self.lock:
            devices: list[dict[str, Any]] = [
                {"id": d, "tokens": int(self.tokens[d]), "pairs": int(self.pairs[d]),
                 "compute_s": float(self.compute_s[d]), "latency_s": float(self.latency_s[d])}
                for d in range(model.num_devices)
            ]
            usage = {str(layer): counts.tolist() for layer, counts in sorted(self.usage.items())}
            dropped = {str(layer): counts.tolist() for layer, counts in sorted(self.dropped.items())}
            state: dict[str, Any] = {
                "version": self.version, "model": self.engine.name, "steps": self.steps, "requests": self.requests,
                "queue": self.engine.pending, "last_step": dict(self.last_step), "usage": usage, "dropped": dropped,
                "num_experts": model.placement.num_experts, "history": list(self.history),
            }
        state["radio"] = wireless is not None
        if wireless is not None:
            link, scenario = wireless.link, wireless.scenario
            equal_share_hz = scenario.bandwidth_hz / model.num_devices
            dl_hz = link.dl_psd_pool_hz or equal_share_hz  # the DL SNR at a constant spectral density: s / B
            snr_dl, snr_ul = _db(link.snr_dl_per_hz / dl_hz), _db(link.snr_ul_per_hz / equal_share_hz)
            split = self.bandwidth_hz
            if split is not None and split.shape[0] != model.num_devices:  # from before a re-plan changed D
                split = None
            for d, device in enumerate(devices):
                device.update(snr_dl_db=snr_dl[d], snr_ul_db=snr_ul[d], distance_m=float(link.distance_m[d]),
                              bandwidth_hz=None if split is None else float(split[d]))
            state.update(policy=wireless.policy.name, bandwidth_hz=scenario.bandwidth_hz)
        state["devices"] = devices
        return state


def dashboard_router(state: DashboardState, max_streams: int = 16) -> APIRouter:
    """The page, its script, the snapshot and the SSE stream; at most `max_streams` streams at once (each holds a
    connection and polls the state), beyond that 503 with Retry-After."""
    router = APIRouter(include_in_schema=False)
    open_streams = [0]

    @router.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @router.get("/dashboard.js")
    async def script() -> FileResponse:
        return FileResponse(STATIC_DIR / "dashboard.js", media_type="text/javascript")

    @router.get("/dashboard/state")
    async def snapshot() -> JSONResponse:
        return JSONResponse(state.snapshot())

    @router.get("/dashboard/events", response_model=None)
    async def events(request: Request) -> StreamingResponse | JSONResponse:
        if open_streams[0] >= max_streams:
            message = f"{open_streams[0]} dashboard streams are open, the limit is {max_streams}; retry later"
            return JSONResponse(error_body(message, "server_busy"), status_code=503, headers={"Retry-After": "5"})

        async def counted() -> AsyncIterator[str]:
            open_streams[0] += 1  # here, not before: a body never started must not hold a slot
            try:
                async for chunk in _events(state, request):
                    yield chunk
            finally:
                open_streams[0] -= 1

        return StreamingResponse(counted(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return router


async def _events(state: DashboardState, request: Request) -> AsyncIterator[str]:
    """A snapshot whenever the state changed (checked every POLL_S), a comment line as heartbeat."""
    start = last_beat = time.monotonic()
    seen = -1
    while time.monotonic() - start < STREAM_MAX_S and not await request.is_disconnected():
        if state.version != seen:
            snap = state.snapshot()
            seen = snap["version"]
            yield f"data: {json.dumps(snap)}\n\n"
            last_beat = time.monotonic()
        elif time.monotonic() - last_beat > HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_beat = time.monotonic()
        await asyncio.sleep(POLL_S)
