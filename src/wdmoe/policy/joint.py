"""Joint expert selection and bandwidth allocation (papers.md §3.3–3.4 [R]: a reconstruction, not the paper's).

Contract: maximise, per layer step, the capability-over-latency metric

    ratio:       M(a, b) = sum_j sum_k a_jk w_jk / T_layer(a, b)
    lagrangian:  M(a, b) = sum_j sum_k a_jk w_jk - lam * T_layer(a, b)

over the kept pairs a (inside the router's top-k, >= 1 per token, kept weight >= rho * the token's top-k total)
and the bandwidth b (sum b <= B), with T_layer from radio.latency. Alternating optimisation:

1. a = the router's top-k; b = the exact min-max split for a (policy.bandwidth).
2. Selection: each token offers its droppable pair with the lowest score w_jk / (mu_d * t_d / pairs_d), where
   mu_d = (1/|dt_d/db_d|) / sum (1/|dt/db|) is device d's KKT weight (how much the equalised T falls per second
   saved on d) and t_d / pairs_d its mean time per pair. Dropping the m lowest offers, for m in {n, n/2, ..., 1},
   each followed by its min-max bandwidth step, gives candidates; the best is accepted only if M does not
   decrease.
3. Stop when M improves by less than tol (relative) or after max_iter rounds.

Decode (one token) runs the same rounds on Python floats over the token's k routed slots: numpy's per-call
overhead would dominate arrays of k <= 8 entries. `decide_steps`, the batched form (policy.steps), runs them on
arrays over n one-token steps (`policy.joint_rounds`, and `policy.joint_top2` for k = 2).

The bandwidth step never lowers M for a fixed a (T_layer is minimised), so M is non-decreasing over the rounds;
`solve` returns the history for the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from wdmoe.policy.bandwidth import minmax_split, pair_split
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.joint_rounds import beyond_two_devices, decide_rounds
from wdmoe.policy.joint_top2 import decide_top2
from wdmoe.policy.selection import DeviceCosts, device_costs, device_times_s, profiles_of, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.compute import roofline_one_token_s
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import scalar_time, time_and_inverse_slope


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
        max_iter, tol: at most max_iter selection rounds; stop when M improves by < tol relative.
    """

    form: Literal["ratio", "lagrangian"] = "ratio"
    lam: float = 1.0
    rho: float = 0.5
    max_iter: int = 10
    tol: float = 1e-4
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
        return self.solve(state).decision

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """Equals `JointSelectionBandwidth.decide` on each step's LayerState (None for a subclass, which may
        decide otherwise). Steps whose slots lie on one or two devices go to `joint_top2.decide_top2` (k = 2) or
        `joint_rounds.decide_rounds`; steps on three or more devices or with a zero payload are left `fallback`
        for the per-state path, as are the two-device steps whose array split does not converge."""
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
        if state.num_tokens == 1:
            return _solve_one_token(self, state)
        return self._solve_batch(state)

    def _solve_batch(self, state: LayerState) -> JointSolution:
        """The vectorized rounds for any number of tokens (`solve` sends one token to the float path)."""
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
        decision = Decision(point.keep, renormalize(weight, point.keep), point.bandwidth_hz)
        return JointSolution(decision, tuple(history), state.bs_time_s + float(point.times_s.max(initial=0.0)))

    def _metric(self, kept_weight: float, layer_s: float) -> float:
        if self.form == "ratio":
            return kept_weight / layer_s if layer_s > 0.0 else float("inf")
        return kept_weight - self.lam * layer_s

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


