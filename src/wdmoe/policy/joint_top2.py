"""The joint policy's batched rounds for top-2 (k = 2, Mixtral's case) by direct column arithmetic.

Contract: `decide_top2` equals `JointSelectionBandwidth.decide` on each step's LayerState (steps on at most two
devices, with a nonzero payload): it returns what `joint_rounds.decide_rounds`, the generic batched form, returns
on the same steps (keep, weight, shares and fallback bit for bit; tests/unit/policy/test_joint_top2.py), without
its generic round machinery. With two slots the rounds reduce to:

1. the top-2 point: both slots on one device (one time, 2 pairs, the band all there) or on two (the memoised
   pair split, lower device id first, as the generic path keys it);
2. one selection round, the only one that can run: a step runs when a slot may be dropped under the guard
   (kept - w_j >= rho * total); the slot dropped is the first minimum of w_j / max(mu_d t_d / pairs_d, 1e-300)
   over the offered slots (np.argmin's rule: a nan score wins, the first of two); the trial keeps the other
   slot alone on its device with the whole band (the generic evaluation's device, snr and roofline choice);
3. accept where the trial's metric is higher. One slot left, so no second round: tol never matters.

The generic path also re-evaluates the top-2 point as the trial of steps that do not run (and re-solves their
pair split); those values are never used, so they are not computed here. A trial keeps one device, so it never
fails: `fallback` is the top-2 point's unconverged split. Callers need policy.max_iter >= 1 (0 means no round).
"""

from __future__ import annotations

import numpy as np

from wdmoe.policy.joint_rounds import JointRule
from wdmoe.policy.split_arrays import pair_split_by_key, scalar_time
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.exactmath import LN2


def _metric(policy: JointRule, kept_weight: np.ndarray, layer_s: np.ndarray) -> np.ndarray:
    if policy.form == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(layer_s > 0.0, kept_weight / layer_s, np.inf)
    with np.errstate(invalid="ignore"):  # lam 0 times an infinite time (a dead link)
        return kept_weight - policy.lam * layer_s


