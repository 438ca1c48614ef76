"""Telemetry of the split runtime: one `LayerRecord` per MoE layer step, one `StepRecord` per forward step.

Records hold numpy arrays only (no torch), so the simulator, the server metrics and the experiments read them
without the model. Bits are counted in the air format (`wdmoe.runtime.air.bits_per_token`), the same number the
radio model charges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from wdmoe.policy.base import Decision
from wdmoe.radio.latency import LatencyBreakdown, request_latency, step_share, step_totals
from wdmoe.runtime.failover import FailoverEvent

Phase = Literal["prefill", "decode"]


@dataclass(frozen=True)
class LayerRecord:
    """One MoE layer of one forward step, T tokens, k experts per token, D devices.

    Attributes:
        layer: decoder layer index.
        topk_index / topk_weight: (T, k) the router's choice and weights (the router trace).
        keep / weight: (T, k) what the policy kept, and the weights actually combined.
        logits: (T, E) router logits when recorded, else None.
        tokens_down: (D,) distinct tokens sent to each device; assignments: (D,) expert outputs sent back.
        bits_down / bits_up: (D,) bits on the downlink / uplink in the air format (the radio model's bits).
        bs_time_s: measured BS wall time since the previous MoE layer (attention, norms, router, shared experts).
        device_time_s: (D,) measured expert compute time of each device (0 when idle).
        dispatch_time_s: measured wall time of the whole dispatch-and-gather.
        modeled: the radio model's `LatencyBreakdown` of this layer, when a scenario is set.
        decision: the policy's `Decision` (its bandwidth split included), when a scenario is set.
        routed_index: (T, k) the experts actually used when failover re-routed some (None: `topk_index`).
        failover: device failures noticed and devices that rejoined during this step (`FailoverEvent`s).
        rerouted: assignments moved off dead devices in this step: (to a replica, to a substitute expert, dropped).
        fused_tokens: tokens not sent down because token fusion merged them with a near-duplicate
            (`wdmoe.runtime.air`); `tokens_down` and `bits_down` count what was sent.
        expert_device: (E,) the device that served each expert in this step (the routing table's primary), so a
            request's rows of a batched step can be attributed to devices (`slice_layer`).
    """

    layer: int
    topk_index: np.ndarray
    topk_weight: np.ndarray
    keep: np.ndarray
    weight: np.ndarray
    logits: np.ndarray | None
    tokens_down: np.ndarray
    assignments: np.ndarray
    bits_down: np.ndarray
    bits_up: np.ndarray
    bs_time_s: float
    device_time_s: np.ndarray
    dispatch_time_s: float
    modeled: LatencyBreakdown | None = None
    decision: Decision | None = None
    routed_index: np.ndarray | None = None
    failover: tuple[FailoverEvent, ...] = ()
    rerouted: tuple[int, int, int] = (0, 0, 0)
    fused_tokens: int = 0
    expert_device: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def experts_per_token(self) -> np.ndarray:
        return self.keep.sum(axis=1)

    @property
    def optimality_gap(self) -> float | None:
        """The policy's certified relative gap to the optimum of its own objective (`Decision.optimality_gap`):
        0.0 for an exact decision, None when no decision was recorded or the policy claims nothing."""
        return None if self.decision is None else self.decision.optimality_gap


@dataclass
class StepRecord:
    """One forward step (a prefill over the prompt, or one decode token)."""

    index: int
    phase: Phase
    num_tokens: int
    layers: list[LayerRecord] = field(default_factory=list)
    wall_s: float = 0.0
    tail_s: float = 0.0  # BS time after the last MoE layer (final norm, LM head)
    # what `request_summary` reads of this step, by row, computed once for all the requests that shared it
    rows: StepRows | None = field(default=None, repr=False, compare=False)


StepListener = Callable[[StepRecord], None]


class Telemetry:
    """Collects step records; listeners are called with each finished step."""

    def __init__(self, max_steps: int = 100_000) -> None:
        self.steps: list[StepRecord] = []
        self.listeners: list[StepListener] = []
        self.max_steps = max_steps
        self.current: StepRecord | None = None

    def start(self, phase: Phase, num_tokens: int) -> StepRecord:
        self.current = StepRecord(len(self.steps), phase, num_tokens)
        return self.current

    def finish(self, wall_s: float, tail_s: float) -> None:
        step = self.current
        if step is None:
            return
        step.wall_s, step.tail_s = wall_s, tail_s
        self.current = None
        if len(self.steps) >= self.max_steps:
            del self.steps[: len(self.steps) // 2]
        self.steps.append(step)
        for listener in self.listeners:
            listener(step)

    def add(self, record: LayerRecord) -> None:
        if self.current is not None:
            self.current.layers.append(record)

    def clear(self) -> None:
        self.steps.clear()


def last_request(steps: list[StepRecord]) -> list[StepRecord]:
    """The steps from the most recent prefill on (a request: its prefill and the decode steps after it)."""
    starts = [i for i, s in enumerate(steps) if s.phase == "prefill"]
    return steps[starts[-1]:] if starts else list(steps)


def summarize(steps: list[StepRecord], num_devices: int) -> dict[str, Any]:
    """Totals over steps: per-device tokens, bits, measured compute, and experts per token."""
    tokens = np.zeros(num_devices, dtype=np.int64)
    bits_down = np.zeros(num_devices, dtype=np.int64)
    bits_up = np.zeros(num_devices, dtype=np.int64)
    compute_s = np.zeros(num_devices)
    kept: list[np.ndarray] = []
    for step in steps:
        for rec in step.layers:
            tokens += rec.tokens_down
            bits_down += rec.bits_down
            bits_up += rec.bits_up
            compute_s += rec.device_time_s
            kept.append(rec.experts_per_token)
    summary = _totals(tokens, bits_down, bits_up, compute_s, float(np.concatenate(kept).mean()) if kept else 0.0,
                      float(sum(r.bs_time_s for s in steps for r in s.layers) + sum(s.tail_s for s in steps)), steps)
    modeled = modeled_summary(steps)
    if modeled is not None:
        summary.update(modeled)
    return summary


def _totals(tokens: np.ndarray, bits_down: np.ndarray, bits_up: np.ndarray, compute_s: np.ndarray,
            experts_per_token: float, bs_time_s: float, steps: list[StepRecord]) -> dict[str, Any]:
    """`summarize`'s dictionary of its totals, with the failover events, re-routed and fused counts of `steps`."""
    summary = {
        "tokens_per_device": tokens.tolist(),
        "bits_down_per_device": bits_down.tolist(),
        "bits_up_per_device": bits_up.tolist(),
        "device_compute_s": compute_s.tolist(),
        "experts_per_token_mean": experts_per_token,
        "bs_time_s": bs_time_s,
    }
    events = [(s.index, r.layer, e) for s in steps for r in s.layers for e in r.failover]
    if events:
        summary["failover"] = [
            {"step": step, "layer": layer, "kind": e.kind, "device": e.device, "reason": e.reason,
             "detect_s": e.detect_s, "replica": e.replica, "substitute": e.substitute, "dropped": e.dropped}
            for step, layer, e in events
        ]
    moved = np.array([r.rerouted for s in steps for r in s.layers], dtype=np.int64).reshape(-1, 3).sum(axis=0)
    if moved.any():
        summary["rerouted"] = dict(zip(("replica", "substitute", "dropped"), moved.tolist(), strict=True))
    fused = sum(r.fused_tokens for s in steps for r in s.layers)
    if fused:
        summary["fused_tokens"] = fused
    return summary


def modeled_summary(steps: list[StepRecord], shares: list[float] | None = None) -> dict[str, Any] | None:
    """The radio model's view of a request (`wdmoe.radio.latency`): TTFT = the first step, TPOT = the mean of the
    others, bytes on air, energy, and per-layer means. None when a step has no modeled latency. `shares`: the
    request's share of each step's tokens when it shared them with other requests (`radio.latency.step_share`)."""
    layers = [[r.modeled for r in s.layers if r.modeled is not None] for s in steps]
    if not steps or any(len(ms) != len(s.layers) for ms, s in zip(layers, steps, strict=True)):
        return None
    totals = [step_totals(ms) for ms in layers]
    if shares is not None:
        totals = [step_share(t, share) for t, share in zip(totals, shares, strict=True)]
    request = request_latency(totals[0], totals[1:])
    by_layer: dict[int, list[LatencyBreakdown]] = {}
    measured: dict[int, list[float]] = {}  # wall time of the dispatch round(s): transport + device + (emulated) air
    measured_layer: dict[int, list[float]] = {}  # + the BS's own time since the previous MoE layer
    for step in steps:
        for rec in step.layers:
            if rec.modeled is not None:
                by_layer.setdefault(rec.layer, []).append(rec.modeled)
            measured.setdefault(rec.layer, []).append(rec.dispatch_time_s)
            measured_layer.setdefault(rec.layer, []).append(rec.dispatch_time_s + rec.bs_time_s)
    per_layer = [
        {
            "layer": layer,
            "bs_s": float(np.mean([b.bs_s for b in bds])),
            "dl_s": float(np.mean([b.dl_s.max(initial=0.0) for b in bds])),
            "compute_s": float(np.mean([b.compute_s.max(initial=0.0) for b in bds])),
            "ul_s": float(np.mean([b.ul_s.max(initial=0.0) for b in bds])),
            "layer_s": float(np.mean([b.layer_s for b in bds])),
            "waiting_s": float(np.mean([b.waiting_s.mean() for b in bds])),
            "measured_dispatch_s": float(np.mean(measured[layer])),
            "measured_layer_s": float(np.mean(measured_layer[layer])),
        }
        for layer, bds in sorted(by_layer.items())
    ]
    bits_dl = sum(t.bits_dl for t in totals)
    bits_ul = sum(t.bits_ul for t in totals)
    return {
        "latency": {
            "ttft_s": request.ttft_s,
            "tpot_s": request.tpot_s if request.num_decode_steps else None,
            "total_s": request.total_s,
            "per_step_s": [t.latency_s for t in totals],
            "per_layer": per_layer,
        },
        "bytes_on_air": (bits_dl + bits_ul) / 8,
        "bytes_down": bits_dl / 8,
        "bytes_up": bits_ul / 8,
        "energy_j": request.energy_j,
        "energy_parts_j": {
            "device_tx": sum(t.energy_device_tx_j for t in totals),
            "device_compute": sum(t.energy_device_compute_j for t in totals),
            "bs_tx": sum(t.energy_bs_tx_j for t in totals),
        },
    }


@dataclass(frozen=True)
class StepShare:
    """Rows start..stop of `step` were one request's tokens; `first`: its prefill."""

    step: StepRecord
    start: int
    stop: int
    first: bool

    @property
    def share(self) -> float:
        return (self.stop - self.start) / max(self.step.num_tokens, 1)


def slice_layer(rec: LayerRecord, start: int, stop: int) -> LayerRecord:
    """The rows start..stop of a layer record: their route, and the devices' tokens and bits they account for
    (counted from the route and `expert_device`; without it, the record's totals in proportion to the rows)."""
    rows = slice(start, stop)
    index = (rec.topk_index if rec.routed_index is None else rec.routed_index)[rows]
    keep = rec.keep[rows]
    num_devices = rec.tokens_down.shape[0]
    share = (stop - start) / max(rec.num_tokens, 1)
    if rec.expert_device is not None:
        device = np.asarray(rec.expert_device)[index]  # (t, k)
        assignments = np.bincount(device[keep], minlength=num_devices).astype(np.int64)
        sent = np.zeros((keep.shape[0], num_devices), dtype=bool)  # (t, D) token t goes down to device d
        sent[np.nonzero(keep)[0], device[keep]] = True
        tokens = sent.sum(axis=0).astype(np.int64)
    else:
        assignments = np.rint(rec.assignments * share).astype(np.int64)
        tokens = np.rint(rec.tokens_down * share).astype(np.int64)
    bits = int(rec.bits_up.sum() // max(int(rec.assignments.sum()), 1))  # the air format's bits per token
    return LayerRecord(
        layer=rec.layer, topk_index=rec.topk_index[rows], topk_weight=rec.topk_weight[rows], keep=keep,
        weight=rec.weight[rows], logits=None if rec.logits is None else rec.logits[rows], tokens_down=tokens,
        assignments=assignments, bits_down=tokens * bits, bits_up=assignments * bits, bs_time_s=rec.bs_time_s,
        device_time_s=rec.device_time_s * share, dispatch_time_s=rec.dispatch_time_s, modeled=None,
        decision=rec.decision, routed_index=None if rec.routed_index is None else index, failover=rec.failover,
        rerouted=rec.rerouted, fused_tokens=rec.fused_tokens, expert_device=rec.expert_device,
    )


@dataclass(frozen=True)
class StepRows:
    """One step's per-row counts over all its MoE layers, as prefix sums over the rows (row t: [t + 1] - [t]), so
    a request's rows start..stop count `[stop] - [start]`: tokens sent down to each device (L rows per token, one
    per layer, as `slice_layer`), their bits down, the expert outputs' bits up, and the kept assignments; with each
    layer's device times and BS time, for the sums `request_summary` keeps in order."""

    tokens: np.ndarray  # (T + 1, D) int64
    bits_down: np.ndarray  # (T + 1, D) int64
    bits_up: np.ndarray  # (T + 1, D) int64
    kept: np.ndarray  # (T + 1,) int64
    device_time_s: np.ndarray  # (L, D) each layer's measured device time
    bs_time_s: tuple[float, ...]  # (L,)

    @staticmethod
    def of(step: StepRecord, num_devices: int) -> StepRows | None:
        """None without MoE layers, or when a layer lacks `expert_device` (rows cannot be attributed: the
        reference slices then)."""
        if step.rows is not None:
            return step.rows
        layers = step.layers
        if not layers or any(rec.expert_device is None for rec in layers):
            return None
        num_tokens = layers[0].num_tokens
        index = np.stack([rec.topk_index if rec.routed_index is None else rec.routed_index for rec in layers])
        keep = np.stack([rec.keep for rec in layers])  # (L, T, k)
        device = np.stack([np.asarray(rec.expert_device)[i] for rec, i in zip(layers, index, strict=True)])
        layer, row, j = np.nonzero(keep)
        sent = np.zeros((len(layers), num_tokens, num_devices), dtype=np.int64)  # (L, T, D) row t goes down to d
        sent[layer, row, device[layer, row, j]] = 1
        answers = np.zeros_like(sent)  # (L, T, D) expert outputs of row t sent back by d
        np.add.at(answers, (layer, row, device[layer, row, j]), 1)
        bits = np.array([int(rec.bits_up.sum() // max(int(rec.assignments.sum()), 1)) for rec in layers],
                        dtype=np.int64)[:, None, None]  # the air format's bits per token, as `slice_layer`'s
        rows = StepRows(_prefix(sent.sum(axis=0)), _prefix((sent * bits).sum(axis=0)),
                        _prefix((answers * bits).sum(axis=0)), _prefix(keep.sum(axis=(0, 2))),
                        np.stack([rec.device_time_s for rec in layers]), tuple(rec.bs_time_s for rec in layers))
        step.rows = rows  # one step is summarized by the summary thread: a race would only compute it twice
        return rows


def _prefix(per_row: np.ndarray) -> np.ndarray:
    """(T, ...) -> (T + 1, ...): zero, then the running sums over the rows."""
    out = np.zeros((per_row.shape[0] + 1, *per_row.shape[1:]), dtype=np.int64)
    np.cumsum(per_row, axis=0, out=out[1:])
    return out


def request_summary(parts: list[StepShare], num_devices: int) -> dict[str, Any]:
    """`summarize` of one request that shared its forward steps with others: its own rows of each step (route,
    tokens and bits per device), the measured device time in proportion to its tokens, and the radio model's
    TTFT/TPOT of the steps it waited for, with their energy and bytes in proportion (`modeled_summary`).

    Equal to `summarize` of its `slice_layer`s (`sliced_summary`, the reference): the counts are integer sums of
    each step's `StepRows` (computed once per step for every request that shared it), and the float sums (device
    time, BS time) add the same terms in the same order. It runs once per request, on the engine's summary thread,
    before the request's result is delivered: its time is on every request's way back to its client."""
    found = [StepRows.of(p.step, num_devices) for p in parts]
    rows = [r for r in found if r is not None]
    if not parts or len(rows) < len(parts):
        return sliced_summary(parts, num_devices)
    tokens = np.zeros(num_devices, dtype=np.int64)
    bits_down, bits_up = tokens.copy(), tokens.copy()
    kept = count = 0
    compute: list[np.ndarray] = []  # each (step, layer)'s device time in proportion, in slice_layer's order
    for p, r in zip(parts, rows, strict=True):
        tokens += r.tokens[p.stop] - r.tokens[p.start]
        bits_down += r.bits_down[p.stop] - r.bits_down[p.start]
        bits_up += r.bits_up[p.stop] - r.bits_up[p.start]
        kept += int(r.kept[p.stop] - r.kept[p.start])
        count += (p.stop - p.start) * r.device_time_s.shape[0]
        compute.append(r.device_time_s * ((p.stop - p.start) / max(p.step.layers[0].num_tokens, 1)))
    # float sums in the reference's order: += per (step, layer) (accumulate adds in order), then Python's sum
    compute_s = np.add.accumulate(np.concatenate(compute), axis=0)[-1]
    steps = [p.step for p in parts]
    bs_time = float(sum(t for r in rows for t in r.bs_time_s) + sum(s.tail_s for s in steps))
    summary = _totals(tokens, bits_down, bits_up, compute_s, float(kept) / count, bs_time, steps)
    modeled = modeled_summary(steps, [p.share for p in parts])
    if modeled is not None:
        summary.update(modeled)
    return summary


def sliced_summary(parts: list[StepShare], num_devices: int) -> dict[str, Any]:
    """`request_summary` by its definition: `summarize` of the request's `slice_layer` of every step and layer."""
    steps = [StepRecord(p.step.index, "prefill" if p.first else "decode", p.stop - p.start,
                        [slice_layer(r, p.start, p.stop) for r in p.step.layers], p.step.wall_s, p.step.tail_s)
             for p in parts]
    summary = summarize(steps, num_devices)
    modeled = modeled_summary([p.step for p in parts], [p.share for p in parts])
    if modeled is not None:
        summary.update(modeled)
    return summary
