"""The transport stage of a layer step, with failover: run the batches on the pool, and when devices fail, re-route
their assignments and run a further round of the same step.

Contract: `deliver(pool, dispatch, step, regroup, placement)` returns what every answered batch sent back
(`Delivery`) and the step with its new route. A `DeviceFailure` becomes one "failed" `FailoverEvent` per device;
the events go through `wdmoe.runtime.liveness.apply`, the routing table is derived again from (placement, new
liveness), the affected assignments are re-routed (`wdmoe.runtime.failover.reroute`: a live replica, else the
next-best live expert, else dropped) and grouped again by `regroup` for the next round. When the failures leave
no device live, `DevicesLost` is raised with every event of the step (the step cannot be completed).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wdmoe.backends.base import DeviceFailure, DevicePool
from wdmoe.placement import Placement
from wdmoe.runtime.air import AirCompression
from wdmoe.runtime.failover import FailoverEvent, Reroute, reroute
from wdmoe.runtime.grouping import Answer, Dispatch
from wdmoe.runtime.liveness import DevicesLost, RoutingTable, apply_all, routing_table
from wdmoe.runtime.route import LayerPlan, Route

# (index (T, k), send (T, k) bool, the routing table after the failure) -> the batches of a further round
Regroup = Callable[[np.ndarray, np.ndarray, RoutingTable], Dispatch]


@dataclass(frozen=True)
class Delivery:
    """What came back over every round of one step.

    Attributes:
        answers: (positions, outputs as the BS received them) of every answered batch.
        device_time_s: (D,) measured compute time of each device.
        dispatch_s: wall time of all rounds.
        tokens_down / assignments: (D,) rows sent down and outputs sent back, over all rounds.
        fused_tokens: rows token fusion spared, over all rounds.
    """

    answers: list[Answer]
    device_time_s: np.ndarray
    dispatch_s: float
    tokens_down: np.ndarray
    assignments: np.ndarray
    fused_tokens: int


def deliver(pool: DevicePool, dispatch: Dispatch, step: LayerPlan, regroup: Regroup, placement: Placement,
            air: AirCompression | None = None) -> tuple[Delivery, LayerPlan]:
    """Run `dispatch` on `pool`, in further rounds while devices fail (module docstring)."""
    num_tokens, k = step.route.index.shape
    answers: list[Answer] = []
    device_time_s = np.zeros(placement.num_devices)
    tokens_down, assignments, fused = dispatch.tokens_down, dispatch.assignments, dispatch.fused_tokens
    start = time.perf_counter()
    pending = dispatch
    while True:  # one round, plus one more per round in which devices failed
        failure: DeviceFailure | None = None
        try:
            results = pool.dispatch(pending.batches)
        except DeviceFailure as exc:
            failure, results = exc, exc.results
        answered = pending.positions  # every batch answered, in order
        if failure is not None:
            done = {r.device for r in results}
            answered = [pos for b, pos in zip(pending.batches, pending.positions, strict=True) if b.device in done]
        for pos, result in zip(answered, results, strict=True):
            answers.append((pos, result.output if air is None else air.wire(result.output)))
            device_time_s[result.device] += result.compute_s
        if failure is None:
            break
        affected = np.zeros(num_tokens * k, dtype=bool)
        for b, pos in zip(pending.batches, pending.positions, strict=True):
            affected[pos] |= b.device not in done
        step = _fail_over(step, failure, affected.reshape(num_tokens, k), placement)
        pending = regroup(step.route.index, affected.reshape(num_tokens, k) & step.route.keep, step.routing)
        tokens_down, assignments = tokens_down + pending.tokens_down, assignments + pending.assignments
        fused += pending.fused_tokens
    delivery = Delivery(answers, device_time_s, time.perf_counter() - start, tokens_down, assignments, fused)
    return delivery, step


def _fail_over(step: LayerPlan, failure: DeviceFailure, affected: np.ndarray, placement: Placement) -> LayerPlan:
    """The step after `failure`: the failed devices dead, the `affected` (T, k) assignments re-routed."""
    failed = [FailoverEvent("failed", d, why, failure.detect_s) for d, why in sorted(failure.failed.items())]
    try:
        routing = routing_table(placement, apply_all(step.routing.liveness, failed))
    except DevicesLost as lost:
        raise lost.with_events(step.events + tuple(failed)) from failure
    route = step.route
    moved = reroute(route.index, route.weight, route.keep, affected, routing.live[step.layer], step.router.logits)
    counts = (step.moved[0] + moved.replica, step.moved[1] + moved.substitute, step.moved[2] + moved.dropped)
    return dataclasses.replace(
        step, route=Route(moved.index, moved.weight, moved.keep), routing=routing,
        events=step.events + _failure_events(failure, moved), moved=counts,
    )


def _failure_events(failure: DeviceFailure, route: Reroute) -> tuple[FailoverEvent, ...]:
    """One event per failed device; the re-routing counts of the step go on the first."""
    events = []
    for n, (device, reason) in enumerate(sorted(failure.failed.items())):
        counts = (route.replica, route.substitute, route.dropped) if n == 0 else (0, 0, 0)
        events.append(FailoverEvent("failed", device, reason, failure.detect_s, *counts))
    return tuple(events)
