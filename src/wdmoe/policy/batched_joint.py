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
    """policy.bandwidth.pair_split on arrays of n problems, iterate for iterate; converged problems leave.

    Both devices are evaluated in one call on (2, m) arrays (row 0: device 0 at b, row 1: device 1 at B - b):
    elementwise, the same operations as two calls."""
    n = a0.shape[0]
    out = np.full((6, n), np.nan)  # b0, b1, t0, t1, inv0, inv1
    items: np.ndarray = np.arange(n)
    load0, load1 = a0 + c0, a1 + c1
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(load0 + load1 > 0.0, budget * load0 / (load0 + load1), 0.5 * budget)
    lo: np.ndarray = np.zeros(n)
    hi: np.ndarray = budget.copy()
    params = [np.stack(pair) for pair in ((a0, a1), (c0, c1), (base0, base1), (d0, d1), (u0, u1))]  # (2, m) each
    for _ in range(max_iter):
        shares = np.stack([b, budget - b])  # (2, m)
        t, w = scalar_time(shares, *params)
        f = t[0] - t[1]
        done = np.abs(f) <= rtol * np.maximum(t[0], t[1])
        finished = np.flatnonzero(done)
        if finished.size:  # 1-D takes and puts: numpy's 2-D fancy indexing is far slower
            at = items.take(finished)
            for row, value in enumerate((shares[0], shares[1], t[0], t[1], w[0], w[1])):
                out[row][at] = value.take(finished)
        more = np.flatnonzero(~done)
        if more.size == 0:
            break
        if finished.size:
            items, b, lo, hi, f, budget = (x.take(more) for x in (items, b, lo, hi, f, budget))
            w = w.take(more, axis=1)
            params = [x.take(more, axis=1) for x in params]
        up = f > 0.0
        lo = np.where(up, b, lo)
        hi = np.where(up, hi, b)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = b + f / (1.0 / w[0] + 1.0 / w[1])
        b = np.where((lo < step) & (step < hi), step, 0.5 * (lo + hi))
    return PairSplit(out[0], out[1], out[2], out[4], out[3], out[5])


def _unique_pair_split(key: np.ndarray, *args: np.ndarray) -> PairSplit:
    """`pair_split` solved once per distinct key (equal keys have equal arguments) and spread back."""
    _, first, back = np.unique(key, return_index=True, return_inverse=True)
    if first.shape[0] == key.shape[0]:
        return pair_split(*args)
    split = pair_split(*[x.take(first) for x in args])
    return PairSplit(*(getattr(split, f).take(back) for f in split.__dataclass_fields__))


