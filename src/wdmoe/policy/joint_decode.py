"""The joint policy's exact search for one token (decode), on Python floats: the best keep mask and its split.

Contract: `solve_one_token(rule, slots, ...)` returns the keep mask of the token's k routed slots (k up to 8 and
beyond) that maximises the joint objective (policy.joint_search.objective) over every mask that keeps >= 1 slot and
kept weight >= rho x the top-k weight, with the exact min-max split of that mask, ties broken by
joint_search.better. Exact, not a heuristic:

- Slots on one device cost the same (one downlink of the token, one uplink and one roofline per kept slot), so a
  mask matters only through m_d, the number of slots kept on each device d, and for given counts the best mask keeps
  each device's m_d heaviest slots (equal weights: the earlier slot). The search runs over the count vectors
  (at most 2^k - 1 of them, 255 for k = 8 on 8 devices), never over worse masks with the same counts.
- A best-first search with bounds of rising cost, each an upper bound on a vector's metric from its kept weight
  and a lower bound on its min-max time (all valid: the times are convex and decreasing in the share):
  0. for every vector at once (Python floats for a few, arrays beyond _ARRAY_FROM): the slowest active device
     alone on the whole band (k transcendental evaluations in all); one-device vectors are exact by it and give
     the first incumbent;
  1. joint_search.tangent_floor with tangents at the equal share B / n (shared by vectors with n devices);
  2. (three devices or more) tangents at `_Token.model_shares`, shares that nearly equalise the times by a model
     built from stage 1's evaluations (no transcendental): nearly tight, and the split's start;
  3. (three devices or more) up to _SHARP_STEPS Newton steps of the split, the tangent floor at each iterate;
  then the exact solve (one device: its time on B; two: policy.bandwidth.pair_split; more: the same Newton step
  as policy.bandwidth.minmax_split on Python floats, stopped when certified within 1e-11 of the optimum by a
  tangent floor, else minmax_split). A vector is refined or solved only while its current bound is the highest
  of all vectors' and at least the incumbent's metric, so nothing better is skipped and equal metrics are
  still compared by key.

The arithmetic of each candidate (kept weight summed in slot order from 0.0, the roofline sum repeated per kept slot,
the pair split with the lower device id first, layer = bs + max of the times) is what policy.joint_pairs does on
arrays for steps on at most two devices, so the batched form decides the same bits.
"""

from __future__ import annotations

import functools
import heapq
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
)
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import scalar_time

