"""The joint policy's exact one-token search (policy.joint_decode) on arrays, for n steps on at most two devices.

Contract: `decide_two_devices(steps, rule)` equals `JointSelectionBandwidth.decide` on each step's LayerState, bit
for bit, for steps whose slots lie on one or two devices and have a nonzero payload (the caller, `JointSelection
Bandwidth.decide_steps`, keeps the others for the per-state path). A step's slots lie on A (the device of slot 0)
and B (the first other device); a candidate keeps the m_A heaviest slots on A and the m_B heaviest on B (equal
weights: the earlier slot), and every (m_A, m_B) is solved, with the arithmetic of joint_decode: kept weight summed
in slot order from 0.0, each device's roofline summed once per kept slot, one device alone on the band, two by the
pair split with the lower device id first (`policy.split_arrays`, memoised per channel key), layer = bs + the
slower device, the choice by joint_search.better. joint_decode prunes with bounds and solves fewer candidates;
those it skips are worse, so the choice is the same. A step whose pair split does not converge for some candidate
is marked `fallback` (the per-state path bisects). Any k; `policy.joint_top2` is the fast version for k = 2.
"""

from __future__ import annotations

import numpy as np

from wdmoe.policy.joint_search import JointRule, objective_array
from wdmoe.policy.split_arrays import pair_split_by_key, scalar_time
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.exactmath import LN2


def _columns(values: np.ndarray) -> list[np.ndarray]:
    """The k columns of an (n, k) array as contiguous (n,) arrays: numpy runs k elementwise operations on (n,)
    arrays far faster than it reduces along a short last axis."""
    return [np.ascontiguousarray(values[:, j]) for j in range(values.shape[1])]


