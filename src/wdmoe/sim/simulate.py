"""The trace-replay simulator: a trace x channel realizations x scenarios x policies, through the runtime's code.

Contract: `replay(trace, scenario, policy, seed)` runs the trace's layer steps through `WirelessDecider`, the
object the live runtime uses: the same channel generator, the same `LayerState`, `policy.decide` and
`radio.latency`. In exact mode it calls the decider exactly as `DistributedMoE.generate` does (start_request at
each prefill, start_step at each step, then each layer), so for the trace and the scenario seed of a live run it
reproduces that run's modeled latency and decisions bit for bit (tests/unit/sim/test_agreement.py). The batched
mode (default) gives the same numbers faster: the channel blocks are fixed by the trace's shape alone, so they
are drawn up front (`sim.blocks`, bit-identical), multi-token steps go through the per-state path, and the
one-token layer steps of every decode step are decided together by the policy's batched form,
`policy.decide_steps` (policy.steps; per state where it declines). The batched mode decides steps out of order,
so a policy that is not `order_independent` (`RandomDrop`, whose generator advances with each call) is always
replayed in exact mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wdmoe.config import Scenario
from wdmoe.policy.base import Policy
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.compute import roofline_time_s
from wdmoe.radio.latency import LatencyBreakdown
from wdmoe.radio.one_token import OneTokenLoad, one_token_latency
from wdmoe.runtime.wireless import WirelessDecider
from wdmoe.sim.blocks import block_link, draw_blocks, trace_blocks
from wdmoe.sim.trace import PREFILL, Trace

CHUNK = 16384  # one-token steps per batch: large enough to amortise numpy's per-call cost, small enough for cache


@dataclass(frozen=True)
class Replay:
    """One replay of a trace; every array has shape (S, L): steps x MoE layers.

    Attributes:
        layer_s: modeled layer seconds. energy_j: joules. bits_dl / bits_ul: bits each way.
        kept: kept (token, expert) pairs. routed: the router's pairs (T_s * k).
        records: exact mode with keep_records: per (step, layer), in order, (keep, weight, LatencyBreakdown).
    """

    policy: str
    seed: int
    layer_s: np.ndarray
    energy_j: np.ndarray
    bits_dl: np.ndarray
    bits_ul: np.ndarray
    kept: np.ndarray
    routed: np.ndarray
    records: list[tuple[np.ndarray, np.ndarray, LatencyBreakdown]] | None = None


class _Sink:
    """Collects per-(step, layer) results into (S, L) arrays."""

    def __init__(self, trace: Trace) -> None:
        shape = (trace.num_steps, trace.num_layers)
        self.layer_s, self.energy_j = np.zeros(shape), np.zeros(shape)
        self.bits_dl, self.bits_ul = np.zeros(shape), np.zeros(shape)
        self.kept = np.zeros(shape, dtype=np.int64)
        self.routed = (trace.step_tokens * trace.top_k)[:, None].repeat(trace.num_layers, axis=1)

    def put(self, step: int, layer_pos: int, keep: np.ndarray, bd: LatencyBreakdown) -> None:
        self.layer_s[step, layer_pos], self.energy_j[step, layer_pos] = bd.layer_s, bd.energy_j
        self.bits_dl[step, layer_pos], self.bits_ul[step, layer_pos] = bd.bits_dl.sum(), bd.bits_ul.sum()
        self.kept[step, layer_pos] = int(np.count_nonzero(keep))

    def replay(self, policy: str, seed: int, records: Any = None) -> Replay:
        return Replay(policy, seed, self.layer_s, self.energy_j, self.bits_dl, self.bits_ul, self.kept,
                      self.routed, records)


def one_token_load(steps: OneTokenSteps, decision: BatchDecision) -> OneTokenLoad:
    """What the batched decode hands the radio model: the steps' slots and links with the decision's keep and band."""
    return OneTokenLoad(steps.slot_device, decision.keep, steps.roof_s, decision.slot_share_hz, steps.snr_dl_per_hz,
                        steps.snr_ul_per_hz, steps.bits_per_token, steps.bs_time_s, steps.dl_psd_pool_hz)


def make_decider(trace: Trace, scenario: Scenario, policy: Policy, seed: int | None = None) -> WirelessDecider:
    """The runtime's decider for this trace's model, over `scenario` with its seed replaced by `seed`."""
    if seed is not None:
        scenario = scenario.model_copy(update={"seed": seed})
    return WirelessDecider(scenario, policy, trace.costs, trace.expert_device_map(), trace.num_devices)


def _layer_args(trace: Trace, step: int, layer_pos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rows = trace.rows(step, layer_pos)
    return trace.topk_index[rows], trace.topk_weight[rows], None if trace.logits is None else trace.logits[rows]


def replay_exact(trace: Trace, decider: WirelessDecider, keep_records: bool = False) -> Replay:
    """Call the decider exactly as the runtime does (module docstring)."""
    sink = _Sink(trace)
    records: list[tuple[np.ndarray, np.ndarray, LatencyBreakdown]] | None = [] if keep_records else None
    layers = trace.layers.tolist()
    for step in range(trace.num_steps):
        if trace.step_phase[step] == PREFILL:
            decider.start_request()
        decider.start_step()
        for pos, layer in enumerate(layers):
            decided = decider(layer, *_layer_args(trace, step, pos))
            keep, weight, bd = decided.decision.keep, decided.decision.weight, decided.modeled
            sink.put(step, pos, keep, bd)
            if records is not None:
                records.append((keep, weight, bd))
    return sink.replay(decider.policy.name, decider.scenario.seed, records)


def replay_batched(trace: Trace, decider: WirelessDecider, chunk: int = CHUNK) -> Replay:
    """The same numbers as `replay_exact` for an order-independent policy, one-token steps decided in batches."""
    sink = _Sink(trace)
    schedule = trace_blocks(trace, decider.radio)  # (S, L)
    blocks = draw_blocks(decider.rng, decider.link, decider.radio, int(schedule.max(initial=0)))
    layers = trace.layers.tolist()

    def per_state(step: int, pos: int) -> None:
        link = block_link(blocks, int(schedule[step, pos]))
        state = decider.state_on(link, layers[pos], *_layer_args(trace, step, pos))
        sink.put(step, pos, (decision := decider.policy.decide(state)).keep, decider.breakdown(state, decision))

    one = trace.step_tokens == 1
    for step in np.flatnonzero(~one).tolist():
        for pos in range(trace.num_layers):
            per_state(step, pos)
    ones = np.flatnonzero(one)  # (n,) step-major (step, layer) pairs, without numpy's slow 2-D nonzero
    steps_1, pos_1 = np.repeat(ones, trace.num_layers), np.tile(np.arange(trace.num_layers), ones.shape[0])
    if steps_1.size == 0:
        return sink.replay(decider.policy.name, decider.scenario.seed)
    probe = decider.state_on(block_link(blocks, 0), layers[0], *_layer_args(trace, 0, 0))
    profiles = decider.profiles
    roof = roofline_time_s(1.0, probe.expert_flops_per_token, probe.expert_weight_bytes, profiles.flops_per_s,
                           profiles.mem_bytes_per_s, profiles.overhead_s)  # (D,) one token on one expert
    bs_1 = np.array([decider.bs_time_s(layer, 1) for layer in layers])
    rows_1 = trace.step_offset[steps_1] + pos_1
    table, experts, devices = trace.expert_device.ravel(), trace.num_experts, trace.num_devices
    flat = {name: getattr(sink, name).reshape(-1) for name in ("layer_s", "energy_j", "bits_dl", "bits_ul", "kept")}
    for start in range(0, steps_1.shape[0], chunk):
        part = slice(start, start + chunk)  # flat takes below: numpy's 2-D fancy indexing is far slower
        s, p, rows = steps_1[part], pos_1[part], rows_1[part]
        n, k = s.shape[0], trace.top_k
        at = s * trace.num_layers + p
        # (n, k) index arithmetic on flat arrays: numpy broadcasts an (n, 1) operand over a short last axis slowly
        device = table.take(np.repeat(p * experts, k) + trace.topk_index.take(rows, axis=0).ravel()).reshape(n, k)
        block = schedule.ravel().take(at)
        slot = (np.repeat(block * devices, k) + device.ravel()).reshape(n, k)
        batch = OneTokenSteps(device, trace.topk_weight.take(rows, axis=0).astype(float), roof.take(device),
                              blocks.snr_dl_per_hz.ravel().take(slot), blocks.snr_ul_per_hz.ravel().take(slot),
                              np.full(n, probe.bits_per_token), np.full(n, probe.bandwidth_hz), bs_1.take(p), block,
                              devices, blocks.dl_psd_pool_hz)
        decision = decider.policy.decide_steps(batch)
        if decision is None:  # no batched form for this policy: per state, in the same order
            for step, pos in zip(s.tolist(), p.tolist(), strict=True):
                per_state(step, pos)
            continue
        lat = one_token_latency(one_token_load(batch, decision), profiles.tx_power_w, profiles.compute_power_w,
                                decider.bs_tx_power_w, decider.pool)
        flat["layer_s"][at], flat["energy_j"][at] = lat.layer_s, lat.energy_j
        flat["bits_dl"][at], flat["bits_ul"][at] = lat.bits_dl, lat.bits_ul
        kept = decision.keep[:, 0].astype(np.int64)  # column adds: numpy's sum over a short last axis is slow
        for j in range(1, decision.keep.shape[1]):
            kept += decision.keep[:, j]
        flat["kept"][at] = kept
        for i in np.flatnonzero(decision.fallback).tolist():
            per_state(int(s[i]), int(p[i]))
    return sink.replay(decider.policy.name, decider.scenario.seed)


def replay(trace: Trace, scenario: Scenario, policy: Policy, seed: int | None = None, batched: bool = True,
           keep_records: bool = False) -> Replay:
    """Replay `trace` over `scenario` (seed replaced by `seed` when given) under `policy` (module docstring)."""
    decider = make_decider(trace, scenario, policy, seed)
    if batched and not keep_records and policy.order_independent:
        return replay_batched(trace, decider)
    return replay_exact(trace, decider, keep_records)
