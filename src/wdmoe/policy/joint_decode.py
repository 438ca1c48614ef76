"""The joint policy's exact search for one token (decode), on Python floats: the best keep mask and its split.

Contract: `solve_one_token(rule, slots, ...)` returns the keep mask of the token's k routed slots (k up to 8 and
beyond) that maximises the joint objective (policy.joint_search.objective) over every mask that keeps >= 1 slot and
kept weight >= rho x the top-k weight, with the exact min-max split of that mask, ties broken by
joint_search.better. Exact, not a heuristic:

- Slots on one device cost the same (one downlink of the token, one uplink and one roofline per kept slot), so a
  mask matters only through m_d, the number of slots kept on each device d, and for given counts the best mask keeps
  each device's m_d heaviest slots (equal weights: the earlier slot). The search runs over the count vectors
  (at most 2^k - 1 of them, 255 for k = 8 on 8 devices), never over worse masks with the same counts.
- Each count vector gets an upper bound on its metric from its kept weight and a lower bound on its min-max time
  (the slowest of its devices alone on the whole band, and joint_search.tangent_floor with tangents at the equal
  share B / n). Vectors are solved exactly (one device: its time on B; two: policy.bandwidth.pair_split; more:
  policy.bandwidth.minmax_split) in decreasing order of the bound, until the bound falls below the best metric.
  The bound is valid (the times are convex in the share), so nothing better is skipped.

The arithmetic of each candidate (kept weight summed in slot order from 0.0, the roofline sum repeated per kept slot,
the pair split with the lower device id first, layer = bs + max of the times) is what policy.joint_pairs does on
arrays for steps on at most two devices, so the batched form decides the same bits.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from wdmoe.policy.bandwidth import minmax_split, pair_split
from wdmoe.policy.joint_search import JointRule, better, objective, optimistic, tangent_floor
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import scalar_time


@dataclass(frozen=True)
class OneTokenSlots:
    """Per routed slot of the single token: device, weight, 1-token roofline, SNRs (Python lists of length k)."""

    device: list[int]
    weight: list[float]
    roof_s: list[float]
    snr_dl: list[float]
    snr_ul: list[float]


@dataclass(frozen=True)
class OneTokenChoice:
    """The chosen keep (k,), the share of each active device, the layer time and the metric."""

    keep: list[bool]
    shares: dict[int, float]
    layer_s: float
    metric: float


def _time(b: float, need: float, need_ul: float, compute: float, dl: float, ul: float,
          pool: float) -> tuple[float, float]:
    """radio.rate.scalar_time; a dead link (zero SNR) takes forever instead of dividing by zero."""
    try:
        return scalar_time(b, need, need_ul, compute, dl, ul, pool)
    except ZeroDivisionError:
        return math.inf, math.inf


class _Token:
    """The token's slots grouped by device (ascending id), each device's slots ranked heaviest first."""

    def __init__(self, slots: OneTokenSlots, bits: float, budget: float, pool: float) -> None:
        self.slots, self.bits, self.need, self.budget, self.pool = slots, bits, bits * LN2, budget, pool
        self.devices = sorted(set(slots.device))
        where = {d: i for i, d in enumerate(self.devices)}
        self.group = [where[d] for d in slots.device]
        k, w = len(slots.device), slots.weight
        self.rank = [sum(1 for i in range(k) if slots.device[i] == slots.device[j] and (w[i] > w[j] or (
            w[i] == w[j] and i < j))) for j in range(k)]
        self.count = [slots.device.count(d) for d in self.devices]
        first = [slots.device.index(d) for d in self.devices]
        self.snr = [(slots.snr_dl[j], slots.snr_ul[j]) for j in first]
        self.compute: list[list[float]] = []
        for g, j in enumerate(first):
            sums, acc = [0.0], 0.0
            for _ in range(self.count[g]):
                acc += slots.roof_s[j]
                sums.append(acc)
            self.compute.append(sums)
        self._alone: dict[tuple[int, int], float] = {}
        self._tangent: dict[tuple[int, int, int], tuple[float, float]] = {}

    def kept(self, counts: tuple[int, ...]) -> list[bool]:
        return [self.rank[j] < counts[g] for j, g in enumerate(self.group)]

    def time(self, g: int, m: int, b: float) -> tuple[float, float]:
        if self.need == 0.0:
            return self.compute[g][m], math.inf
        return _time(b, self.need, self.need * m, self.compute[g][m], *self.snr[g], self.pool)

    def alone(self, g: int, m: int) -> float:
        """Device g's time with m slots on the whole band (exact for a one-device vector, a floor for others)."""
        key = (g, m)
        if key not in self._alone:
            self._alone[key] = self.time(g, m, self.budget)[0]
        return self._alone[key]

    def floor(self, active: list[tuple[int, int]]) -> float:
        """A lower bound on the min-max time of the (device, count) pairs `active` (module docstring)."""
        floor = max(self.alone(g, m) for g, m in active)
        if self.need == 0.0:
            return floor
        n = len(active)
        c, w = [], []
        for g, m in active:
            key = (g, m, n)
            if key not in self._tangent:
                b0 = self.budget / n
                t0, w0 = self.time(g, m, b0)
                self._tangent[key] = (b0 + w0 * t0, w0)
            c.append(self._tangent[key][0])
            w.append(self._tangent[key][1])
        return max(floor, tangent_floor(c, w, self.budget))

    def split(self, active: list[tuple[int, int]]) -> tuple[dict[int, float], float]:
        """The exact min-max split of `active` (ascending device ids) and the slowest device's time."""
        budget, need, bits = self.budget, self.need, self.bits
        if len(active) == 1:
            g, m = active[0]
            return {self.devices[g]: budget}, self.alone(g, m)
        if need == 0.0:  # nothing to move: equal shares, each device's compute alone
            return ({self.devices[g]: budget / len(active) for g, _ in active},
                    max(self.compute[g][m] for g, m in active))
        shares: tuple[float, ...] | None = None
        if len(active) == 2:
            (g0, m0), (g1, m1) = active
            shares = pair_split(need, need, need * m0, need * m1, self.compute[g0][m0], self.compute[g1][m1],
                                self.snr[g0][0], self.snr[g1][0], self.snr[g0][1], self.snr[g1][1], budget,
                                dl_pool=self.pool)
        if shares is None:
            b = minmax_split(np.full(len(active), bits), np.array([bits * m for _, m in active]),
                             np.array([self.compute[g][m] for g, m in active]),
                             np.array([self.snr[g][0] for g, _ in active]),
                             np.array([self.snr[g][1] for g, _ in active]), budget, np.ones(len(active), dtype=bool),
                             dl_pool_hz=self.pool)
            shares = tuple(b.tolist())
        slowest = max(self.time(g, m, b)[0] for (g, m), b in zip(active, shares, strict=True))
        return {self.devices[g]: b for (g, _), b in zip(active, shares, strict=True)}, slowest