def _b_values(device: list[np.ndarray], *values: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """on_a per slot, and for device and each of `values` the entry of B (the first slot off A; slot 0 if none)."""
    on_a = [col == device[0] for col in device]
    firsts = [cols[0] for cols in (device, *values)]
    for j in range(len(device) - 1, 0, -1):
        off = ~on_a[j]
        firsts = [np.where(off, cols[j], first) for cols, first in zip((device, *values), firsts, strict=True)]
    return on_a, firsts


def beyond_two_devices(steps: OneTokenSteps) -> np.ndarray:
    """(n,) bool: the steps whose slots span three or more devices (solved here: at most two)."""
    device = _columns(steps.slot_device)
    on_a, (dev_b,) = _b_values(device)
    third = np.zeros(steps.size, dtype=bool)
    for col, here in zip(device, on_a, strict=True):
        third |= ~here & (col != dev_b)
    return third


def slot_ranks(device: list[np.ndarray], weight: list[np.ndarray]) -> list[np.ndarray]:
    """Per slot, how many slots of its device come first: heavier, or as heavy and earlier (joint_decode's rank)."""
    k = len(device)
    ranks = []
    for j in range(k):
        rank = np.zeros(device[0].shape[0], dtype=np.int64)
        for i in range(k):
            if i != j:
                first = weight[i] > weight[j] if i > j else weight[i] >= weight[j]
                rank += (device[i] == device[j]) & first
        ranks.append(rank)
    return ranks


def decide_two_devices(steps: OneTokenSteps, rule: JointRule) -> BatchDecision:
    """`JointSelectionBandwidth.decide` on each step (module docstring: at most two devices, a nonzero payload)."""
    n, k = steps.slot_device.shape
    device, weight = _columns(steps.slot_device), _columns(steps.weight)
    roof, dl, ul = _columns(steps.roof_s), _columns(steps.snr_dl_per_hz), _columns(steps.snr_ul_per_hz)
    on_a, (dev_b, roof_b, dl_b, ul_b) = _b_values(device, roof, dl, ul)
    dev_a, roof_a, dl_a, ul_a = device[0], roof[0], dl[0], ul[0]
    rank = slot_ranks(device, weight)
    count_a = np.zeros(n, dtype=np.int64)
    for here in on_a:
        count_a += here
    total = np.zeros(n)
    for w in weight:
        total = total + w
    guard = rule.rho * total
    need, budget, bs = steps.bits_per_token * LN2, steps.bandwidth_hz, steps.bs_time_s
    compute_a, compute_b = [np.zeros(n)], [np.zeros(n)]  # [m]: the roofline summed once per kept slot
    for _ in range(k):
        compute_a.append(compute_a[-1] + roof_a)
        compute_b.append(compute_b[-1] + roof_b)
    a_low = dev_a < dev_b  # the pair split takes the lower device id first
    best, best_key = np.full(n, np.nan), np.full(n, -1, dtype=np.int64)
    best_a, best_b = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    share_a, share_b = np.zeros(n), np.zeros(n)
    top_share_a, top_share_b = np.zeros(n), np.zeros(n)
    fallback = np.zeros(n, dtype=bool)
    for m_a in range(k + 1):
        for m_b in range(k + 1 - m_a):
            if m_a == m_b == 0:
                continue
            rows = np.flatnonzero((m_a <= count_a) & (m_b <= k - count_a))
            if rows.size == 0:
                continue
            limit = [np.where(here.take(rows), m_a, m_b) for here in on_a]
            kept = [r.take(rows) < lim for r, lim in zip(rank, limit, strict=True)]
            kept_weight = np.zeros(rows.size)
            key = np.zeros(rows.size, dtype=np.int64)
            for j in range(k):
                kept_weight = kept_weight + np.where(kept[j], weight[j].take(rows), 0.0)
                key += kept[j].astype(np.int64) << (k - 1 - j)
            nr, br = need.take(rows), budget.take(rows)
            if m_a and m_b:
                low = a_low.take(rows)
                p0, p1 = np.where(low, m_a, m_b).astype(float), np.where(low, m_b, m_a).astype(float)
                ca, cb = compute_a[m_a].take(rows), compute_b[m_b].take(rows)
                da, db, ua, ub = dl_a.take(rows), dl_b.take(rows), ul_a.take(rows), ul_b.take(rows)
                d0, d1 = np.minimum(dev_a.take(rows), dev_b.take(rows)), np.maximum(dev_a.take(rows), dev_b.take(rows))
                width = k + 1
                split_key = ((steps.channel_key.take(rows) * steps.num_devices + d0) * steps.num_devices + d1)
                split_key = (split_key * width + p0.astype(np.int64)) * width + p1.astype(np.int64)
                split = pair_split_by_key(split_key, nr, nr, nr * p0, nr * p1, np.where(low, ca, cb),
                                          np.where(low, cb, ca), np.where(low, da, db), np.where(low, db, da),
                                          np.where(low, ua, ub), np.where(low, ub, ua), br,
                                          dl_pool=steps.dl_psd_pool_hz)
                layer = bs.take(rows) + np.maximum(split.t0, split.t1)
                here_a, here_b = np.where(low, split.b0, split.b1), np.where(low, split.b1, split.b0)
                failed = np.isnan(split.b0)
            else:
                m = max(m_a, m_b)
                comp = (compute_a if m_a else compute_b)[m].take(rows)
                snr_dl, snr_ul = (dl_a, ul_a) if m_a else (dl_b, ul_b)
                t, _ = scalar_time(br, nr, nr * float(m), comp, snr_dl.take(rows), snr_ul.take(rows),
                                   steps.dl_psd_pool_hz)
                layer = bs.take(rows) + t
                here_a, here_b = (br, np.zeros(rows.size)) if m_a else (np.zeros(rows.size), br)
                failed = np.zeros(rows.size, dtype=bool)
            metric = objective_array(rule, kept_weight, layer)
            feasible = kept_weight >= guard.take(rows)
            fallback[rows] |= feasible & failed
            old, old_key = best.take(rows), best_key.take(rows)
            with np.errstate(invalid="ignore"):
                wins = feasible & ~np.isnan(metric) & (np.isnan(old) | (metric > old) | (
                    (metric == old) & (key > old_key)))
            at = rows[wins]
            best[at], best_key[at], best_a[at], best_b[at] = metric[wins], key[wins], m_a, m_b
            share_a[at], share_b[at] = here_a[wins], here_b[wins]
            top = (m_a == count_a.take(rows)) & (m_b == k - count_a.take(rows))
            top_share_a[rows[top]], top_share_b[rows[top]] = here_a[top], here_b[top]
    none = np.isnan(best)  # every metric nan: the router's top-k
    best_a, best_b = np.where(none, count_a, best_a), np.where(none, k - count_a, best_b)
    share_a, share_b = np.where(none, top_share_a, share_a), np.where(none, top_share_b, share_b)
    return _decision(steps, weight, on_a, rank, total, best_a, best_b, share_a, share_b, fallback)


def _decision(steps: OneTokenSteps, weight: list[np.ndarray], on_a: list[np.ndarray], rank: list[np.ndarray],
              total: np.ndarray, best_a: np.ndarray, best_b: np.ndarray, share_a: np.ndarray, share_b: np.ndarray,
              fallback: np.ndarray) -> BatchDecision:
    """The chosen counts as a BatchDecision: kept weights scaled to the top-k total (joint's rule, same order)."""
    n, k = steps.slot_device.shape
    keep = [r < np.where(here, best_a, best_b) for r, here in zip(rank, on_a, strict=True)]
    kept_weight = np.zeros(n)
    count = np.zeros(n)
    for j in range(k):
        kept_weight = kept_weight + np.where(keep[j], weight[j], 0.0)
        count += keep[j]
    out_weight, out_share = np.empty((n, k)), np.empty((n, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k):
            scaled = np.where(kept_weight > 0.0, weight[j] * total / kept_weight, total / count)
            out_weight[:, j] = np.where(keep[j], scaled, 0.0)
            out_share[:, j] = np.where(keep[j], np.where(on_a[j], share_a, share_b), 0.0)
    return BatchDecision(np.stack(keep, axis=1), out_weight, out_share, fallback, steps.slot_device,
                         steps.num_devices)
