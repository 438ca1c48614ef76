"""The joint policy's one-token rounds (`policy.joint._solve_one_token`), vectorized over n decode steps.

Contract: for each step the same greedy rounds as the reference, in the same floating-point order: evaluate
the top-k with its min-max split; while >= 2 slots are kept, offer the kept slots whose loss keeps the guard,
drop the lowest weight / (mu_d t_d / pairs_d), and accept when the metric rises; stop when it rises by less
than tol (relative). Steps whose slots lie on one or two devices are solved here (the two-device min-max split
is `policy.bandwidth.pair_split`'s safeguarded Newton, run on arrays); steps whose slots span three or more
devices, a zero payload, or a split that does not converge are marked `fallback` for the per-state path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wdmoe.policy.bandwidth import time_and_inverse_slope
from wdmoe.policy.batched import BatchDecision, OneTokenSteps
from wdmoe.policy.joint import JointSelectionBandwidth

_LN2 = float(np.log(2.0))  # policy.joint's constant


def _seq_sum(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(n,) left-to-right sums over axis 1 (Python's `sum` order), of the masked entries when a mask is given."""
    total = np.zeros(values.shape[0])
    for j in range(values.shape[1]):
        total = total + (values[:, j] if mask is None else np.where(mask[:, j], values[:, j], 0.0))
    return total


