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
  share B / n; on arrays when there are more than _ARRAY_FROM vectors). Vectors are solved exactly (one device:
  its time on B; two: policy.bandwidth.pair_split; more: the same Newton step as policy.bandwidth.minmax_split on
  Python floats, stopped when certified within 1e-11 of the optimum by a tangent floor, else minmax_split) in
  decreasing order of the bound, until the bound falls below the best metric. Before a vector of two or more
  devices is solved, up to _SHARP_STEPS Newton steps of its split tighten its time floor (the tangent floor at
  each iterate), and it is dropped once its bound falls below the best; the split then continues from there. The
  bounds are valid (the times are convex in the share), so nothing better is skipped.

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
from wdmoe.policy.joint_search import (
    FLOOR_SLACK,
    JointRule,
    better,
    objective,
    objective_array,
    optimistic,
    tangent_floor,
    tangent_floor_array,
)
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import scalar_time, time_and_inverse_slope

_SPLIT_RTOL, _SPLIT_ITER = 1e-11, 40  # `_Token.newton_split`: certified relative distance to the optimum
_ARRAY_FROM = 32  # count vectors beyond which their bounds are computed on arrays (`_array_candidates`)
_SHARP_STEPS = 3  # Newton steps tried before a split: most candidates that a split would reject fall by then


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
        self._times: dict[tuple[int, int, float], tuple[float, float]] = {}
        self._start: dict[tuple[tuple[int, int], ...], tuple[list[float], float, bool]] = {}  # `_newton`'s state

    def kept(self, counts: tuple[int, ...]) -> list[bool]:
        return [self.rank[j] < counts[g] for j, g in enumerate(self.group)]

    def time(self, g: int, m: int, b: float) -> tuple[float, float]:
        if self.need == 0.0:
            return self.compute[g][m], math.inf
        key = (g, m, b)  # the tangents at B / n and the split's first iterate ask for the same points
        if key not in self._times:
            self._times[key] = _time(b, self.need, self.need * m, self.compute[g][m], *self.snr[g], self.pool)
        return self._times[key]

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

    def _newton(self, active: list[tuple[int, int]], steps: int) -> tuple[list[float], float, bool] | None:
        """Up to `steps` more steps of the min-max split of `active` (bits to move) on Python floats, from where
        the last call for this set stopped: policy.bandwidth's Newton step in x = 1/b (T = sum w t / sum w,
        b <- b / (1 - (t - T) w / b), the shares scaled back onto the band). At every iterate the tangent floor is
        a certified lower bound on the optimum; converged once the slowest device is within _SPLIT_RTOL of it.
        (shares, best lower bound, converged), or None on a dead link (inf times)."""
        key = tuple(active)
        budget, n = self.budget, len(active)
        b, lower, done = self._start.get(key, ([budget / n] * n, -math.inf, False))
        for _ in range(steps):
            if done:
                break
            t, w = [0.0] * n, [0.0] * n
            for i, (g, m) in enumerate(active):
                t[i], w[i] = self.time(g, m, b[i])
            top = max(t)
            if not (math.isfinite(top) and all(0.0 < wi < math.inf for wi in w)):
                return None
            lower = max(lower, tangent_floor([bi + wi * ti for bi, wi, ti in zip(b, w, t, strict=True)], w, budget))
            if top - lower <= _SPLIT_RTOL * top:
                done = True
                break
            target = sum(wi * ti for wi, ti in zip(w, t, strict=True)) / sum(w)
            b = [bi / max(1.0 - (ti - target) * wi / bi, 0.1) for bi, wi, ti in zip(b, w, t, strict=True)]
            scale = budget / sum(b)
            b = [bi * scale for bi in b]
        self._start[key] = (b, lower, done)
        return b, lower, done

    def sharp_floor(self, active: list[tuple[int, int]]) -> float:
        """A tighter lower bound on the min-max time of `active` (two devices or more) on each call: the tangent
        floors of the split's Newton iterates so far (`_newton`, one more step per call), which approach the
        optimum from below, and `floor`'s bound."""
        floor = self.floor(active)
        steps = self._newton(active, 1)
        return floor if steps is None else max(floor, steps[1])

    def newton_split(self, active: list[tuple[int, int]]) -> tuple[float, ...] | None:
        """The min-max split of `active` by `_newton`, optimal to _SPLIT_RTOL (certified); None where it does not
        get there (a dead link: minmax_split then). For 3-8 devices a fraction of minmax_split's numpy costs."""
        steps = self._newton(active, _SPLIT_ITER)
        return None if steps is None or not steps[2] else tuple(steps[0])

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
        if shares is None and len(active) > 2:
            shares = self.newton_split(active)
        if shares is None:
            b = minmax_split(np.full(len(active), bits), np.array([bits * m for _, m in active]),
                             np.array([self.compute[g][m] for g, m in active]),
                             np.array([self.snr[g][0] for g, _ in active]),
                             np.array([self.snr[g][1] for g, _ in active]), budget, np.ones(len(active), dtype=bool),
                             dl_pool_hz=self.pool)
            shares = tuple(b.tolist())
        slowest = max(self.time(g, m, b)[0] for (g, m), b in zip(active, shares, strict=True))
        return {self.devices[g]: b for (g, _), b in zip(active, shares, strict=True)}, slowest