def decide_top2(steps: OneTokenSteps, policy: JointRule) -> BatchDecision:
    """`joint_rounds.decide_rounds` for k = 2 (module docstring); steps with a nonzero payload."""
    n = steps.slot_device.shape[0]
    d0, d1 = (np.ascontiguousarray(steps.slot_device[:, j]) for j in range(2))
    w0, w1 = (np.ascontiguousarray(steps.weight[:, j]) for j in range(2))
    r0, r1 = (np.ascontiguousarray(steps.roof_s[:, j]) for j in range(2))
    dl0, dl1 = (np.ascontiguousarray(steps.snr_dl_per_hz[:, j]) for j in range(2))
    ul0, ul1 = (np.ascontiguousarray(steps.snr_ul_per_hz[:, j]) for j in range(2))
    budget, bs = steps.bandwidth_hz, steps.bs_time_s
    need = steps.bits_per_token * LN2
    total = w0 + 0.0  # the generic left-to-right sum from 0.0
    total += w1
    same = d0 == d1

    # 1. the top-2 point: dev0 the lower device id (the only one when both slots share it)
    dev0 = np.minimum(d0, d1)
    share0, share1 = budget.copy(), np.zeros(n)
    t0, inv0, t1, inv1 = np.empty(n), np.empty(n), np.full(n, -np.inf), np.zeros(n)
    failed = np.zeros(n, dtype=bool)
    i = np.flatnonzero(~same)
    if i.size:
        every = i.size == n  # no take and put (top-2 on distinct devices: every step, with one expert per device)

        def sub(x: np.ndarray) -> np.ndarray:
            return x if every else x.take(i)

        first = sub(d0) < sub(d1)  # slot 0 on the lower id
        a0, a1, c0, c1, u0, u1 = (sub(x) for x in (dl0, dl1, r0, r1, ul0, ul1))
        key = (sub(steps.channel_key) * steps.num_devices + sub(dev0)) * steps.num_devices
        key += np.maximum(sub(d0), sub(d1))
        key *= 9
        key += 4  # (pairs 1, 1) in the generic key's base k + 1 = 3
        ni = sub(need)
        split = pair_split_by_key(key, ni, ni, ni * 1.0, ni * 1.0, np.where(first, c0, c1), np.where(first, c1, c0),
                                   np.where(first, a0, a1), np.where(first, a1, a0), np.where(first, u0, u1),
                                   np.where(first, u1, u0), sub(budget), dl_pool=steps.dl_psd_pool_hz)
        if every:
            share0, share1, t0, inv0, t1, inv1 = (split.b0, split.b1, split.t0, split.inv0, split.t1, split.inv1)
            failed = np.isnan(split.b0)
        else:
            share0[i], share1[i], t0[i], inv0[i], t1[i], inv1[i] = (split.b0, split.b1, split.t0, split.inv0,
                                                                    split.t1, split.inv1)
            failed[i] = np.isnan(split.b0)
    one = np.flatnonzero(same)
    if one.size == n:
        t0, inv0 = scalar_time(budget, need, need * 2.0, r0 + r1, dl0, ul0, steps.dl_psd_pool_hz)
    elif one.size:
        nj = need.take(one)
        t0[one], inv0[one] = scalar_time(budget.take(one), nj, nj * 2.0, r0.take(one) + r1.take(one), dl0.take(one),
                                         ul0.take(one), steps.dl_psd_pool_hz)
    with np.errstate(divide="ignore", invalid="ignore"):
        total_inverse = np.where(same, inv0, inv0 + inv1)
        cost0 = inv0 / total_inverse * t0 / np.where(same, 2.0, 1.0)
        cost1 = inv1 / total_inverse * t1
    metric = _metric(policy, total, bs + np.maximum(t0, t1))

    # 2. the one selection round
    guard = policy.rho * total
    offer0, offer1 = total - w0 >= guard, total - w1 >= guard
    running = offer0 | offer1
    accept = np.zeros(n, dtype=bool)
    drop1 = accept  # drop slot 1 (else slot 0); read only where accepted
    if policy.max_iter >= 1 and running.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            s0 = np.where(offer0, w0 / np.maximum(np.where(d0 == dev0, cost0, cost1), 1e-300), np.inf)
            s1 = np.where(offer1, w1 / np.maximum(np.where(d1 == dev0, cost0, cost1), 1e-300), np.inf)
        drop1 = s1 < s0
        nan0, nan1 = np.isnan(s0), np.isnan(s1)
        if nan0.any() or nan1.any():  # np.argmin: the first nan
            drop1 = (drop1 | nan1) & ~nan0
        other = drop1 | same  # the kept slot's link: slot 0's where it is kept or on slot 0's device
        trial_weight = np.where(drop1, w0, w1)
        t, _ = scalar_time(budget, need, need * 1.0, np.where(drop1, r0, r1), np.where(other, dl0, dl1),
                           np.where(other, ul0, ul1), steps.dl_psd_pool_hz)
        accept = running & (_metric(policy, trial_weight, bs + t) > metric)

    # 3. the decision: the top-2 point's shares where not accepted, the whole band on the kept slot where accepted
    keep0, keep1 = ~accept | drop1, ~accept | ~drop1
    kept_weight = np.where(accept, np.where(drop1, w0, w1), total)
    count = np.where(accept, 1.0, 2.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = total / count
        positive = kept_weight > 0.0
        out_weight = np.empty((n, 2))
        out_weight[:, 0] = np.where(keep0, np.where(positive, w0 * total / kept_weight, low), 0.0)
        out_weight[:, 1] = np.where(keep1, np.where(positive, w1 * total / kept_weight, low), 0.0)
    out_share = np.empty((n, 2))
    out_share[:, 0] = np.where(keep0, np.where(accept, budget, np.where(d0 == dev0, share0, share1)), 0.0)
    out_share[:, 1] = np.where(keep1, np.where(accept, budget, np.where(d1 == dev0, share0, share1)), 0.0)
    keep = np.empty((n, 2), dtype=bool)
    keep[:, 0], keep[:, 1] = keep0, keep1
    return BatchDecision(keep, out_weight, out_share, failed, steps.slot_device, steps.num_devices)