def scalar_time(b: np.ndarray, need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray,
                s_ul: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """policy.bandwidth.scalar_time on arrays: t(b) and 1/|dt/db| (inf where the slope is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t, inverse = time_and_inverse_slope(b, need_dl, need_ul, base, s_dl, s_ul)
    if not (inverse > 0.0).all():
        inverse = np.where(inverse > 0.0, inverse, np.inf)
    return t, inverse


@dataclass(frozen=True)
class PairSplit:
    """(n,) the shares b_0, b_1 and, at them, t_0, 1/|t_0'|, t_1, 1/|t_1'| (the last Newton evaluation, which the
    reference recomputes with the same arguments); nan where the split did not converge."""

    b0: np.ndarray
    b1: np.ndarray
    t0: np.ndarray
    inv0: np.ndarray
    t1: np.ndarray
    inv1: np.ndarray


def pair_split(a0: np.ndarray, a1: np.ndarray, c0: np.ndarray, c1: np.ndarray, base0: np.ndarray,
               base1: np.ndarray, d0: np.ndarray, d1: np.ndarray, u0: np.ndarray, u1: np.ndarray,
               budget: np.ndarray, *, rtol: float = 1e-10, max_iter: int = 60) -> PairSplit:
    """policy.bandwidth.pair_split on arrays of n problems, iterate for iterate; converged problems leave."""
    n = a0.shape[0]
    out = [np.full(n, np.nan) for _ in range(6)]
    items = np.arange(n)
    load0, load1 = a0 + c0, a1 + c1
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(load0 + load1 > 0.0, budget * load0 / (load0 + load1), 0.5 * budget)
    lo, hi = np.zeros(n), budget.copy()
    args = [a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget]
    for _ in range(max_iter):
        a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget = args
        e = budget - b
        t0, w0 = scalar_time(b, a0, c0, base0, d0, u0)
        t1, w1 = scalar_time(e, a1, c1, base1, d1, u1)
        f = t0 - t1
        done = np.abs(f) <= rtol * np.maximum(t0, t1)
        for target, value in zip(out, (b, e, t0, w0, t1, w1), strict=True):
            target[items[done]] = value[done]
        more = ~done
        if not more.any():
            break
        up = f[more] > 0.0
        b, lo, hi, f, w0, w1 = b[more], lo[more], hi[more], f[more], w0[more], w1[more]
        lo = np.where(up, b, lo)
        hi = np.where(up, hi, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = b + f / (1.0 / w0 + 1.0 / w1)
        b = np.where((lo < step) & (step < hi), step, 0.5 * (lo + hi))
        items = items[more]
        args = [x[more] for x in args]
    return PairSplit(*out)


def _unique_pair_split(key: np.ndarray, *args: np.ndarray) -> PairSplit:
    """`pair_split` solved once per distinct key (equal keys have equal arguments) and spread back."""
    _, first, back = np.unique(key, return_index=True, return_inverse=True)
    if first.shape[0] == key.shape[0]:
        return pair_split(*args)
    split = pair_split(*[x[first] for x in args])
    return PairSplit(*(getattr(split, f)[back] for f in split.__dataclass_fields__))


@dataclass(frozen=True)
class _Slots:
    """The n steps' slots: device, weight, roofline and SNRs (n, k); `on_a` (n, k): the slot is on device A (the
    device of slot 0); `b_slot` (n,): a slot on the other device B, if any."""

    device: np.ndarray
    weight: np.ndarray
    roof: np.ndarray
    snr_dl: np.ndarray
    snr_ul: np.ndarray
    on_a: np.ndarray
    b_slot: np.ndarray
    need: np.ndarray
    budget: np.ndarray
    bs: np.ndarray
    key: np.ndarray  # OneTokenSteps.channel_key
    num_devices: int

    def subset(self, items: np.ndarray) -> _Slots:
        fields: dict[str, Any] = {f: getattr(self, f)[items] for f in self.__dataclass_fields__ if f != "num_devices"}
        return _Slots(**fields, num_devices=self.num_devices)


@dataclass(frozen=True)
class _Eval:
    """One keep mask evaluated: metric, the first/second active device and shares, per-slot drop cost."""

    metric: np.ndarray
    dev0: np.ndarray
    dev1: np.ndarray
    share0: np.ndarray
    share1: np.ndarray  # nan when one device is active
    slot_cost: np.ndarray  # (n, k) mu_d t_d / pairs_d of the slot's device
    failed: np.ndarray


def _evaluate(policy: JointSelectionBandwidth, s: _Slots, keep: np.ndarray) -> _Eval:
    """joint._evaluate_one_token for each step (kept slots on at most two devices)."""
    n = keep.shape[0]
    rows = np.arange(n)
    kept_weight = _seq_sum(s.weight, keep)
    in_a, in_b = keep & s.on_a, keep & ~s.on_a
    pairs_a, pairs_b = in_a.sum(axis=1).astype(float), in_b.sum(axis=1).astype(float)
    compute_a, compute_b = _seq_sum(s.roof, in_a), _seq_sum(s.roof, in_b)
    a_first = s.on_a[rows, np.argmax(keep, axis=1)]  # the device of the first kept slot comes first

    def order(x_a: np.ndarray, x_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(a_first, x_a, x_b), np.where(a_first, x_b, x_a)

    p0, p1 = order(pairs_a, pairs_b)
    comp0, comp1 = order(compute_a, compute_b)
    dl0, dl1 = order(s.snr_dl[:, 0], s.snr_dl[rows, s.b_slot])
    ul0, ul1 = order(s.snr_ul[:, 0], s.snr_ul[rows, s.b_slot])
    dev0, dev1 = order(s.device[:, 0], s.device[rows, s.b_slot])
    two = p1 > 0.0
    share0, share1 = s.budget.copy(), np.full(n, np.nan)
    t0, inv0, t1, inv1 = np.empty(n), np.empty(n), np.full(n, -np.inf), np.zeros(n)
    failed = np.zeros(n, dtype=bool)
    if two.any():
        i = np.flatnonzero(two)
        width = s.device.shape[1] + 1
        counts = p0[i].astype(np.int64) * width + p1[i].astype(np.int64)
        key = ((s.key[i] * s.num_devices + dev0[i]) * s.num_devices + dev1[i]) * width * width + counts
        split = _unique_pair_split(key, s.need[i], s.need[i], s.need[i] * p0[i], s.need[i] * p1[i], comp0[i],
                                   comp1[i], dl0[i], dl1[i], ul0[i], ul1[i], s.budget[i])
        share0[i], share1[i] = split.b0, split.b1
        t0[i], inv0[i], t1[i], inv1[i] = split.t0, split.inv0, split.t1, split.inv1
        failed[i] = np.isnan(split.b0)
    one = np.flatnonzero(~two)
    t0[one], inv0[one] = scalar_time(share0[one], s.need[one], s.need[one] * p0[one], comp0[one], dl0[one], ul0[one])
    total_inverse = np.where(two, inv0 + inv1, inv0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost0 = inv0 / total_inverse * t0 / p0
        cost1 = inv1 / total_inverse * t1 / p1
    layer_s = s.bs + np.maximum(t0, t1)
    if policy.form == "ratio":
        with np.errstate(divide="ignore"):
            metric = np.where(layer_s > 0.0, kept_weight / layer_s, np.inf)
    else:
        metric = kept_weight - policy.lam * layer_s
    slot_cost = np.where(s.device == dev0[:, None], cost0[:, None], cost1[:, None])
    return _Eval(metric, dev0, dev1, share0, share1, slot_cost, failed)


def _take(e: _Eval, into: _Eval, items: np.ndarray) -> None:
    for field in e.__dataclass_fields__:
        getattr(into, field)[items] = getattr(e, field)


def decide_joint(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """`JointSelectionBandwidth.decide` on n one-token steps (module docstring)."""
    n, k = steps.slot_device.shape
    rows = np.arange(n)
    device = steps.slot_device
    on_a = device == device[:, :1]
    b_slot = np.argmax(~on_a, axis=1)  # 0 when every slot is on device A (then unused)
    third = (~on_a & (device != device[rows, b_slot][:, None])).any(axis=1)
    fallback = third | (steps.bits_per_token == 0.0)
    if fallback.any():  # solve the others alone: a fallback step must not share a memoised split with them
        ok = np.flatnonzero(~fallback)
        part = _decide(steps.subset(ok), policy)
        keep, weight = np.ones((n, k), dtype=bool), steps.weight.copy()
        bandwidth = np.zeros((n, steps.num_devices))
        keep[ok], weight[ok], bandwidth[ok] = part.keep, part.weight, part.bandwidth_hz
        fallback[ok] = part.fallback
        return BatchDecision(keep, weight, bandwidth, fallback)
    return _decide(steps, policy)


def _decide(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """`decide_joint` for steps whose slots lie on at most two devices."""
    n, k = steps.slot_device.shape
    rows = np.arange(n)
    device = steps.slot_device
    on_a = device == device[:, :1]
    fallback = np.zeros(n, dtype=bool)
    slots = _Slots(device, steps.weight, steps.roof_s, np.take_along_axis(steps.snr_dl_per_hz, device, axis=1),
                   np.take_along_axis(steps.snr_ul_per_hz, device, axis=1), on_a, np.argmax(~on_a, axis=1),
                   steps.bits_per_token * _LN2, steps.bandwidth_hz, steps.bs_time_s, steps.channel_key,
                   steps.num_devices)
    keep = np.ones((n, k), dtype=bool)
    point = _evaluate(policy, slots, keep)
    guard = policy.rho * _seq_sum(steps.weight)
    running = np.ones(n, dtype=bool)
    for _ in range(policy.max_iter):
        kept_weight = _seq_sum(steps.weight, keep)
        offers = keep & (kept_weight[:, None] - steps.weight >= guard[:, None])
        running &= (keep.sum(axis=1) >= 2) & offers.any(axis=1)
        items = np.flatnonzero(running)
        if items.size == 0:
            break
        with np.errstate(divide="ignore"):
            score = steps.weight[items] / np.maximum(point.slot_cost[items], 1e-300)
        drop = np.argmin(np.where(offers[items], score, np.inf), axis=1)
        trial_keep = keep[items].copy()
        trial_keep[np.arange(items.size), drop] = False
        trial = _evaluate(policy, slots.subset(items), trial_keep)
        fallback[items[trial.failed]] = True  # the reference would have bisected; let it decide these
        before = point.metric[items]
        better = trial.metric > before
        accepted = items[better]
        keep[accepted] = trial_keep[better]
        _take(_Eval(*(getattr(trial, f)[better] for f in trial.__dataclass_fields__)), point, accepted)
        gain = trial.metric[better] - before[better]
        running[items] = False
        running[accepted] = ~(gain <= policy.tol * np.abs(before[better]))
    fallback = fallback | point.failed
    kept_weight = _seq_sum(steps.weight, keep)
    total = _seq_sum(steps.weight)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(kept_weight[:, None] > 0.0, steps.weight * total / kept_weight[:, None],
                          total / keep.sum(axis=1, keepdims=True))
    weight = np.where(keep, scaled, 0.0)
    bandwidth = np.zeros((n, steps.num_devices))
    bandwidth[rows, point.dev0] = point.share0
    two = ~np.isnan(point.share1)
    bandwidth[rows[two], point.dev1[two]] = point.share1[two]
    return BatchDecision(keep, weight, bandwidth, fallback)