def _decide_two_devices(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """The batched rounds for steps whose slots lie on at most two devices: top-2 by its fast version (the same
    decisions bit for bit, by direct column arithmetic), any other k by the generic rounds."""
    if steps.slot_device.shape[1] == 2:
        return decide_top2(steps, policy)
    return decide_rounds(steps, policy)


@dataclass(frozen=True)
class _OneToken:
    """Per routed slot of the single token: device, weight, 1-token roofline, SNRs (Python lists of length k)."""

    device: list[int]
    weight: list[float]
    roof_s: list[float]
    snr_dl: list[float]
    snr_ul: list[float]


def _one_token(state: LayerState) -> _OneToken:
    profiles = profiles_of(state)
    device = state.expert_device[state.topk_index[0]].tolist()  # k entries: item() beats fancy indexing here
    flops, mem, overhead = profiles.flops_per_s, profiles.mem_bytes_per_s, profiles.overhead_s
    roof = [roofline_one_token_s(state.expert_flops_per_token, state.expert_weight_bytes, flops.item(d), mem.item(d),
                                 overhead.item(d)) for d in device]
    snr_dl, snr_ul = state.link.snr_dl_per_hz, state.link.snr_ul_per_hz
    return _OneToken(device, state.topk_weight[0].astype(float).tolist(), roof,
                     [snr_dl.item(d) for d in device], [snr_ul.item(d) for d in device])


def _evaluate_one_token(policy: JointSelectionBandwidth, state: LayerState, slots: _OneToken,
                        keep: list[bool]) -> tuple[float, dict[int, float], dict[int, float], dict[int, float]]:
    """(metric, share per active device, time per device, KKT weight mu per device) for one token's keep."""
    need = state.bits_per_token * LN2
    pairs: dict[int, int] = {}
    compute: dict[int, float] = {}
    snr: dict[int, tuple[float, float]] = {}
    kept_weight = 0.0
    for j, kept in enumerate(keep):
        if kept:
            d = slots.device[j]
            pairs[d] = pairs.get(d, 0) + 1
            compute[d] = compute.get(d, 0.0) + slots.roof_s[j]
            snr[d] = (slots.snr_dl[j], slots.snr_ul[j])
            kept_weight += slots.weight[j]
    devices = list(pairs)
    budget, pool = state.bandwidth_hz, state.link.dl_psd_pool_hz
    if need == 0.0:
        shares = {d: budget / len(devices) for d in devices}
    elif len(devices) == 1:
        shares = {devices[0]: budget}
    elif len(devices) == 2:  # lower device id first: equal problems in any slot order (the batched rounds memoise)
        d0, d1 = min(devices), max(devices)
        split = pair_split(need, need, need * pairs[d0], need * pairs[d1], compute[d0], compute[d1],
                           snr[d0][0], snr[d1][0], snr[d0][1], snr[d1][1], budget, dl_pool=pool)
        if split is None:  # never seen; the vectorized solver has a bisection fallback
            split = tuple(minmax_split(np.full(2, state.bits_per_token),
                                       state.bits_per_token * np.array([pairs[d0], pairs[d1]], dtype=float),
                                       np.array([compute[d0], compute[d1]]), np.array([snr[d0][0], snr[d1][0]]),
                                       np.array([snr[d0][1], snr[d1][1]]), budget, np.ones(2, dtype=bool),
                                       dl_pool_hz=pool))
        shares = {d0: split[0], d1: split[1]}
    else:
        b = minmax_split(np.full(len(devices), state.bits_per_token),
                         state.bits_per_token * np.array([pairs[d] for d in devices], dtype=float),
                         np.array([compute[d] for d in devices]), np.array([snr[d][0] for d in devices]),
                         np.array([snr[d][1] for d in devices]), budget, np.ones(len(devices), dtype=bool),
                         dl_pool_hz=pool)
        shares = dict(zip(devices, b.tolist(), strict=True))
    times: dict[int, float] = {}
    inverse_slope: dict[int, float] = {}
    for d in devices:
        if need == 0.0:
            times[d], inverse_slope[d] = compute[d], 1.0
        else:
            times[d], inverse_slope[d] = scalar_time(shares[d], need, need * pairs[d], compute[d], *snr[d], pool)
    total_inverse = sum(inverse_slope.values())
    mu = {d: inverse_slope[d] / total_inverse for d in devices}
    layer_s = state.bs_time_s + max(times.values())
    return policy._metric(kept_weight, layer_s), shares, times, {d: mu[d] * times[d] / pairs[d] for d in devices}


def _solve_one_token(policy: JointSelectionBandwidth, state: LayerState) -> JointSolution:
    """`JointSelectionBandwidth.solve` for one token (decode), on Python floats; same rounds, same metric."""
    slots = _one_token(state)
    k = len(slots.device)
    guard = policy.rho * sum(slots.weight)
    keep = [True] * k
    metric, shares, times, cost = _evaluate_one_token(policy, state, slots, keep)
    history = [metric]
    for _ in range(policy.max_iter):
        kept_weight = sum(w for w, kept in zip(slots.weight, keep, strict=True) if kept)
        if sum(keep) < 2:
            break
        offers = [j for j in range(k) if keep[j] and kept_weight - slots.weight[j] >= guard]
        if not offers:
            break
        drop = min(offers, key=lambda j: slots.weight[j] / max(cost[slots.device[j]], 1e-300))
        trial_keep = [kept and j != drop for j, kept in enumerate(keep)]
        trial = _evaluate_one_token(policy, state, slots, trial_keep)
        if not trial[0] > metric:
            break
        gain = trial[0] - metric
        keep, (metric, shares, times, cost) = trial_keep, trial
        history.append(metric)
        if gain <= policy.tol * abs(history[-2]):
            break
    kept_weight = sum(w for w, kept in zip(slots.weight, keep, strict=True) if kept)
    total = sum(slots.weight)
    if kept_weight > 0.0:
        weight = [w * total / kept_weight if kept else 0.0 for w, kept in zip(slots.weight, keep, strict=True)]
    else:  # the selection.renormalize rule: share the total equally among the kept experts
        weight = [total / sum(keep) if kept else 0.0 for kept in keep]
    bandwidth = np.zeros(state.num_devices)
    for d, share in shares.items():
        bandwidth[d] = share
    decision = Decision(np.array([keep]), np.array([weight]), bandwidth)
    return JointSolution(decision, tuple(history), state.bs_time_s + max(times.values()))