_SPLIT_RTOL, _SPLIT_ITER = 1e-11, 40  # `_Token.newton_split`: certified relative distance to the optimum
_ARRAY_FROM = 32  # count vectors beyond which `_cheap_candidates` works on arrays
_MODEL_STEPS = 6  # `_Token.model_shares`' Newton steps on its model (no transcendental: cheap)
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
        ranked: list[list[int]] = [[] for _ in self.devices]  # each device's slots, heaviest first
        for j in sorted(range(k), key=lambda j: self.rank[j]):
            ranked[self.group[j]].append(j)
        self.ranked_weight = [[w[j] for j in group] for group in ranked]
        self.ranked_bits = [[1 << (k - 1 - j) for j in group] for group in ranked]
        first = [slots.device.index(d) for d in self.devices]
        self.snr = [(slots.snr_dl[j], slots.snr_ul[j]) for j in first]
        self.compute: list[list[float]] = []
        for g, j in enumerate(first):
            sums, acc = [0.0], 0.0
            for _ in range(self.count[g]):
                acc += slots.roof_s[j]
                sums.append(acc)
            self.compute.append(sums)
        self._times: dict[tuple[int, int, float], tuple[float, float]] = {}
        self._start: dict[tuple[tuple[int, int], ...], tuple[list[float], float, bool]] = {}  # `_newton`'s state
        self._model: dict[tuple[tuple[int, int], ...], list[float]] = {}  # `model_shares`

    def kept(self, counts: tuple[int, ...]) -> list[bool]:
        return [self.rank[j] < counts[g] for j, g in enumerate(self.group)]

    def time(self, g: int, m: int, b: float) -> tuple[float, float]:
        key = (g, m, b)  # the tangents at B / n and the split's first iterate ask for the same points
        hit = self._times.get(key)
        if hit is None:
            if self.need == 0.0:
                return self.compute[g][m], math.inf
            hit = self._times[key] = _time(b, self.need, self.need * m, self.compute[g][m], *self.snr[g], self.pool)
        return hit

    def alone(self, g: int, m: int) -> float:
        """Device g's time with m slots on the whole band (exact for a one-device vector, a floor for others)."""
        return self.time(g, m, self.budget)[0]

    def floor(self, active: list[tuple[int, int]], shares: list[float] | None = None) -> float:
        """A lower bound on the min-max time of the (device, count) pairs `active` (module docstring): the slowest
        device alone on the band, and the tangent floor with tangents at `shares` (equal shares B / n if None:
        cached across count vectors with as many devices)."""
        floor = -math.inf
        for g, m in active:
            alone = self.time(g, m, self.budget)[0]
            if alone > floor:
                floor = alone
        if self.need == 0.0:
            return floor
        c, w = [], []
        for (g, m), b0 in zip(active, shares or [self.budget / len(active)] * len(active), strict=True):
            t0, w0 = self.time(g, m, b0)
            c.append(b0 + w0 * t0)
            w.append(w0)
        return max(floor, tangent_floor(c, w, self.budget))

    def model_shares(self, active: list[tuple[int, int]]) -> list[float]:
        """Shares that about equalise the devices' times, from their evaluations at the equal share B / n (the
        stage-1 tangents, cached): each time as alpha + gamma / b (its tangent in 1/b there; transfer times are
        nearly linear in 1/b), the common time T of sum gamma / (T - alpha) = B by _MODEL_STEPS Newton steps from
        below (the sum is convex and decreasing in T), b = gamma / (T - alpha) scaled onto the band. Any shares
        give valid tangents; these make the floor nearly tight and start the split near its optimum. Equal
        shares where the model does not apply (a dead link, a flat time)."""
        key = tuple(active)
        shares = self._model.get(key)
        if shares is not None:
            return shares
        budget, n = self.budget, len(active)
        shares = self._model[key] = [budget / n] * n
        alpha, gamma, b0 = [], [], budget / n
        for g, m in active:
            t0, w0 = self.time(g, m, b0)
            if not (budget > 0.0 and t0 < math.inf and 0.0 < w0 < math.inf):
                return shares
            alpha.append(t0 - b0 / w0)
            gamma.append(b0 * b0 / w0)
        top = max(a + y / budget for a, y in zip(alpha, gamma, strict=True))
        try:  # a zero gap (gamma / B lost against alpha's size): keep the equal shares
            for _ in range(_MODEL_STEPS):
                f, slope = -budget, 0.0
                for a, y in zip(alpha, gamma, strict=True):
                    gap = top - a
                    f += y / gap
                    slope += y / (gap * gap)
                step = top + f / slope
                if not step > top:
                    break
                top = step
            model = [y / (top - a) for a, y in zip(alpha, gamma, strict=True)]
            scale = budget / sum(model)
        except ZeroDivisionError:
            return shares
        if math.isfinite(scale) and scale > 0.0 and all(b > 0.0 for b in model):
            shares = self._model[key] = [b * scale for b in model]
        return shares

    def _newton(self, active: list[tuple[int, int]], steps: int) -> tuple[list[float], float, bool] | None:
        """Up to `steps` more steps of the min-max split of `active` (bits to move) on Python floats, from where
        the last call for this set stopped: policy.bandwidth's Newton step in x = 1/b (T = sum w t / sum w,
        b <- b / (1 - (t - T) w / b), the shares scaled back onto the band). At every iterate the tangent floor is
        a certified lower bound on the optimum; converged once the slowest device is within _SPLIT_RTOL of it.
        (shares, best lower bound, converged), or None on a dead link (inf times)."""
        key = tuple(active)
        budget, time = self.budget, self.time
        start = self._start.get(key)
        b, lower, done = (self.model_shares(active), -math.inf, False) if start is None else start
        for _ in range(steps):
            if done:
                break
            t, w, c = [], [], []
            top = sum_w = sum_wt = 0.0
            for (g, m), bi in zip(active, b, strict=True):
                ti, wi = time(g, m, bi)
                if not (ti < math.inf and 0.0 < wi < math.inf):
                    return None
                if ti > top:
                    top = ti
                t.append(ti)
                w.append(wi)
                c.append(bi + wi * ti)
                sum_w += wi
                sum_wt += wi * ti
            lower = max(lower, tangent_floor(c, w, budget))
            if top - lower <= _SPLIT_RTOL * top:
                done = True
                break
            target = sum_wt / sum_w
            b = [bi / max(1.0 - (ti - target) * wi / bi, 0.1) for bi, wi, ti in zip(b, w, t, strict=True)]
            scale = budget / sum(b)
            b = [bi * scale for bi in b]
        self._start[key] = (b, lower, done)
        return b, lower, done

    def sharp_floor(self, active: list[tuple[int, int]]) -> float:
        """A lower bound on the min-max time of `active` (two devices or more), tighter on each call: the best
        tangent floor of the split's Newton iterates so far (`_newton`, one more step per call), which approach
        the optimum from below (-inf on a dead link). The search takes it once `floor`'s bound did not prune."""
        steps = self._newton(active, 1)
        return -math.inf if steps is None else steps[1]

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


