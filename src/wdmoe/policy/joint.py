"""Joint expert selection and bandwidth allocation (papers.md §3.3–3.4 [R]: a reconstruction, not the paper's).

Contract: maximise, per layer step, the capability-over-latency metric

    ratio:       M(a, b) = sum_j sum_k a_jk w_jk / T_layer(a, b)
    lagrangian:  M(a, b) = sum_j sum_k a_jk w_jk - lam * T_layer(a, b)

over the kept pairs a (inside the router's top-k, >= 1 per token, kept weight >= rho * the token's top-k total)
and the bandwidth b (sum b <= B), with T_layer from radio.latency. For a fixed a the best b is the exact min-max
split (policy.bandwidth), so the search is over a:

- one token (decode, any k): exact, `policy.joint_decode` (a bounded search over the kept slots per device);
  `decide_steps`, the batched form, decides steps on at most two devices on arrays (`policy.joint_pairs`, and
  `policy.joint_top2` for k = 2), the same bits; the others go to the per-state path.
- a small block (at most `exact_masks` feasible masks): exact, `policy.joint_block` (enumeration by load, bounded).
- a larger block: the alternating heuristic below, then a local search over the optional pairs kept per device
  (`policy.joint_counts`), and the decision carries a certified optimality gap (`policy.joint_gap`: an upper
  bound on M from a relaxation and duality; where that gap exceeds 1%, `policy.joint_interval`: the same
  relaxation bounded by intervals of the layer time, a knapsack each), reported in the telemetry
  (`LayerRecord.optimality_gap`).

The heuristic: 1. a = the router's top-k, b its min-max split. 2. Each token offers its droppable pair with the
lowest score w_jk / (mu_d * t_d / pairs_d) (mu_d: device d's KKT weight, t_d / pairs_d its mean time per pair);
dropping the m lowest offers, m in {n, n/2, ..., 1}, each with its min-max split, gives candidates; the best is
accepted if M rises. 3. Stop when M rises by less than tol (relative) or after max_iter rounds.

`solve` returns the metric of the top-k and, when it differs, of the decision (`metric_history`) for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from wdmoe.policy.bandwidth import minmax_split
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.joint_block import solve_block
from wdmoe.policy.joint_counts import improve_counts
from wdmoe.policy.joint_decode import OneTokenChoice, OneTokenSlots, solve_one_token
from wdmoe.policy.joint_gap import certified_gap, gap_of
from wdmoe.policy.joint_interval import interval_bound
from wdmoe.policy.joint_pairs import beyond_two_devices, decide_two_devices
from wdmoe.policy.joint_search import objective
from wdmoe.policy.joint_top2 import decide_top2
from wdmoe.policy.selection import DeviceCosts, device_costs, device_times_s, profiles_of, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.compute import roofline_one_token_s
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope

# a large block's certified gap above _GAP_TIGHTEN (the 1% target) is tightened by policy.joint_interval, aiming at
# _GAP_TARGET: its cost (10-300 ms a block) is spent only where the decomposition's bound misses the target
_GAP_TIGHTEN, _GAP_TARGET = 1e-2, 1e-3

@dataclass(frozen=True)
class JointSolution:
    """The decision, the metric after each accepted round (history[0]: top-k with min-max bandwidth)."""

    decision: Decision
    metric_history: tuple[float, ...]
    layer_s: float


@dataclass(frozen=True)
class _Point:
    keep: np.ndarray
    costs: DeviceCosts
    bandwidth_hz: np.ndarray
    times_s: np.ndarray
    kept_weight: float
    metric: float


@dataclass(frozen=True)
class JointSelectionBandwidth:
    """Joint selection + min-max bandwidth on the capability-over-latency metric (papers.md §3.3–3.4 [R]).

    Attributes:
        form: "ratio" (kept weight / layer seconds) or "lagrangian" (kept weight - lam * layer seconds).
        lam: weight units per second of layer time, for the lagrangian form.
        rho: accuracy guard, each token keeps >= rho x its top-k weight total.
        max_iter, tol: the heuristic of large blocks: at most max_iter selection rounds; stop when M improves by
            < tol relative.
        exact_masks: blocks of at most this many feasible keep masks are solved exactly (one token always is).
    """

    form: Literal["ratio", "lagrangian"] = "ratio"
    lam: float = 1.0
    rho: float = 0.5
    max_iter: int = 10
    tol: float = 1e-4
    exact_masks: int = 4096
    name = "joint"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if self.form not in ("ratio", "lagrangian"):
            raise ValueError(f"JointSelectionBandwidth.form = {self.form!r}; use 'ratio' or 'lagrangian'")
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"JointSelectionBandwidth.rho = {self.rho} must lie in [0, 1]")
        if self.lam < 0.0:
            raise ValueError(f"JointSelectionBandwidth.lam = {self.lam} must be >= 0 (weight per second)")

    def decide(self, state: LayerState) -> Decision:
        if state.num_tokens == 1:
            return _one_token_decision(state, _solve_one_token(self, state))
        return self.solve(state).decision

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """Equals `JointSelectionBandwidth.decide` on each step's LayerState (None for a subclass, which may
        decide otherwise). Steps whose slots lie on one or two devices go to `joint_top2.decide_top2` (k = 2) or
        `joint_pairs.decide_two_devices`; steps on three or more devices or with a zero payload are left
        `fallback` for the per-state path, as are the two-device steps whose array split does not converge."""
        if type(self) is not JointSelectionBandwidth:
            return None
        n, k = steps.slot_device.shape
        fallback = beyond_two_devices(steps) | (steps.bits_per_token == 0.0)
        if not fallback.any():
            return _decide_two_devices(steps, self)
        ok = np.flatnonzero(~fallback)  # solved alone: a fallback step must not share a memoised split with them
        part = _decide_two_devices(steps.subset(ok), self)
        keep, weight, share = np.ones((n, k), dtype=bool), steps.weight.copy(), np.zeros((n, k))
        keep[ok], weight[ok], share[ok] = part.keep, part.weight, part.slot_share_hz
        fallback[ok] = part.fallback
        return BatchDecision(keep, weight, share, fallback, steps.slot_device, steps.num_devices)

    def solve(self, state: LayerState) -> JointSolution:
        """The decision with the top-k's metric and the decision's (`metric_history`) and its layer time."""
        weight = state.topk_weight.astype(float)
        top = self._point(state, np.ones(weight.shape, dtype=bool), float(weight.sum()))
        if state.num_tokens == 1:
            choice = _solve_one_token(self, state)
            decision = _one_token_decision(state, choice)
            return JointSolution(decision, _history(top.metric, choice.metric, bool(decision.keep.all())),
                                 choice.layer_s)
        block = solve_block(self, state, self.exact_masks, lambda keep, kept: self._evaluate(state, keep, kept))
        if block is None:
            return self._solve_batch(state)
        point = self._point(state, block.keep, block.kept_weight)
        decision = Decision(point.keep, renormalize(weight, point.keep), point.bandwidth_hz, 0.0)
        return JointSolution(decision, _history(top.metric, point.metric, bool(point.keep.all())),
                             state.bs_time_s + float(point.times_s.max(initial=0.0)))

    def _evaluate(self, state: LayerState, keep: np.ndarray, kept_weight: float) -> tuple[float, float]:
        point = self._point(state, keep, kept_weight)
        return point.metric, state.bs_time_s + float(point.times_s.max(initial=0.0))

    def _solve_batch(self, state: LayerState) -> JointSolution:
        """The heuristic rounds (module docstring) for a block too large to enumerate, with its certified gap."""
        weight = state.topk_weight.astype(float)  # (T, k)
        guard = self.rho * weight.sum(axis=1)  # (T,)
        point = self._point(state, np.ones(weight.shape, dtype=bool), float(weight.sum()))
        history = [point.metric]
        for _ in range(self.max_iter):
            rows, cols = self._offers(state, weight, guard, point)
            if rows.size == 0:
                break
            dropped_w = np.cumsum(weight[rows, cols])
            best = point
            m = rows.size
            while m >= 1:
                keep = point.keep.copy()
                keep[rows[:m], cols[:m]] = False
                trial = self._point(state, keep, point.kept_weight - float(dropped_w[m - 1]))
                if trial.metric > best.metric:
                    best = trial
                m //= 2
            if best is point:
                break
            gain = best.metric - point.metric
            point = best
            history.append(point.metric)
            if gain <= self.tol * abs(history[-2]):
                break
        counts = improve_counts(self, state, point.keep)  # a local search over the kept pairs per device
        if not np.array_equal(counts, point.keep):
            trial = self._point(state, counts, float(weight[counts].sum()))
            if trial.metric > point.metric:
                point = trial
                history.append(point.metric)
        for _ in range(4):  # the relaxation's own choice, while it improves on the rounds
            bound = certified_gap(self, state, point.metric, point.bandwidth_hz, point.keep)
            if bound.suggestion is None or not bound.gap > 0.0:
                break
            trial = self._point(state, bound.suggestion, float(weight[bound.suggestion].sum()))
            if not trial.metric > point.metric:
                break
            point = trial
            history.append(point.metric)
        upper = bound.upper
        if bound.gap > _GAP_TIGHTEN:  # the decomposition is loose here: bound by intervals of the layer time
            tight = interval_bound(self, state, point.metric, _GAP_TARGET)
            if tight is not None:
                if tight.suggestion is not None:
                    trial = self._point(state, tight.suggestion, float(weight[tight.suggestion].sum()))
                    if trial.metric > point.metric:
                        point = trial
                        history.append(point.metric)
                upper = min(upper, tight.upper)
        decision = Decision(point.keep, renormalize(weight, point.keep), point.bandwidth_hz,
                            gap_of(max(upper, point.metric), point.metric))
        return JointSolution(decision, tuple(history), state.bs_time_s + float(point.times_s.max(initial=0.0)))

    def _metric(self, kept_weight: float, layer_s: float) -> float:
        return objective(self, kept_weight, layer_s)

    def _point(self, state: LayerState, keep: np.ndarray, kept_weight: float) -> _Point:
        costs = device_costs(state, keep)
        link = state.link
        b = minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s, link.snr_dl_per_hz, link.snr_ul_per_hz,
                         state.bandwidth_hz, costs.active, dl_pool_hz=link.dl_psd_pool_hz)
        times = device_times_s(state, costs, b)
        layer_s = state.bs_time_s + float(times.max(initial=0.0))
        return _Point(keep, costs, b, times, kept_weight, self._metric(kept_weight, layer_s))

    def _offers(self, state: LayerState, weight: np.ndarray, guard: np.ndarray,
                point: _Point) -> tuple[np.ndarray, np.ndarray]:
        """Each token's lowest-score droppable pair, sorted by score: (rows, cols) of the offers."""
        keep, costs = point.keep, point.costs
        kept_w = np.where(keep, weight, 0.0)
        droppable = keep & (keep.sum(axis=1, keepdims=True) >= 2)
        droppable &= (kept_w.sum(axis=1, keepdims=True) - weight) >= guard[:, None]
        if not droppable.any():
            return np.empty(0, dtype=int), np.empty(0, dtype=int)
        score = weight / self._pair_cost(state, costs, point)[state.expert_device[state.topk_index]]
        score = np.where(droppable, score, np.inf)
        cols = np.argmin(score, axis=1)
        rows = np.flatnonzero(np.isfinite(score[np.arange(score.shape[0]), cols]))
        cols = cols[rows]
        order = np.argsort(score[rows, cols], kind="stable")
        return rows[order], cols[order]

    @staticmethod
    def _pair_cost(state: LayerState, costs: DeviceCosts, point: _Point) -> np.ndarray:
        """(D,) mu_d * t_d / pairs_d: how much the equalised layer time falls per pair dropped on device d."""
        link = state.link
        need = costs.active & ((costs.bits_dl > 0.0) | (costs.bits_ul > 0.0))
        mu = np.where(costs.active, 1.0, 0.0)
        if need.any():
            _, inv_slope = time_and_inverse_slope(
                point.bandwidth_hz[need], costs.bits_dl[need] * LN2, costs.bits_ul[need] * LN2,
                costs.compute_s[need], link.snr_dl_per_hz[need], link.snr_ul_per_hz[need], link.dl_psd_pool_hz)
            mu = np.zeros_like(mu)
            mu[need] = inv_slope / inv_slope.sum()
        pairs = np.maximum(costs.bits_ul / max(state.bits_per_token, 1e-300), 1.0)
        return np.maximum(mu * point.times_s / pairs, 1e-300)