def _column(values: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(n,) values[i, cols[i]] through a flat take (numpy's 2-D fancy indexing is far slower)."""
    n, k = values.shape
    return values.ravel().take(np.arange(n) * k + cols)


@dataclass(frozen=True)
class _Eval:
    """One keep mask evaluated per step: metric; the first / second active device, its share and drop cost
    (mu_d t_d / pairs_d); `two` where two devices are active; `failed` where the split did not converge."""

    metric: np.ndarray
    dev0: np.ndarray
    dev1: np.ndarray
    share0: np.ndarray
    share1: np.ndarray
    cost0: np.ndarray
    cost1: np.ndarray
    two: np.ndarray
    failed: np.ndarray

    def where(self, mask: np.ndarray, other: _Eval) -> _Eval:
        """This evaluation where `mask`, `other` elsewhere."""
        return _Eval(*(np.where(mask, getattr(self, f), getattr(other, f)) for f in self.__dataclass_fields__))

    def slot_values(self, device: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """(n, k) `first` on the slots of dev0, `second` on the others."""
        return np.where(device == self.dev0[:, None], first[:, None], second[:, None])


def _evaluate(policy: JointSelectionBandwidth, steps: OneTokenSteps, keep: np.ndarray, on_a: np.ndarray,
              b_slot: np.ndarray, need: np.ndarray) -> _Eval:
    """joint._evaluate_one_token for each step (kept slots on at most two devices: A, the device of slot 0, and B,
    the device of slot `b_slot`). The device of the first kept slot comes first, as in the reference's dict."""
    kept_weight = _seq_sum(steps.weight, keep)
    in_a, in_b = keep & on_a, keep & ~on_a
    pairs_a, pairs_b = in_a.sum(axis=1).astype(float), in_b.sum(axis=1).astype(float)
    compute_a, compute_b = _seq_sum(steps.roof_s, in_a), _seq_sum(steps.roof_s, in_b)
    a_first = _column(on_a, np.argmax(keep, axis=1))

    def order(x_a: np.ndarray, x_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(a_first, x_a, x_b), np.where(a_first, x_b, x_a)

    p0, p1 = order(pairs_a, pairs_b)
    comp0, comp1 = order(compute_a, compute_b)
    dl0, dl1 = order(steps.snr_dl_per_hz[:, 0], _column(steps.snr_dl_per_hz, b_slot))
    ul0, ul1 = order(steps.snr_ul_per_hz[:, 0], _column(steps.snr_ul_per_hz, b_slot))
    dev0, dev1 = order(steps.slot_device[:, 0], _column(steps.slot_device, b_slot))
    two = p1 > 0.0
    n = keep.shape[0]
    share0, share1 = steps.bandwidth_hz.copy(), np.zeros(n)
    t0, inv0, t1, inv1 = np.empty(n), np.empty(n), np.full(n, -np.inf), np.zeros(n)
    failed = np.zeros(n, dtype=bool)
    i = np.flatnonzero(two)
    if i.size:
        width = steps.slot_device.shape[1] + 1
        counts = p0.take(i).astype(np.int64) * width + p1.take(i).astype(np.int64)
        key = ((steps.channel_key.take(i) * steps.num_devices + dev0.take(i)) * steps.num_devices
               + dev1.take(i)) * width * width + counts
        ni = need.take(i)
        split = _unique_pair_split(key, ni, ni, ni * p0.take(i), ni * p1.take(i), comp0.take(i), comp1.take(i),
                                   dl0.take(i), dl1.take(i), ul0.take(i), ul1.take(i), steps.bandwidth_hz.take(i))
        share0[i], share1[i], t0[i], inv0[i], t1[i], inv1[i] = (split.b0, split.b1, split.t0, split.inv0, split.t1,
                                                                split.inv1)
        failed[i] = np.isnan(split.b0)
    one = np.flatnonzero(~two)
    t0[one], inv0[one] = scalar_time(share0.take(one), need.take(one), need.take(one) * p0.take(one),
                                     comp0.take(one), dl0.take(one), ul0.take(one))
    total_inverse = np.where(two, inv0 + inv1, inv0)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost0 = inv0 / total_inverse * t0 / p0
        cost1 = inv1 / total_inverse * t1 / p1
    layer_s = steps.bs_time_s + np.maximum(t0, t1)
    if policy.form == "ratio":
        with np.errstate(divide="ignore"):
            metric = np.where(layer_s > 0.0, kept_weight / layer_s, np.inf)
    else:
        metric = kept_weight - policy.lam * layer_s
    return _Eval(metric, dev0, dev1, share0, share1, cost0, cost1, two, failed)


def decide_joint(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """`JointSelectionBandwidth.decide` on n one-token steps (module docstring)."""
    n, k = steps.slot_device.shape
    device = steps.slot_device
    on_a = device == device[:, :1]
    b_slot = np.argmax(~on_a, axis=1)  # 0 when every slot is on device A (then unused)
    third = (~on_a & (device != _column(device, b_slot)[:, None])).any(axis=1)
    fallback = third | (steps.bits_per_token == 0.0)
    if not fallback.any():
        return _decide(steps, policy, on_a, b_slot)
    ok = np.flatnonzero(~fallback)  # solved alone: a fallback step must not share a memoised split with them
    part = _decide(steps.subset(ok), policy, on_a.take(ok, axis=0), b_slot.take(ok))
    keep, weight, share = np.ones((n, k), dtype=bool), steps.weight.copy(), np.zeros((n, k))
    keep[ok], weight[ok], share[ok] = part.keep, part.weight, part.slot_share_hz
    fallback[ok] = part.fallback
    return BatchDecision(keep, weight, share, fallback, device, steps.num_devices)


def _decide(steps: OneTokenSteps, policy: JointSelectionBandwidth, on_a: np.ndarray,
            b_slot: np.ndarray) -> BatchDecision:
    """`decide_joint` for steps whose slots lie on at most two devices: every round evaluates a trial for all
    steps and keeps it where the step is still running and the metric rose (no row gathers, which are slow)."""
    n, k = steps.slot_device.shape
    need = steps.bits_per_token * _LN2
    keep = np.ones((n, k), dtype=bool)
    point = _evaluate(policy, steps, keep, on_a, b_slot, need)
    fallback = point.failed.copy()
    guard = policy.rho * _seq_sum(steps.weight)
    running = np.ones(n, dtype=bool)
    columns = np.arange(k)
    for _ in range(policy.max_iter):
        kept_weight = _seq_sum(steps.weight, keep)
        offers = keep & (kept_weight[:, None] - steps.weight >= guard[:, None])
        running &= (keep.sum(axis=1) >= 2) & offers.any(axis=1)
        if not running.any():
            break
        slot_cost = point.slot_values(steps.slot_device, point.cost0, point.cost1)
        with np.errstate(divide="ignore"):
            score = np.where(offers, steps.weight / np.maximum(slot_cost, 1e-300), np.inf)
        drop = np.argmin(score, axis=1)
        trial_keep = keep & ~(running[:, None] & (columns == drop[:, None]))
        trial = _evaluate(policy, steps, trial_keep, on_a, b_slot, need)
        fallback |= running & trial.failed  # the reference would have bisected; let it decide these
        accept = running & (trial.metric > point.metric)
        gain = trial.metric - point.metric
        running = accept & ~(gain <= policy.tol * np.abs(point.metric))
        keep = np.where(accept[:, None], trial_keep, keep)
        point = trial.where(accept, point)
    kept_weight = _seq_sum(steps.weight, keep)
    total = _seq_sum(steps.weight)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(kept_weight[:, None] > 0.0, steps.weight * total / kept_weight[:, None],
                          total / keep.sum(axis=1, keepdims=True))
    weight = np.where(keep, scaled, 0.0)
    share = np.where(keep, point.slot_values(steps.slot_device, point.share0, point.share1), 0.0)
    return BatchDecision(keep, weight, share, fallback, steps.slot_device, steps.num_devices)
