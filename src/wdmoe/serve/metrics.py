"""Prometheus metrics of the server (`GET /metrics`), every name prefixed `wdmoe_`.

Per forward step (from the engine's telemetry): per-device load, experts the policy dropped, bytes on air, modeled
energy and modeled air latency. Per request: measured TTFT/TPOT/end-to-end and the radio model's TTFT/TPOT.
Each app has its own registry, so several servers in one process (tests) do not collide.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from wdmoe.runtime.failover import FailoverEvent
from wdmoe.runtime.telemetry import StepRecord

_LATENCY_BUCKETS_S = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)


class Metrics:
    """Counters, gauges and histograms for one served model over `num_devices` devices."""

    def __init__(self, num_devices: int) -> None:
        self.registry = CollectorRegistry()
        reg, buckets = self.registry, _LATENCY_BUCKETS_S
        self.requests = Counter("wdmoe_requests", "HTTP requests answered, by route and status", ["route", "status"],
                                registry=reg)
        self.prompt_tokens = Counter("wdmoe_prompt_tokens", "Prompt tokens processed", registry=reg)
        self.generated_tokens = Counter("wdmoe_generated_tokens", "New tokens generated", registry=reg)
        self.queue_depth = Gauge("wdmoe_queue_depth", "Requests waiting for or using the model", registry=reg)
        self.running = Gauge("wdmoe_requests_running", "Requests the model is running now", registry=reg)
        self.waiting = Gauge("wdmoe_requests_waiting", "Requests waiting for the model (at most --max-queue)",
                             registry=reg)
        self.cancelled = Counter("wdmoe_requests_cancelled", "Requests whose client disconnected before the answer "
                                 "was complete; their engine work was cancelled", registry=reg)
        self.ttft = Histogram("wdmoe_ttft_seconds", "Measured time to first token (wall clock)", buckets=buckets,
                              registry=reg)
        self.tpot = Histogram("wdmoe_tpot_seconds", "Measured time per output token after the first", buckets=buckets,
                              registry=reg)
        self.e2e = Histogram("wdmoe_request_seconds", "Measured end-to-end time of a prompt's generation",
                             buckets=buckets, registry=reg)
        self.modeled_ttft = Histogram("wdmoe_modeled_ttft_seconds", "Radio model's time to first token",
                                      buckets=buckets, registry=reg)
        self.modeled_tpot = Histogram("wdmoe_modeled_tpot_seconds", "Radio model's time per output token",
                                      buckets=buckets, registry=reg)
        self.air_latency = Histogram("wdmoe_modeled_air_latency_seconds",
                                     "Radio model: per MoE layer step, the slowest device's downlink + uplink time",
                                     buckets=buckets, registry=reg)
        self.layer_latency = Histogram("wdmoe_modeled_layer_latency_seconds",
                                       "Radio model: per MoE layer step, BS + the slowest device's round trip",
                                       buckets=buckets, registry=reg)
        self.bytes_on_air = Counter("wdmoe_bytes_on_air", "Bytes sent over the air (radio model when set, else "
                                    "at the activation dtype)", ["direction"], registry=reg)
        self.energy = Counter("wdmoe_energy_joules", "Radio model's energy: device tx + device compute + BS tx",
                              registry=reg)
        self.device_tokens = Counter("wdmoe_device_tokens", "Distinct tokens sent to each device", ["device"],
                                     registry=reg)
        self.device_pairs = Counter("wdmoe_device_expert_pairs", "(token, expert) outputs each device computed",
                                    ["device"], registry=reg)
        self.device_compute = Counter("wdmoe_device_compute_seconds", "Measured expert compute time of each device",
                                      ["device"], registry=reg)
        self.experts_dropped = Counter("wdmoe_experts_dropped", "Routed (token, expert) pairs the policy dropped",
                                       registry=reg)
        self.device_failures = Counter("wdmoe_device_failures", "Device failures reported by the backend",
                                       ["device"], registry=reg)
        self.device_rejoins = Counter("wdmoe_device_rejoins", "Failed devices that came back", ["device"],
                                      registry=reg)
        self.devices_alive = Gauge("wdmoe_devices_alive", "Devices the runtime has not declared dead", registry=reg)
        self.requests_failed = Counter("wdmoe_requests_failed", "Requests that failed after they were accepted "
                                       "(streams included), by reason", ["reason"], registry=reg)
        for reason in ("devices_unavailable", "internal_error"):
            self.requests_failed.labels(reason=reason)
        for device in range(num_devices):
            label = str(device)
            for per_device in (self.device_tokens, self.device_pairs, self.device_compute, self.device_failures,
                               self.device_rejoins):
                per_device.labels(device=label)
        for direction in ("down", "up"):
            self.bytes_on_air.labels(direction=direction)

    def observe_step(self, step: StepRecord) -> None:
        """Per-layer load, drops, bytes, energy and modeled latency of one forward step."""
        for rec in step.layers:
            self.experts_dropped.inc(float(np.size(rec.keep) - np.count_nonzero(rec.keep)))
            for device, (tokens, pairs, busy_s) in enumerate(
                zip(rec.tokens_down, rec.assignments, rec.device_time_s, strict=True)
            ):
                label = str(device)
                self.device_tokens.labels(device=label).inc(float(tokens))
                self.device_pairs.labels(device=label).inc(float(pairs))
                self.device_compute.labels(device=label).inc(float(busy_s))
            modeled = rec.modeled
            if modeled is None:
                self.bytes_on_air.labels(direction="down").inc(float(rec.bits_down.sum()) / 8)
                self.bytes_on_air.labels(direction="up").inc(float(rec.bits_up.sum()) / 8)
                continue
            self.bytes_on_air.labels(direction="down").inc(float(modeled.bits_dl.sum()) / 8)
            self.bytes_on_air.labels(direction="up").inc(float(modeled.bits_ul.sum()) / 8)
            self.energy.inc(modeled.energy_j)
            air_s = (modeled.dl_s + modeled.ul_s)[modeled.active]
            self.air_latency.observe(float(air_s.max(initial=0.0)))
            self.layer_latency.observe(float(modeled.layer_s))

    def observe_generation(self, prompt_tokens: int, new_tokens: int, ttft_s: float, wall_s: float,
                           summary: dict[str, Any]) -> None:
        self.prompt_tokens.inc(prompt_tokens)
        self.generated_tokens.inc(new_tokens)
        if new_tokens == 0:
            return
        self.ttft.observe(ttft_s)
        self.e2e.observe(wall_s)
        if new_tokens > 1:
            self.tpot.observe((wall_s - ttft_s) / (new_tokens - 1))
        latency = summary.get("latency")
        if latency is not None:
            self.modeled_ttft.observe(latency["ttft_s"])
            if latency["tpot_s"] is not None:
                self.modeled_tpot.observe(latency["tpot_s"])

    def record_device_failure(self, device: int) -> None:
        self.device_failures.labels(device=str(device)).inc()

    def observe_failover(self, event: FailoverEvent) -> None:
        """A liveness change of the runtime (any thread): a device failed, or came back."""
        if event.kind == "failed":
            self.record_device_failure(event.device)
        else:
            self.device_rejoins.labels(device=str(event.device)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
