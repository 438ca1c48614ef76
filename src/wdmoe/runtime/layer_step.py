"""One MoE layer step as named stages, and the one object that owns the step's state.

    route -> decide -> group -> transport with failover -> combine -> record

`Runtime.run` reads as one line per stage; each stage hands the next a typed value (`RouterOutput`, `LayerPlan`,
`Dispatch`, `Delivery`; wdmoe.runtime.route, .grouping, .transport). A fast version replaces one stage, never the
whole step: the decode form of group and combine (`wdmoe.runtime.grouping.ONE_TOKEN`) is chosen explicitly for
one-token steps. The `LayerRecord` is built in `layer_record` only, and carries the policy's `Decision`.

`Runtime` owns the pool, the placement, the frozen `Liveness` (changed only by failure and rejoin events), the
routing table derived from the two, the telemetry, the air format (`bits_per_token`, the one number the record and
the radio model use) and the temporary directory a split made on the fly lives in. Other modules read them; the
runtime alone changes them.

Devices lost and back: a step that loses every device raises `DevicesLost` (`wdmoe.runtime.liveness`) after the
runtime recorded the all-dead liveness, and so does every later step until a device is back. While any device is
dead and the pool can bring devices back (`RejoiningPool`), a background thread asks it every
`rejoin_interval_s`, so a device that comes back is live again without waiting for a request (the server's
/health follows). `run` and that thread hold `lock`, so the pool is never asked from two threads at once. Every
event that changes the liveness (failed, rejoined) reaches the `listeners` (e.g. the server's failure counter),
including those of a step that failed.
"""

from __future__ import annotations

import functools
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from wdmoe.backends.base import DevicePool, RejoiningPool
from wdmoe.placement import Placement
from wdmoe.radio.latency import LatencyBreakdown
from wdmoe.runtime.air import AirCompression, bits_per_token
from wdmoe.runtime.decider import Decider
from wdmoe.runtime.failover import FailoverEvent, reroute
from wdmoe.runtime.grouping import ONE_TOKEN, REFERENCE, AirPlan, Grouping
from wdmoe.runtime.liveness import DevicesLost, Liveness, RoutingTable, apply_all, routing_table
from wdmoe.runtime.route import LayerPlan, Route, RouterOutput
from wdmoe.runtime.telemetry import LayerRecord, Telemetry
from wdmoe.runtime.transport import Delivery, deliver