@dataclass(frozen=True)
class _Vectors:
    """Every count vector of devices holding count[g] slots each (itertools.product order, the last device
    fastest): as tuples, and as flat indices into a (G, max count + 1) table of per-device values."""

    counts: list[tuple[int, ...]]
    flat: np.ndarray  # (N, G)


@functools.lru_cache(maxsize=512)
def _count_vectors(count: tuple[int, ...]) -> _Vectors:
    """The count vectors of a shape, shared between calls (read-only)."""
    grid = np.indices([n + 1 for n in count]).reshape(len(count), -1).T  # (N, G)
    flat = grid + (max(count) + 1) * np.arange(len(count))[None, :]
    flat.flags.writeable = False
    return _Vectors(list(map(tuple, grid.tolist())), flat)


def _cheap_candidates(rule: JointRule, token: _Token, guard: float,
                      bs_time_s: float) -> list[tuple[float, int, tuple[int, ...]]]:
    """(bound, key, counts) of every count vector whose kept weight may reach the guard, the highest bound first
    (then the higher key). The bound is the cheap one: the slowest active device alone on the whole band (k
    transcendental evaluations for all vectors); the kept weight is summed per device here (another order than
    the slots': the guard keeps vectors within 1e-12 of it and the search checks the exact sum). Python floats
    for a few vectors, arrays beyond _ARRAY_FROM."""
    total = 0.0
    for w in token.slots.weight:
        total += w
    margin = guard - 1e-12 * abs(total)
    options = []  # per device: (count, kept weight, key bits, time alone) of each count, 0 first
    for g, (weights, bits) in enumerate(zip(token.ranked_weight, token.ranked_bits, strict=True)):
        row, acc_w, acc_key = [(0, 0.0, 0, 0.0)], 0.0, 0
        for m, (w, bit) in enumerate(zip(weights, bits, strict=True), start=1):
            acc_w += w
            acc_key += bit
            row.append((m, acc_w, acc_key, token.alone(g, m)))
        options.append(row)
    if math.prod(len(row) for row in options) > _ARRAY_FROM:
        return _cheap_array(rule, options, margin, bs_time_s)
    out = []
    for combo in itertools.product(*options):
        weight, key, floor = 0.0, 0, 0.0
        for _, w, bit, alone in combo:
            weight += w
            key += bit
            if alone > floor:
                floor = alone
        if key == 0 or not weight >= margin:
            continue
        bound = optimistic(rule, weight, bs_time_s, floor)
        out.append((math.inf if bound != bound else bound, key, tuple(c[0] for c in combo)))
    out.sort(reverse=True)
    return out


def _cheap_array(rule: JointRule, options: list[list[tuple[int, float, int, float]]], margin: float,
                 bs_time_s: float) -> list[tuple[float, int, tuple[int, ...]]]:
    """`_cheap_candidates` on arrays (many vectors: k = 8 has up to 255)."""
    top = max(len(row) for row in options)
    pad = [(0, 0.0, 0, 0.0)] * top
    table = [(row + pad)[:top] for row in options]
    weight_of = np.array([w for row in table for _, w, _, _ in row])
    key_of = np.array([bit for row in table for _, _, bit, _ in row], dtype=np.int64)
    alone_of = np.array([alone for row in table for _, _, _, alone in row])
    vectors = _count_vectors(tuple(len(row) - 1 for row in options))
    weight = weight_of.take(vectors.flat).sum(axis=1)
    key = key_of.take(vectors.flat).sum(axis=1)  # disjoint bits: the sum is the or
    ok = np.flatnonzero((key != 0) & (weight >= margin))
    floor = alone_of.take(vectors.flat[ok]).max(axis=1)
    bound = objective_array(rule, weight[ok] * (1.0 + 1e-12), bs_time_s + floor * (1.0 - FLOOR_SLACK))
    bound[np.isnan(bound)] = np.inf  # a dead link: never pruned
    order = np.lexsort((key[ok], bound))[::-1]
    counts = vectors.counts
    return [(b, k, counts[i]) for b, k, i in zip(bound[order].tolist(), key[ok][order].tolist(),
                                                  ok[order].tolist(), strict=True)]