def solve_one_token(rule: JointRule, slots: OneTokenSlots, bits_per_token: float, budget: float,
                    bs_time_s: float, dl_pool_hz: float = 0.0) -> OneTokenChoice:
    """The exact joint decision for one token (module docstring)."""
    token = _Token(slots, bits_per_token, budget, dl_pool_hz)
    k = len(slots.device)
    total = 0.0
    for w in slots.weight:
        total += w
    guard = rule.rho * total
    candidates = []
    for counts in itertools.product(*(range(n + 1) for n in token.count)):
        keep = token.kept(counts)
        kept_weight, key = 0.0, 0
        for j in range(k):
            if keep[j]:
                kept_weight += slots.weight[j]
                key |= 1 << (k - 1 - j)
        if key == 0 or not kept_weight >= guard:
            continue
        active = [(g, m) for g, m in enumerate(counts) if m > 0]
        bound = optimistic(rule, kept_weight, bs_time_s, token.floor(active))
        if bound != bound:  # nan (a dead link): solve it, never prune on it
            bound = math.inf
        candidates.append((bound, key, kept_weight, active, keep))
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    best, best_key, chosen = math.nan, -1, None
    for bound, key, kept_weight, active, keep in candidates:
        if bound < best:
            break
        shares, slowest = token.split(active)
        layer_s = bs_time_s + slowest
        metric = objective(rule, kept_weight, layer_s)
        if better(metric, key, best, best_key):
            best, best_key, chosen = metric, key, OneTokenChoice(keep, shares, layer_s, metric)
    if chosen is None:  # every metric is nan: the router's top-k
        shares, slowest = token.split([(g, n) for g, n in enumerate(token.count)])
        chosen = OneTokenChoice([True] * k, shares, bs_time_s + slowest,
                                objective(rule, total, bs_time_s + slowest))
    return chosen