class Runtime:
    """The BS side of every MoE layer step of one model (module docstring)."""

    def __init__(self, pool: DevicePool, placement: Placement, telemetry: Telemetry | None = None) -> None:
        self.pool = pool
        self.placement = placement
        self.telemetry = telemetry or Telemetry()
        self.liveness = Liveness()
        self.routing: RoutingTable = routing_table(placement, self.liveness)
        self.decider: Decider | None = None
        self.activation_bits: int | None = None  # the radio scenario's bits per value on the air, when one is set
        self.air: AirCompression | None = None  # compression on the air (wdmoe.runtime.air)
        self.record_logits = True
        self.decode_grouping: Grouping | None = ONE_TOKEN  # group + combine of one-token steps (None: reference)
        # the whole layer step on the GPU (wdmoe.runtime.device_moe), set only while a graphed decode step runs
        self.device_step: Callable[..., torch.Tensor] | None = None
        # called at every MoE layer before its experts run, set only while a batched decode step that may pause
        # there runs (DistributedMoE.step_segments: the scheduler's prefill of requests that arrived meanwhile)
        self.pause_point: Callable[[], None] | None = None
        self.mark_s = time.perf_counter()
        self.scratch: tempfile.TemporaryDirectory[str] | None = None
        self.listeners: list[Callable[[FailoverEvent], None]] = []  # every event that changed the liveness
        self.lock = threading.RLock()  # held by a layer step and by the rejoin check (module docstring)
        self.rejoin_interval_s = 0.5  # how often the background check asks the pool for devices that came back
        self._watcher: threading.Thread | None = None
        self._closing = threading.Event()

    # -- the layer step ------------------------------------------------------------------------------------
    def run(
        self,
        layer: int,
        hidden: torch.Tensor,  # (T, H)
        topk_index: torch.Tensor,  # (T, k)
        topk_weight: torch.Tensor,  # (T, k)
        logits: torch.Tensor | None,  # (T, E)
    ) -> torch.Tensor:  # (T, H)
        with self.lock:
            bs_time_s, bits = time.perf_counter() - self.mark_s, self.bits_per_token(hidden)
            router = RouterOutput.from_torch(topk_index, topk_weight, logits)  # on the host, in one sync
            step = self.decide(layer, router, bits)  # Route (T, k) + Decision + LatencyBreakdown (the radio model's)
            grouping = self.grouping_for(hidden.shape[0])  # the decode form for one token, else the reference
            group = functools.partial(grouping.group, layer, hidden, air=self.air_plan(step.modeled))
            dispatch = group(step.route.index, step.route.keep, step.routing)  # one DeviceBatch per device
            planned = len(step.events)  # rejoins, already adopted; the failures come after them
            try:
                delivery, step = deliver(self.pool, dispatch, step, group, self.placement, self.air)  # failover
            except DevicesLost as lost:
                self._lose_all(lost, lost.events[planned:])
                raise
            out = grouping.combine(delivery.answers, *router.shape, _combine_weight(step, hidden), hidden)  # (T, H)
            self.telemetry.add(layer_record(step, delivery, bits, bs_time_s))  # the only place a record is built
            self._adopt(step.routing, step.events[planned:])  # the liveness the step ended with (its failures)
            self.mark_s = time.perf_counter()
            return out

    def decide(self, layer: int, router: RouterOutput, bits: int) -> LayerPlan:
        """The route of the step: around dead devices first (a live replica, a substitute expert, or dropped), then
        the policy's decision over the radio model, when a decider is set."""
        events = self._rejoin() if self.liveness.dead else ()
        if len(self.liveness.dead) >= self.placement.num_devices:
            raise DevicesLost(self.liveness, self.placement.num_devices)  # fail at once; nothing to dispatch to
        routing = self.routing
        route = Route(router.index, router.weight, np.ones(router.index.shape, dtype=bool), routers_weight=True)
        moved = (0, 0, 0)
        if self.liveness.dead:
            route, moved = _route_around_dead(router, routing.primary[layer], routing.live[layer],
                                              routing.base[layer])
        if self.decider is None:
            return LayerPlan(layer, router, route, routing, events=events, moved=moved)
        decided = self.decider(layer, route.index, route.weight, router.logits,
                               expert_device=routing.primary[layer], bits_per_token=float(bits))
        decision = decided.decision
        route = Route(route.index, decision.weight, decision.keep & route.keep)
        return LayerPlan(layer, router, route, routing, decision, decided.modeled, events, moved)

    def grouping_for(self, num_tokens: int) -> Grouping:
        decode = self.decode_grouping
        return decode if decode is not None and decode.applies(num_tokens) else REFERENCE

    def air_plan(self, modeled: LatencyBreakdown | None) -> AirPlan:
        if modeled is None:
            return AirPlan(self.placement.num_devices, compression=self.air)
        dl_s, ul_s = np.asarray(modeled.dl_s, dtype=float), np.asarray(modeled.ul_s, dtype=float)
        return AirPlan(self.placement.num_devices, dl_s, ul_s, self.air)

    # -- state -----------------------------------------------------------------------------------------------
    def set_decider(self, decider: Decider | None, activation_bits: int | None = None) -> None:
        """Decide every layer step with `decider` (None: the model's own top-k) over a scenario that puts
        `activation_bits` per value on the air."""
        self.decider, self.activation_bits = decider, None if decider is None else activation_bits

    def bits_per_token(self, hidden: torch.Tensor) -> int:
        """The air format's bits per token (`wdmoe.runtime.air.bits_per_token`) for hidden states like `hidden`."""
        return bits_per_token(self.air, self.activation_bits, hidden.shape[-1], hidden.element_size() * 8)

    @property
    def dead(self) -> frozenset[int]:
        return self.liveness.dead

    @property
    def primary(self) -> dict[int, np.ndarray]:
        """{MoE layer: (E,) the device that serves each expert now} (read-only arrays)."""
        return dict(self.routing.primary)

    def observe(self, events: tuple[FailoverEvent, ...]) -> None:
        """Failure or rejoin events learned outside a layer step."""
        with self.lock:
            liveness = apply_all(self.liveness, events)
            try:
                self._adopt(routing_table(self.placement, liveness), events)
            except DevicesLost as lost:
                self._lose_all(lost, events)

    def rebind(self, pool: DevicePool, placement: Placement) -> DevicePool:
        """Run on `pool` with `placement` from now on (every device live); returns the old pool, for closing."""
        with self.lock:
            old, self.pool, self.placement = self.pool, pool, placement
            self.liveness = Liveness()
            self.routing = routing_table(placement, self.liveness)
            return old

    def hold(self, scratch: tempfile.TemporaryDirectory[str] | None) -> None:
        """Remove `scratch` (a directory the split lives in) when the runtime closes."""
        if self.scratch is not None and self.scratch is not scratch:
            self.scratch.cleanup()
        self.scratch = scratch

    def close(self) -> None:
        self._closing.set()
        watcher = self._watcher
        if watcher is not None:
            watcher.join(timeout=5.0)
        with self.lock:
            self.pool.close()
            if self.scratch is not None:
                self.scratch.cleanup()
                self.scratch = None

    def _adopt(self, routing: RoutingTable, events: tuple[FailoverEvent, ...] = ()) -> None:
        if routing is not self.routing:
            self.liveness, self.routing = routing.liveness, routing
        self._changed(events)

    def _lose_all(self, lost: DevicesLost, events: tuple[FailoverEvent, ...]) -> None:
        """Every device is dead: record it (no routing table exists for it; `decide` refuses steps until one is
        back) and let the background check wait for devices to come back."""
        self.liveness = lost.liveness
        self._changed(events)

    def _changed(self, events: tuple[FailoverEvent, ...]) -> None:
        for event in events:
            for listener in self.listeners:
                listener(event)
        if self.liveness.dead and isinstance(self.pool, RejoiningPool) and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch_rejoins, name="wdmoe-rejoin", daemon=True)
            self._watcher.start()

    def _watch_rejoins(self) -> None:
        """The background check: while devices are dead, ask the pool every `rejoin_interval_s` which came back."""
        while not self._closing.wait(self.rejoin_interval_s):
            with self.lock:
                if not self.liveness.dead:
                    self._watcher = None
                    return
                self._rejoin()
        self._watcher = None

    def _rejoin(self) -> tuple[FailoverEvent, ...]:
        if not isinstance(self.pool, RejoiningPool):
            return ()
        back = self.pool.rejoined() & self.liveness.dead
        events = tuple(FailoverEvent("rejoined", d) for d in sorted(back))
        if events:
            self.observe(events)
        return events


