"""A tighter certificate for the joint policy on large blocks: intervals of the layer time, each a knapsack.

Contract: `interval_bound(rule, state, metric)` returns an `IntervalBound` whose `upper` is >= M*, the optimum of
the joint objective (policy.joint_search) over every feasible keep mask and split, and a keep mask worth trying
(`suggestion`), or None where it does not apply (no payload on the air, lam = 0, or a metric that is not finite
and positive in the ratio form). It refines policy.joint_gap, whose Lagrangian decomposition leaves a duality gap
when each device carries only a few optional pairs (its per-device integer choices need not fit the band together).

The relaxation is joint_gap's (1.): keeping x_d optional pairs on device d adds at most P_d(x_d) weight and at least
the load L_d(x_d). A feasible (a, b) whose slowest device takes tau = T_layer - bs has, on each device,
b_d >= beta_d(tau, x_d), the least share on which L_d(x_d) finishes by tau (a device's time falls with its share and
rises with its load), and sum_d b_d <= B; so its kept weight is at most W_mand + K(tau), K(tau) the value of the
multiple-choice knapsack  max sum_d P_d(x_d)  s.t.  sum_d beta_d(tau, x_d) <= B  (one x per device). beta falls as
tau grows, so K rises, and every (a, b) with tau in [tau0, tau1] has M <= objective(W_mand + K(tau1), bs + tau0).
The intervals cover [0, tau_max]; beyond tau_max even the whole top-k weight cannot beat M (ratio:
W_all / (bs + tau_max) = M; lagrangian: W_all - lam (bs + tau_max) = M). The interval of the highest bound is halved
until that bound is within `target` of M or `max_evaluations` knapsacks are solved; UB is the highest bound left.

Certified arithmetic: beta is approached from below (a bisection in log b keeps a share on which the device is
still late, then Newton steps from that side, which stay below the root of a convex decreasing function) and lowered
by 1e-9; the knapsack is exact (merging Pareto fronts of (share, weight)) while its fronts stay small (few optional
pairs per device, where the decomposition is loose), else bounded by its Lagrangian dual (weak duality: a bound for
any multiplier; tight up to one fractional choice when devices carry many pairs); K is raised by _SLACK.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.policy.joint_counts import mandatory_pairs
from wdmoe.policy.joint_gap import counts_mask, device_tables
from wdmoe.policy.joint_search import JointRule, objective
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope, time_only

_SLACK = 1e-9  # relative, on K and on beta: the rounding of the bound's own arithmetic
_FRONT = 2048  # Pareto points of the exact knapsack, beyond which its dual bound serves
_FRONT_OPTIONS = 12  # choices per device (optional pairs + 1) beyond which the dual bound serves at once


@dataclass(frozen=True)
class IntervalBound:
    """UB >= M* (module docstring), the knapsack evaluations it took, and the keep mask of the most promising
    knapsack solution (None when it breaks a token's guard)."""

    upper: float
    evaluations: int
    suggestion: np.ndarray | None


def least_share(state: LayerState, tau: float, tokens: np.ndarray, pairs: np.ndarray,
                compute: np.ndarray) -> np.ndarray:
    """(D, X + 1) a lower bound on the least share on which each load finishes within tau seconds: 0 for no pairs,
    inf when the whole band is too little. The reference form of `LeastShares` (every time computed afresh)."""
    return LeastShares(state, tokens, pairs, compute, levels=0)(tau)


_TABLE_LEVELS = 8  # bisection steps `LeastShares` reads from its table (2^8 - 1 shares per load, taken at once)
_BISECTIONS = 20


class LeastShares:
    """`least_share` for many tau over the same loads (an interval bound asks up to 48), the same bits.

    The times at the full band and at the floor are taken once. Every load's bisection starts from the same bracket
    [B 1e-12, B], so the share a step tries depends only on the outcomes of the steps before it (a node of a binary
    tree), the same for every load: the times of every load at the tree's top `levels` levels are taken in one call
    (one call of 2^levels - 1 shares instead of `levels` calls for each tau), and a step there reads them."""

    def __init__(self, state: LayerState, tokens: np.ndarray, pairs: np.ndarray, compute: np.ndarray,
                 levels: int = _TABLE_LEVELS) -> None:
        budget, link = state.bandwidth_hz, state.link
        need = state.bits_per_token * LN2
        self._args = (need * tokens, need * pairs, compute, link.snr_dl_per_hz[:, None], link.snr_ul_per_hz[:, None],
                      link.dl_psd_pool_hz)
        self.pairs = pairs
        self.floor_b, self.full_b = np.full(tokens.shape, budget * 1e-12), np.full(tokens.shape, budget)
        self.t_full, _ = self.time(self.full_b)
        self.t_floor, _ = self.time(self.floor_b)
        self.table: list[np.ndarray] = []  # level l: (2^l, loads) the time of every load at each node's share
        lo, hi = np.array([budget * 1e-12]), np.array([budget])
        for _ in range(min(levels, _BISECTIONS)):
            mid = np.sqrt(lo * hi)  # (2^l,) the bisection's own arithmetic: the shares a step at this level tries
            shares = np.broadcast_to(mid.reshape(-1, *(1,) * tokens.ndim), (mid.size, *tokens.shape))
            self.table.append(self.late_time(shares).reshape(mid.size, -1))
            lo, hi = np.stack([lo, mid], axis=1).ravel(), np.stack([mid, hi], axis=1).ravel()  # child 2i + late

    def time(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each load's time (inf for nan) and inverse slope on shares b (loads' shape, or nodes x loads)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t, w = time_and_inverse_slope(b, *self._args)
        return np.where(np.isnan(t), np.inf, t), w

    def late_time(self, b: np.ndarray) -> np.ndarray:
        """`time`'s t alone (the same bits; the bisection compares it, only Newton needs the slope)."""
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = time_only(b, *self._args)
        return np.where(np.isnan(t), np.inf, t)

    def __call__(self, tau: float) -> np.ndarray:
        """(D, X + 1) `least_share` at tau."""
        lo, hi = self.floor_b, self.full_b
        node, loads = np.zeros(lo.size, dtype=np.int64), np.arange(lo.size)
        for level in range(_BISECTIONS):  # invariant: t(lo) > tau (late), t(hi) <= tau, where the root lies between
            mid = np.sqrt(lo * hi)
            tabled = level < len(self.table)
            t = self.table[level][node, loads].reshape(mid.shape) if tabled else self.late_time(mid)
            late = ~(t <= tau)
            lo, hi = np.where(late, mid, lo), np.where(late, hi, mid)
            node = 2 * node + late.ravel()
        for _ in range(3):  # Newton from the late side: t convex and decreasing, so the step stays below the root
            t, w = self.time(lo)
            step = (t - tau) * w
            lo = np.where(np.isfinite(step) & (step > 0.0), np.minimum(lo + step, hi), lo)
        share = np.where(self.t_floor <= tau, 0.0, lo * (1.0 - _SLACK))
        share = np.where(self.t_full <= tau, share, np.inf)
        return np.where(self.pairs > 0.0, share, 0.0)


def knapsack(share: np.ndarray, gain: np.ndarray, budget: float) -> tuple[float, np.ndarray | None]:
    """max sum_d gain[d, x_d] s.t. sum_d share[d, x_d] <= budget (-inf gains: no such x), and its x (D,); -inf and
    None when nothing fits. Pareto fronts of (share, gain) merged device by device; where a front outgrows _FRONT
    points, `knapsack_dual`'s bound instead (module docstring)."""
    if share.shape[1] > _FRONT_OPTIONS:  # many pairs per device: the fronts would outgrow _FRONT anyway
        return knapsack_dual(share, gain, budget)
    front_b, front_v = np.zeros(1), np.zeros(1)
    choice = np.zeros((1, 0), dtype=np.int64)
    for d in range(share.shape[0]):
        xs = np.flatnonzero(np.isfinite(gain[d]) & (share[d] <= budget))
        if xs.size == 0:
            return -math.inf, None
        b = (front_b[:, None] + share[d, xs][None, :]).ravel()
        v = (front_v[:, None] + gain[d, xs][None, :]).ravel()
        fit = np.flatnonzero(b <= budget)
        if fit.size == 0:
            return -math.inf, None
        if fit.size > _FRONT:
            return knapsack_dual(share, gain, budget)
        order = fit[np.lexsort((-v[fit], b[fit]))]  # by share, the heavier first on a tie
        v_sorted = v[order]
        best_before = np.maximum.accumulate(np.concatenate([[-np.inf], v_sorted[:-1]]))
        kept = order[v_sorted > best_before]  # the Pareto front: heavier than every cheaper point
        front_b, front_v = b[kept], v[kept]
        choice = np.concatenate([choice[kept // xs.size], xs[kept % xs.size][:, None]], axis=1)
    best = int(np.argmax(front_v))
    return float(front_v[best]), choice[best]


def knapsack_dual(share: np.ndarray, gain: np.ndarray, budget: float) -> tuple[float, np.ndarray | None]:
    """An upper bound on `knapsack`'s value by weak duality: for every eta >= 0 it is at most
    eta B + sum_d max_x (gain[d, x] - eta share[d, x]); eta by bisection on the subgradient's sign, and the least of
    the values seen. Tight up to one device's fractional choice, so for devices with many optional pairs. The x is
    the last maximiser (a suggestion, not necessarily fitting)."""
    ok = np.isfinite(gain) & (share <= budget)
    if not ok.any(axis=1).all():
        return -math.inf, None
    gain_ok, share_ok = np.where(ok, gain, -np.inf), np.where(ok, share, 0.0)
    rows = np.arange(share.shape[0])

    def dual(eta: float) -> tuple[float, float, np.ndarray]:
        inner = gain_ok - eta * share_ok
        x = inner.argmax(axis=1)
        return eta * budget + float(inner[rows, x].sum()), budget - float(share_ok[rows, x].sum()), x

    value, slope, x = dual(0.0)
    if slope >= 0.0:  # the heaviest choice of every device fits: the knapsack's own optimum
        return value, x
    if float(np.where(ok, share_ok, np.inf).min(axis=1).sum()) > budget:
        return -math.inf, None
    lo, hi = 0.0, max(float(np.abs(gain_ok[ok]).max(initial=0.0)), 1e-300) / max(budget, 1e-300)
    for _ in range(200):
        value_hi, slope, x_hi = dual(hi)
        if value_hi < value:
            value, x = value_hi, x_hi
        if slope >= 0.0:
            break
        lo, hi = hi, hi * 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        value_mid, slope, x_mid = dual(mid)
        if value_mid < value:
            value, x = value_mid, x_mid
        if slope >= 0.0:
            hi = mid
        else:
            lo = mid
    return value, x


def interval_bound(rule: JointRule, state: LayerState, metric: float, target: float = 1e-3,
                   max_evaluations: int = 48) -> IntervalBound | None:
    """UB >= M* by intervals of the layer time (module docstring); None where it does not apply."""
    weight = state.topk_weight.astype(float)
    if state.bits_per_token == 0.0 or not math.isfinite(metric):
        return None
    if (rule.form == "ratio" and not metric > 0.0) or (rule.form == "lagrangian" and rule.lam == 0.0):
        return None
    mandatory = mandatory_pairs(rule, weight)
    gain, tokens, pairs, compute, w_mand_array, rank = device_tables(state, mandatory)
    w_mand = float(w_mand_array)
    w_all = w_mand + float(np.where(np.isfinite(gain), gain, 0.0).max(axis=1).sum())
    bs = state.bs_time_s
    tau_max = w_all / metric - bs if rule.form == "ratio" else (w_all - metric) / rule.lam - bs
    if not tau_max > 0.0:  # no layer time lets any mask beat M
        return IntervalBound(metric, 0, None)
    promising: tuple[float, np.ndarray | None] = (-math.inf, None)
    shares = LeastShares(state, tokens, pairs, compute)

    def evaluate(tau: float) -> float:
        nonlocal promising
        value, x = knapsack(shares(tau), gain, state.bandwidth_hz)
        if x is not None:
            estimate = objective(rule, w_mand + value, bs + tau)  # what x would reach if its loads were the floors
            if estimate > promising[0]:
                promising = (estimate, x)
        return value

    def bound(k_value: float, tau0: float) -> float:
        if k_value == -math.inf:
            return -math.inf
        kept = w_mand + k_value + _SLACK * (w_mand + abs(k_value))
        return objective(rule, kept, bs + tau0)

    k_top = evaluate(tau_max)
    heap = [(-bound(k_top, 0.0), 0.0, tau_max, k_top)]
    evaluations = 1
    while True:
        negative, lo, hi, k_hi = heap[0]
        upper = -negative
        if upper - metric <= target * abs(upper) or evaluations >= max_evaluations or upper == -math.inf:
            break
        heapq.heappop(heap)
        mid = 0.5 * (lo + hi)
        k_mid = evaluate(mid)
        evaluations += 1
        heapq.heappush(heap, (-bound(k_mid, lo), lo, mid, k_mid))
        heapq.heappush(heap, (-bound(k_hi, mid), mid, hi, k_hi))
    x = promising[1]
    suggestion = None if x is None else counts_mask(rule, state, mandatory, rank, x)
    return IntervalBound(max(upper, metric), evaluations, suggestion)