def _list_candidates(rule: JointRule, token: _Token, guard: float,
                     bs_time_s: float) -> list[tuple[float, int, tuple[int, ...]]]:
    """(bound, key, counts) of every feasible count vector, on Python floats (few vectors: top-2, most k = 4)."""
    slots, k = token.slots, len(token.slots.device)
    out = []
    for counts in itertools.product(*(range(n + 1) for n in token.count)):
        keep = token.kept(counts)
        kept_weight, key = 0.0, 0
        for j in range(k):
            if keep[j]:
                kept_weight += slots.weight[j]
                key |= 1 << (k - 1 - j)
        if key == 0 or not kept_weight >= guard:
            continue
        bound = optimistic(rule, kept_weight, bs_time_s, token.floor([(g, m) for g, m in enumerate(counts) if m > 0]))
        out.append((math.inf if bound != bound else bound, key, counts))  # nan (a dead link): never pruned
    return out


def _array_candidates(rule: JointRule, token: _Token, guard: float,
                      bs_time_s: float) -> list[tuple[float, int, tuple[int, ...]]]:
    """`_list_candidates`' bounds for all count vectors at once on arrays (many vectors: k = 8 has up to 255).
    The kept weight is summed in another order here, so the guard keeps vectors within 1e-12 of it (the search
    checks the exact sum) and the bound's 1e-12 margin covers the rest; the floors are the same bounds (the
    device alone on the band, the tangents at the equal share) from radio.rate's array form."""
    slots, k, n_dev = token.slots, len(token.slots.device), len(token.devices)
    counts = np.indices([n + 1 for n in token.count]).reshape(n_dev, -1).T  # (N, G)
    keep = np.array(token.rank)[None, :] < counts[:, token.group]  # (N, k)
    key = keep @ (np.int64(1) << np.arange(k - 1, -1, -1, dtype=np.int64))
    weight = keep @ np.array(slots.weight)
    total = float(np.sum(slots.weight))
    ok = np.flatnonzero((key != 0) & (weight >= guard - 1e-12 * abs(total)))
    counts, key, weight = counts[ok], key[ok], weight[ok]
    top = max(token.count)
    m = np.arange(top + 1)[None, :, None]  # (1, M, 1): slots kept on a device
    n = np.arange(1, n_dev + 1)[None, None, :]  # (1, 1, G): devices active
    compute = np.array([sums + [sums[-1]] * (top + 1 - len(sums)) for sums in token.compute])[:, :, None]
    snr_dl = np.array([s[0] for s in token.snr])[:, None, None]
    snr_ul = np.array([s[1] for s in token.snr])[:, None, None]
    on = counts > 0
    rows = np.arange(n_dev)[None, :]
    if token.need == 0.0:
        floor = np.where(on, compute[:, :, 0][rows, counts], -np.inf).max(axis=1)
    else:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t0, w0 = time_and_inverse_slope(token.budget / n + 0.0 * m, token.need + 0.0 * m, token.need * m,
                                            compute, snr_dl, snr_ul, token.pool)  # (G, M, G)
        alone = t0[:, :, 0]  # n = 1: the whole band
        active = on.sum(axis=1) - 1  # (N,) index of n
        c_table = t0 * w0 + token.budget / n
        c = np.where(on, c_table[rows, counts, active[:, None]], 0.0)
        w = np.where(on, w0[rows, counts, active[:, None]], 0.0)
        w = np.where(np.isfinite(w), w, 0.0)
        lower = tangent_floor_array(c, w, token.budget)
        floor = np.maximum(np.where(on, alone[rows, counts], -np.inf).max(axis=1), lower)
    bound = objective_array(rule, weight * (1.0 + 1e-12), bs_time_s + np.maximum(floor, 0.0) * (1.0 - FLOOR_SLACK))
    bound = np.where(np.isnan(bound), np.inf, bound)
    return list(zip(bound.tolist(), key.tolist(), map(tuple, counts.tolist()), strict=True))


def _pruned(rule: JointRule, token: _Token, active: list[tuple[int, int]], kept_weight: float, bs_time_s: float,
            best: float) -> bool:
    """Does a sharper floor (`_Token.sharp_floor`, up to _SHARP_STEPS Newton steps, each cheaper than a split and
    each the start of the split's next) put this candidate's bound below the best metric?"""
    return any(optimistic(rule, kept_weight, bs_time_s, token.sharp_floor(active)) < best
               for _ in range(_SHARP_STEPS))


def solve_one_token(rule: JointRule, slots: OneTokenSlots, bits_per_token: float, budget: float,
                    bs_time_s: float, dl_pool_hz: float = 0.0) -> OneTokenChoice:
    """The exact joint decision for one token (module docstring)."""
    token = _Token(slots, bits_per_token, budget, dl_pool_hz)
    k = len(slots.device)
    total = 0.0
    for w in slots.weight:
        total += w
    guard = rule.rho * total
    vectors = math.prod(n + 1 for n in token.count)
    candidates = (_array_candidates if vectors > _ARRAY_FROM else _list_candidates)(rule, token, guard, bs_time_s)
    candidates.sort(key=lambda c: (c[0], c[1]), reverse=True)
    best, best_key, chosen = math.nan, -1, None
    for bound, key, counts in candidates:
        if bound < best:
            break
        keep = token.kept(counts)
        kept_weight = 0.0
        for j in range(k):
            if keep[j]:
                kept_weight += slots.weight[j]
        if not kept_weight >= guard:  # the array path's margin
            continue
        active = [(g, m) for g, m in enumerate(counts) if m > 0]
        if token.need > 0.0 and len(active) >= 2 and best == best and _pruned(rule, token, active, kept_weight,
                                                                               bs_time_s, best):
            continue
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