def layer_record(step: LayerPlan, delivery: Delivery, bits: int, bs_time_s: float) -> LayerRecord:
    """The telemetry of one layer step: the only place a `LayerRecord` is built."""
    router, route = step.router, step.route
    return LayerRecord(
        layer=step.layer,
        topk_index=router.index,
        topk_weight=router.weight,
        keep=route.keep,
        weight=np.asarray(route.weight),
        logits=router.logits,
        tokens_down=delivery.tokens_down,
        assignments=delivery.assignments,
        bits_down=delivery.tokens_down * bits,
        bits_up=delivery.assignments * bits,
        bs_time_s=bs_time_s,
        device_time_s=delivery.device_time_s,
        dispatch_time_s=delivery.dispatch_s,
        modeled=step.modeled,
        decision=step.decision,
        routed_index=None if route.index is router.index else route.index,
        failover=step.events,
        rerouted=step.moved,
        fused_tokens=delivery.fused_tokens,
        expert_device=step.routing.primary[step.layer],
    )


def _route_around_dead(router: RouterOutput, primary: np.ndarray, live: np.ndarray,
                       base: np.ndarray) -> tuple[Route, tuple[int, int, int]]:
    """The route before the policy while devices are dead: experts with every replica dead re-routed; the
    counts (to a replica, to a substitute, dropped)."""
    index = router.index
    replicas = int((primary[index] != base[index]).sum())
    lost = live[index] < 0
    if not lost.any():
        return Route(index, router.weight, np.ones_like(index, dtype=bool), routers_weight=True), (replicas, 0, 0)
    moved = reroute(index, router.weight, np.ones_like(index, dtype=bool), lost, live, router.logits)
    return Route(moved.index, moved.weight.astype(np.float32), moved.keep), (replicas, moved.substitute, moved.dropped)


def _combine_weight(step: LayerPlan, like: torch.Tensor) -> torch.Tensor:
    """(T, k) the combine weights on `like`'s device: the model's own tensor while the route keeps the router's."""
    if step.route.routers_weight:
        return step.router.weight_t
    weight = np.ascontiguousarray(step.route.weight, dtype=np.float32)
    return torch.from_numpy(weight).to(like.device, non_blocking=True)
