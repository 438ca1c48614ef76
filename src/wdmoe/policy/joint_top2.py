"""The joint policy's batched exact search for top-2 (k = 2, Mixtral's case) by direct column arithmetic.

Contract: `decide_top2` returns what `joint_pairs.decide_two_devices`, the generic batched form, returns on the same
steps (keep, weight, shares and fallback bit for bit; tests/unit/policy/test_joint_top2.py), so it equals
`JointSelectionBandwidth.decide` on each step (steps on at most two devices with a nonzero payload), without the
generic loop over count vectors. With two slots there are three candidates:

- both slots: on one device, its time with 2 pairs on the whole band; on two, the memoised pair split (lower device
  id first, keyed as the generic form keys it);
- slot 0 alone, slot 1 alone, each on its device with the whole band, where its weight meets the guard
  (w_j >= rho * total); on one device only the heavier slot (slot 0 on a tie), as the generic ranks them.

The choice is joint_search.better's: the higher metric, on a tie the higher key (both 3, slot 0 alone 2, slot 1
alone 1); nan never wins, and when every metric is nan the router's top-2 stays. `fallback` marks the steps whose
pair split does not converge.
"""

from __future__ import annotations

import numpy as np

from wdmoe.policy.joint_search import JointRule, objective_array
from wdmoe.policy.split_arrays import pair_split_by_key, scalar_time
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.exactmath import LN2


def _wins(feasible: np.ndarray, metric: np.ndarray, key: int, best: np.ndarray, best_key: np.ndarray) -> np.ndarray:
    """joint_search.better, elementwise."""
    with np.errstate(invalid="ignore"):
        return feasible & ~np.isnan(metric) & (np.isnan(best) | (metric > best) | ((metric == best) & (key > best_key)))


def decide_top2(steps: OneTokenSteps, rule: JointRule) -> BatchDecision:
    """`joint_pairs.decide_two_devices` for k = 2 (module docstring); steps with a nonzero payload."""
    n = steps.slot_device.shape[0]
    d0, d1 = (np.ascontiguousarray(steps.slot_device[:, j]) for j in range(2))
    w0, w1 = (np.ascontiguousarray(steps.weight[:, j]) for j in range(2))
    r0, r1 = (np.ascontiguousarray(steps.roof_s[:, j]) for j in range(2))
    dl0, dl1 = (np.ascontiguousarray(steps.snr_dl_per_hz[:, j]) for j in range(2))
    ul0, ul1 = (np.ascontiguousarray(steps.snr_ul_per_hz[:, j]) for j in range(2))
    budget, bs = steps.bandwidth_hz, steps.bs_time_s
    need, pool = steps.bits_per_token * LN2, steps.dl_psd_pool_hz
    total = w0 + 0.0  # the generic left-to-right sum from 0.0
    total += w1
    guard = rule.rho * total
    same = d0 == d1

    # both slots: one device (2 pairs, the whole band) or two (the pair split, the lower device id first)
    layer = np.empty(n)
    share0, share1 = budget.copy(), budget.copy()  # each slot's device's share when both are kept
    failed = np.zeros(n, dtype=bool)
    i = np.flatnonzero(~same)
    if i.size:
        every = i.size == n

        def sub(x: np.ndarray) -> np.ndarray:
            return x if every else x.take(i)

        first = sub(d0) < sub(d1)  # slot 0 on the lower id
        a0, a1, c0, c1, u0, u1 = (sub(x) for x in (dl0, dl1, r0, r1, ul0, ul1))
        key = (sub(steps.channel_key) * steps.num_devices + np.minimum(sub(d0), sub(d1))) * steps.num_devices
        key += np.maximum(sub(d0), sub(d1))
        key *= 9
        key += 4  # counts (1, 1) in the generic key's base k + 1 = 3
        ni = sub(need)
        split = pair_split_by_key(key, ni, ni, ni * 1.0, ni * 1.0, np.where(first, c0, c1), np.where(first, c1, c0),
                                   np.where(first, a0, a1), np.where(first, a1, a0), np.where(first, u0, u1),
                                   np.where(first, u1, u0), sub(budget), dl_pool=pool)
        both_layer = sub(bs) + np.maximum(split.t0, split.t1)
        s0, s1 = np.where(first, split.b0, split.b1), np.where(first, split.b1, split.b0)
        if every:
            layer, share0, share1, failed = both_layer, s0, s1, np.isnan(split.b0)
        else:
            layer[i], share0[i], share1[i], failed[i] = both_layer, s0, s1, np.isnan(split.b0)
    failed &= total >= guard  # the generic form marks a feasible candidate's failed split
    one = np.flatnonzero(same)
    if one.size == n:
        layer = bs + scalar_time(budget, need, need * 2.0, r0 + r0, dl0, ul0, pool)[0]
    elif one.size:
        nj = need.take(one)
        r = r0.take(one)
        layer[one] = bs.take(one) + scalar_time(budget.take(one), nj, nj * 2.0, r + r, dl0.take(one),
                                                ul0.take(one), pool)[0]
    best = objective_array(rule, total, layer)
    best_key = np.full(n, 3, dtype=np.int64)

    # one slot alone on its device with the whole band (on a shared device, only the heavier: slot 0 on a tie)
    alone0 = objective_array(rule, w0 + 0.0, bs + scalar_time(budget, need, need * 1.0, r0 + 0.0, dl0, ul0, pool)[0])
    alone1 = objective_array(rule, w1 + 0.0, bs + scalar_time(budget, need, need * 1.0, r1 + 0.0, dl1, ul1, pool)[0])
    take0 = _wins((w0 >= guard) & (~same | (w0 >= w1)), alone0, 2, best, best_key)
    best, best_key = np.where(take0, alone0, best), np.where(take0, 2, best_key)
    take1 = _wins((w1 >= guard) & (~same | (w1 > w0)), alone1, 1, best, best_key)
    take0 &= ~take1
    keep0, keep1 = ~take1, ~take0

    kept_weight = np.where(take0, w0, np.where(take1, w1, total))
    with np.errstate(divide="ignore", invalid="ignore"):
        positive = kept_weight > 0.0
        out_weight = np.empty((n, 2))
        out_weight[:, 0] = np.where(keep0, np.where(positive, w0 * total / kept_weight,
                                                    total / np.where(take0, 1.0, 2.0)), 0.0)
        out_weight[:, 1] = np.where(keep1, np.where(positive, w1 * total / kept_weight,
                                                    total / np.where(take1, 1.0, 2.0)), 0.0)
    out_share = np.empty((n, 2))
    out_share[:, 0] = np.where(keep0, np.where(take0, budget, share0), 0.0)
    out_share[:, 1] = np.where(keep1, np.where(take1, budget, share1), 0.0)
    keep = np.empty((n, 2), dtype=bool)
    keep[:, 0], keep[:, 1] = keep0, keep1
    return BatchDecision(keep, out_weight, out_share, failed, steps.slot_device, steps.num_devices)