def _pruned(rule: JointRule, token: _Token, active: list[tuple[int, int]], kept_weight: float, bs_time_s: float,
            best: float) -> bool:
    """Does a sharper floor (`_Token.sharp_floor`, up to _SHARP_STEPS Newton steps, each cheaper than a split and
    each the start of the split's next) put this candidate's bound below the best metric?"""
    return any(optimistic(rule, kept_weight, bs_time_s, token.sharp_floor(active)) < best
               for _ in range(_SHARP_STEPS))


def _no_nan(bound: float) -> float:
    """A bound of nan (a dead link) never prunes: inf."""
    return math.inf if bound != bound else bound


def _kept_weight(token: _Token, counts: tuple[int, ...]) -> float:
    """The kept weight of a count vector summed in slot order from 0.0 (policy.joint_pairs' order)."""
    kept_weight = 0.0
    for w, kept in zip(token.slots.weight, token.kept(counts), strict=True):
        if kept:
            kept_weight += w
    return kept_weight


def solve_one_token(rule: JointRule, slots: OneTokenSlots, bits_per_token: float, budget: float,
                    bs_time_s: float, dl_pool_hz: float = 0.0) -> OneTokenChoice:
    """The exact joint decision for one token (module docstring)."""
    token = _Token(slots, bits_per_token, budget, dl_pool_hz)
    k = len(slots.device)
    total = 0.0
    for w in slots.weight:
        total += w
    guard = rule.rho * total
    cheap = _cheap_candidates(rule, token, guard, bs_time_s)
    refined: list[tuple[float, int, int, tuple[int, ...], float]] = []  # (-bound, -key, stage, counts, kept)
    best, best_key, chosen = math.nan, -1, None
    for _, key, counts in cheap:  # one device: exact already (alone on the band), the first incumbent
        if sum(1 for m in counts if m > 0) == 1:
            kept_weight = _kept_weight(token, counts)
            if kept_weight >= guard:
                g = next(g for g, m in enumerate(counts) if m > 0)
                layer_s = bs_time_s + token.alone(g, counts[g])
                metric = objective(rule, kept_weight, layer_s)
                if better(metric, key, best, best_key):
                    best, best_key = metric, key
                    chosen = OneTokenChoice(token.kept(counts), {token.devices[g]: budget}, layer_s, metric)
    cheap = [c for c in cheap if sum(1 for m in c[2] if m > 0) > 1]
    i, n = 0, len(cheap)
    while i < n or refined:
        next_cheap = cheap[i][0] if i < n else -math.inf
        next_refined = -refined[0][0] if refined else -math.inf
        if max(next_cheap, next_refined) < best:
            break
        if i < n and next_cheap >= next_refined:  # stage 1: the tangent floor at equal shares
            _, key, counts = cheap[i]
            i += 1
            kept_weight = _kept_weight(token, counts)
            if not kept_weight >= guard:  # the per-device sum's margin
                continue
            active = [(g, m) for g, m in enumerate(counts) if m > 0]
            bound = optimistic(rule, kept_weight, bs_time_s, token.floor(active))
            if not bound < best:
                heapq.heappush(refined, (-_no_nan(bound), -key, 1, counts, kept_weight))
            continue
        _, neg_key, stage, counts, kept_weight = heapq.heappop(refined)
        key = -neg_key
        active = [(g, m) for g, m in enumerate(counts) if m > 0]
        if stage == 1 and token.need > 0.0 and len(active) >= 3:  # stage 2: tangents at the model's shares
            bound = optimistic(rule, kept_weight, bs_time_s, token.floor(active, token.model_shares(active)))
            if not bound < best:
                heapq.heappush(refined, (-_no_nan(bound), neg_key, 2, counts, kept_weight))
            continue
        if token.need > 0.0 and len(active) >= 3 and best == best and _pruned(rule, token, active, kept_weight,
                                                                               bs_time_s, best):
            continue
        shares, slowest = token.split(active)
        layer_s = bs_time_s + slowest
        metric = objective(rule, kept_weight, layer_s)
        if better(metric, key, best, best_key):
            best, best_key, chosen = metric, key, OneTokenChoice(token.kept(counts), shares, layer_s, metric)
    if chosen is None:  # every metric is nan: the router's top-k
        shares, slowest = token.split([(g, n) for g, n in enumerate(token.count)])
        chosen = OneTokenChoice([True] * k, shares, bs_time_s + slowest,
                                objective(rule, total, bs_time_s + slowest))
    return chosen