def _history(top: float, final: float, kept_all: bool) -> tuple[float, ...]:
    return (top,) if kept_all else (top, final)


def _decide_two_devices(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """The batched exact search for steps whose slots lie on at most two devices: top-2 by its fast version (the
    same decisions bit for bit, by direct column arithmetic), any other k by the generic enumeration."""
    if steps.slot_device.shape[1] == 2:
        return decide_top2(steps, policy)
    return decide_two_devices(steps, policy)


def _solve_one_token(policy: JointSelectionBandwidth, state: LayerState) -> OneTokenChoice:
    """joint_decode.solve_one_token on the state's one token (Python lists of its k slots)."""
    profiles = profiles_of(state)
    device = state.expert_device[state.topk_index[0]].tolist()  # k entries: item() beats fancy indexing here
    flops, mem, overhead = profiles.flops_per_s, profiles.mem_bytes_per_s, profiles.overhead_s
    roof = [roofline_one_token_s(state.expert_flops_per_token, state.expert_weight_bytes, flops.item(d), mem.item(d),
                                 overhead.item(d)) for d in device]
    snr_dl, snr_ul = state.link.snr_dl_per_hz, state.link.snr_ul_per_hz
    slots = OneTokenSlots(device, state.topk_weight[0].astype(float).tolist(), roof,
                          [snr_dl.item(d) for d in device], [snr_ul.item(d) for d in device])
    return solve_one_token(policy, slots, state.bits_per_token, state.bandwidth_hz, state.bs_time_s,
                           state.link.dl_psd_pool_hz)


def _one_token_decision(state: LayerState, choice: OneTokenChoice) -> Decision:
    """The Decision of a one-token choice: kept weights scaled to the top-k total (selection.renormalize's rule,
    on Python floats in slot order, as policy.joint_pairs does on arrays)."""
    weight = state.topk_weight[0].astype(float).tolist()
    keep = choice.keep
    total = kept_weight = 0.0
    for w, kept in zip(weight, keep, strict=True):
        total += w
        if kept:
            kept_weight += w
    if kept_weight > 0.0:
        out = [w * total / kept_weight if kept else 0.0 for w, kept in zip(weight, keep, strict=True)]
    else:  # the selection.renormalize rule: share the total equally among the kept experts
        out = [total / sum(keep) if kept else 0.0 for kept in keep]
    bandwidth = np.zeros(state.num_devices)
    for d, share in choice.shares.items():
        bandwidth[d] = share
    return Decision(np.array([keep]), np.array([out]), bandwidth, 0.0)
