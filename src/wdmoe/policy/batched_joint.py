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

from wdmoe.policy.bandwidth import LOG_LN2, LOG_SERIES, PRESOLVE_ITER, PRESOLVE_LAST, SQRT_TWO, time_and_inverse_slope
from wdmoe.policy.batched import BatchDecision, OneTokenSteps
from wdmoe.policy.joint import JointSelectionBandwidth

_LN2 = float(np.log(2.0))  # policy.joint's constant


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


def approx_log(x: np.ndarray) -> np.ndarray:
    """policy.bandwidth.approx_log on an array, operation for operation (in place on a few buffers: arrays this
    size cost more in allocation than in arithmetic)."""
    m, e = np.frexp(x)
    v = np.multiply(m, SQRT_TWO, out=m)
    z = np.subtract(v, 1.0)
    np.add(v, 1.0, out=v)
    np.divide(z, v, out=z)
    z2 = np.multiply(z, z, out=v)
    c = LOG_SERIES
    s = np.multiply(z2, c[6])
    for coefficient in (c[5], c[4], c[3], c[2], c[1]):
        s += coefficient
        s *= z2
    s += c[0]
    np.multiply(z, 2.0, out=z)
    np.multiply(z, s, out=z)
    out = np.subtract(e, 0.5, out=s)  # int32 - 0.5 in float64, as (e - 0.5)
    out *= LOG_LN2
    out += z
    return out


def approx_time(b: np.ndarray, need: np.ndarray, base: np.ndarray, snr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """policy.bandwidth.approx_time on arrays: b (2, m) shares, need and snr (2, 2, m) with the DL row first, base
    (2, m); both directions go through each operation at once (elementwise, the reference's operations)."""
    y = np.divide(snr, b)
    o = np.add(y, 1.0)
    log_term = approx_log(o)
    transfer = np.multiply(log_term, b)
    np.divide(need, transfer, out=transfer)
    part = np.divide(y, o, out=y)  # transfer * (log_term - y / o) / log_term
    np.subtract(log_term, part, out=part)
    part *= transfer
    part /= log_term
    t = np.add(transfer[0], transfer[1])
    t += base
    slope = np.add(part[0], part[1])
    slope /= b
    return t, slope


def pair_model_step(b: np.ndarray, e: np.ndarray, t0: np.ndarray, slope0: np.ndarray, t1: np.ndarray,
                    slope1: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """policy.bandwidth.pair_model_step on arrays (inf or nan where it has -1: outside (0, B) all the same)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g0 = np.multiply(b, b)
        g0 *= slope0
        g1 = np.multiply(e, e)
        g1 *= slope1
        delta = np.multiply(e, slope1)  # (t1 - e slope1) - (t0 - b slope0)
        np.subtract(t1, delta, out=delta)
        p = np.multiply(b, slope0)
        np.subtract(t0, p, out=p)
        delta -= p
        np.multiply(delta, budget, out=p)  # p = delta B + g0 + g1
        p += g0
        p += g1
        q = np.multiply(delta, 4.0, out=g1)  # q = p + sign(p) sqrt(max(p p - 4 delta g0 B, 0))
        q *= g0
        q *= budget
        np.subtract(np.multiply(p, p), q, out=q)
        np.maximum(q, 0.0, out=q)
        np.sqrt(q, out=q)
        np.copysign(q, p, out=q)
        q += p
        right = p >= 0.0
        g0 *= 2.0
        g0 *= budget
        delta *= 2.0
        return np.where(right, g0, q) / np.where(right, q, delta)


def _pair_start(b: np.ndarray, budget: np.ndarray, need: np.ndarray, base: np.ndarray,
                snr: np.ndarray) -> np.ndarray:
    """policy.bandwidth._pair_start from the start b (m,): problems leave once they stop (after the step that
    follows a gap below PRESOLVE_LAST, or at a step undefined or outside (0, B)), keeping their last b."""
    out = b.copy()
    items: np.ndarray = np.arange(b.shape[0])
    for _ in range(PRESOLVE_ITER):
        shares = np.empty((2, b.shape[0]))
        shares[0] = b
        e = np.subtract(budget, b, out=shares[1])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t, slope = approx_time(shares, need, base, snr)
            near = np.abs(t[0] - t[1]) <= PRESOLVE_LAST * np.maximum(t[0], t[1])
        step = pair_model_step(b, e, t[0], slope[0], t[1], slope[1], budget)
        ok = (step > 0.0) & (step < budget)
        b = np.where(ok, step, b)
        out[items] = b
        more = np.flatnonzero(ok & ~near)
        if more.size < items.size:
            if more.size == 0:
                break
            items, budget, b = items.take(more), budget.take(more), b.take(more)
            need, base, snr = need.take(more, axis=-1), base.take(more, axis=-1), snr.take(more, axis=-1)
    return out


_BLOCK = 1 << 20  # problems per block; 2048 or 4096 measured no faster (per-call overhead), so one in practice


def pair_split(a0: np.ndarray, a1: np.ndarray, c0: np.ndarray, c1: np.ndarray, base0: np.ndarray,
               base1: np.ndarray, d0: np.ndarray, d1: np.ndarray, u0: np.ndarray, u1: np.ndarray,
               budget: np.ndarray, *, rtol: float = 1e-10, max_iter: int = 60) -> PairSplit:
    """policy.bandwidth.pair_split on arrays of n problems, iterate for iterate; converged problems leave.

    Both devices are evaluated in one call on (2, m) arrays (row 0: device 0 at b, row 1: device 1 at B - b):
    elementwise, the same operations as two calls. Problems are independent, so they are solved in blocks of
    about _BLOCK (elementwise work on arrays that fit in cache)."""
    n = a0.shape[0]
    out = [np.full(n, np.nan) for _ in range(6)]  # b0, b1, t0, t1, inv0, inv1
    blocks = max(-(-n // _BLOCK), 1)
    size = -(-n // blocks)
    for start in range(0, n, size):
        part = slice(start, min(start + size, n))
        params = np.empty((5, 2, part.stop - part.start))  # need DL, need UL, base, SNR DL, SNR UL by device
        for row, pair in enumerate(((a0, a1), (c0, c1), (base0, base1), (d0, d1), (u0, u1))):
            params[row, 0], params[row, 1] = pair[0][part], pair[1][part]
        _pair_split_block([x[part] for x in out], params, budget[part], rtol, max_iter)
    return PairSplit(out[0], out[1], out[2], out[4], out[3], out[5])


def _pair_split_block(out: list[np.ndarray], params: np.ndarray, budget: np.ndarray, rtol: float,
                      max_iter: int) -> None:
    """`pair_split` of one block into the views `out` (b0, b1, t0, t1, inv0, inv1); params (5, 2, m)."""
    m = budget.shape[0]
    items: np.ndarray = np.arange(m)
    load = params[0] + params[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(load[0] + load[1] > 0.0, budget * load[0] / (load[0] + load[1]), 0.5 * budget)
    b = _pair_start(b, budget, params[:2], params[2], params[3:])
    lo: np.ndarray = np.zeros(m)
    hi: np.ndarray = budget.copy()
    for _ in range(max_iter):
        shares = np.empty((2, b.shape[0]))
        shares[0] = b
        np.subtract(budget, b, out=shares[1])
        t, w = scalar_time(shares, *params)
        f = t[0] - t[1]
        done = np.abs(f) <= rtol * np.maximum(t[0], t[1])
        if done.all():
            if items.shape[0] == m:
                for target, value in zip(out, (shares[0], shares[1], t[0], t[1], w[0], w[1]), strict=True):
                    target[...] = value
            else:
                for target, value in zip(out, (shares[0], shares[1], t[0], t[1], w[0], w[1]), strict=True):
                    target[items] = value
            return
        finished = np.flatnonzero(done)
        if finished.size:  # 1-D takes and puts: numpy's 2-D fancy indexing is far slower
            at = items.take(finished)
            for target, value in zip(out, (shares[0], shares[1], t[0], t[1], w[0], w[1]), strict=True):
                target[at] = value.take(finished)
            more = np.flatnonzero(~done)
            items, b, lo, hi, f, budget = (x.take(more) for x in (items, b, lo, hi, f, budget))
            t, w = t.take(more, axis=1), w.take(more, axis=1)
            params = params.take(more, axis=2)
        up = f > 0.0
        lo = np.where(up, b, lo)
        hi = np.where(up, hi, b)
        with np.errstate(divide="ignore"):
            step = pair_model_step(b, budget - b, t[0], 1.0 / w[0], t[1], 1.0 / w[1], budget)
        b = np.where((lo < step) & (step < hi), step, 0.5 * (lo + hi))


def _unique_pair_split(key: np.ndarray, *args: np.ndarray) -> PairSplit:
    """`pair_split` solved once per distinct key (equal keys have equal arguments) and spread back."""
    _, first, back = np.unique(key, return_index=True, return_inverse=True)
    if first.shape[0] == key.shape[0]:
        return pair_split(*args)
    split = pair_split(*[x.take(first) for x in args])
    return PairSplit(*(getattr(split, f).take(back) for f in split.__dataclass_fields__))


def _columns(values: np.ndarray) -> list[np.ndarray]:
    """The k columns of an (n, k) array as contiguous (n,) arrays: numpy reduces along a short last axis and
    selects (where) on (n, k) arrays far slower than it runs k elementwise operations on (n,) arrays."""
    return [np.ascontiguousarray(values[:, j]) for j in range(values.shape[1])]


def _seq_sum_cols(cols: list[np.ndarray], mask: list[np.ndarray] | None = None) -> np.ndarray:
    """(n,) left-to-right sums over the columns (Python's `sum` order), of the masked entries when a mask is given."""
    total = np.zeros(cols[0].shape[0])
    for j, col in enumerate(cols):
        total = total + (col if mask is None else np.where(mask[j], col, 0.0))
    return total


def _count(mask: list[np.ndarray]) -> np.ndarray:
    """(n,) int64 number of True entries per row of a mask given by columns."""
    total = mask[0].astype(np.int64)
    for col in mask[1:]:
        total += col
    return total


def _first_argmin(cols: list[np.ndarray]) -> np.ndarray:
    """np.argmin(axis=1) of the stacked columns: the first minimum, or the first nan where a row has one."""
    if any(np.isnan(col).any() for col in cols):
        return np.argmin(np.stack(cols, axis=1), axis=1)
    best, index = cols[0], np.zeros(cols[0].shape[0], dtype=np.int64)
    for j, col in enumerate(cols[1:], start=1):
        lower = col < best
        best, index = np.where(lower, col, best), np.where(lower, j, index)
    return index


@dataclass(frozen=True)
class _Steps:
    """The per-step inputs of the rounds, by column (k contiguous (n,) arrays), and the two devices of each step:
    A, the device of slot 0, and B, the device of the first slot not on A (A where every slot is)."""

    weight: list[np.ndarray]
    roof: list[np.ndarray]
    device: list[np.ndarray]
    on_a: list[np.ndarray]
    dev_a: np.ndarray
    dev_b: np.ndarray
    dl_a: np.ndarray
    dl_b: np.ndarray
    ul_a: np.ndarray
    ul_b: np.ndarray


def _on_a_and_b(device: list[np.ndarray], *values: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """on_a per slot, and for device and each of `values` the entry of B (the first slot off A; slot 0 if none)."""
    on_a = [col == device[0] for col in device]
    firsts = [cols[0] for cols in (device, *values)]
    for j in range(len(device) - 1, 0, -1):
        off = ~on_a[j]
        firsts = [np.where(off, cols[j], first) for cols, first in zip((device, *values), firsts, strict=True)]
    return on_a, firsts


def _steps(steps: OneTokenSteps) -> _Steps:
    device = _columns(steps.slot_device)
    dl, ul = _columns(steps.snr_dl_per_hz), _columns(steps.snr_ul_per_hz)
    on_a, (dev_b, dl_b, ul_b) = _on_a_and_b(device, dl, ul)
    return _Steps(_columns(steps.weight), _columns(steps.roof_s), device, on_a, device[0], dev_b, dl[0], dl_b, ul[0],
                  ul_b)


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

    def slot_values(self, device: list[np.ndarray], first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
        """Per slot column, `first` on the slots of dev0, `second` on the others."""
        return [np.where(col == self.dev0, first, second) for col in device]


def _evaluate(policy: JointSelectionBandwidth, steps: OneTokenSteps, cols: _Steps, keep: list[np.ndarray],
              need: np.ndarray) -> _Eval:
    """joint._evaluate_one_token for each step (kept slots on at most two devices: A, the device of slot 0, and B).
    With two active devices the lower device id comes first, as in the reference's pair split (so the same split
    problem has one key whatever the slot order); with one, the active device."""
    kept_weight = _seq_sum_cols(cols.weight, keep)
    in_a = [kept & on_a for kept, on_a in zip(keep, cols.on_a, strict=True)]
    in_b = [kept & ~on_a for kept, on_a in zip(keep, cols.on_a, strict=True)]
    pairs_a, pairs_b = _count(in_a).astype(float), _count(in_b).astype(float)
    compute_a, compute_b = _seq_sum_cols(cols.roof, in_a), _seq_sum_cols(cols.roof, in_b)
    a_first = (pairs_b == 0.0) | ((pairs_a > 0.0) & (cols.dev_a < cols.dev_b))  # A when B is idle

    def order(x_a: np.ndarray, x_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.where(a_first, x_a, x_b), np.where(a_first, x_b, x_a)

    p0, p1 = order(pairs_a, pairs_b)
    comp0, comp1 = order(compute_a, compute_b)
    dl0, dl1 = order(cols.dl_a, cols.dl_b)
    ul0, ul1 = order(cols.ul_a, cols.ul_b)
    dev0, dev1 = order(cols.dev_a, cols.dev_b)
    two = p1 > 0.0
    n = kept_weight.shape[0]
    share0, share1 = steps.bandwidth_hz.copy(), np.zeros(n)
    t0, inv0, t1, inv1 = np.empty(n), np.empty(n), np.full(n, -np.inf), np.zeros(n)
    failed = np.zeros(n, dtype=bool)
    i = np.flatnonzero(two)
    if i.size:
        width = len(keep) + 1
        counts = p0.take(i).astype(np.int64) * width + p1.take(i).astype(np.int64)
        key = ((steps.channel_key.take(i) * steps.num_devices + dev0.take(i)) * steps.num_devices
               + dev1.take(i)) * width * width + counts
        ni = need.take(i)
        split = _unique_pair_split(key, ni, ni, ni * p0.take(i), ni * p1.take(i), comp0.take(i), comp1.take(i),
                                   dl0.take(i), dl1.take(i), ul0.take(i), ul1.take(i), steps.bandwidth_hz.take(i))
        share0[i], share1[i], t0[i], inv0[i], t1[i], inv1[i] = (split.b0, split.b1, split.t0, split.inv0, split.t1,
                                                                split.inv1)
        failed[i] = np.isnan(split.b0)
    if i.size == n:
        pass
    elif i.size == 0:
        t0, inv0 = scalar_time(share0, need, need * p0, comp0, dl0, ul0)
    else:
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
    device = _columns(steps.slot_device)
    on_a, (dev_b,) = _on_a_and_b(device)
    third = np.zeros(n, dtype=bool)
    for col, here in zip(device, on_a, strict=True):
        third |= ~here & (col != dev_b)
    fallback = third | (steps.bits_per_token == 0.0)
    if not fallback.any():
        return _decide(steps, policy)
    ok = np.flatnonzero(~fallback)  # solved alone: a fallback step must not share a memoised split with them
    part = _decide(steps.subset(ok), policy)
    keep, weight, share = np.ones((n, k), dtype=bool), steps.weight.copy(), np.zeros((n, k))
    keep[ok], weight[ok], share[ok] = part.keep, part.weight, part.slot_share_hz
    fallback[ok] = part.fallback
    return BatchDecision(keep, weight, share, fallback, steps.slot_device, steps.num_devices)


def _decide(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """`decide_joint` for steps whose slots lie on at most two devices: top-2 by `batched_joint2.decide_top2`
    (the same decisions bit for bit, by direct column arithmetic), any other k by the generic rounds."""
    if steps.slot_device.shape[1] == 2:
        from wdmoe.policy.batched_joint2 import decide_top2  # imports this module

        return decide_top2(steps, policy)
    return _decide_rounds(steps, policy)


def _decide_rounds(steps: OneTokenSteps, policy: JointSelectionBandwidth) -> BatchDecision:
    """`decide_joint` for steps whose slots lie on at most two devices: every round evaluates a trial for all
    steps and keeps it where the step is still running and the metric rose (no row gathers, which are slow).
    Works on columns (`_Steps`); (n, k) arrays only at the end."""
    n, k = steps.slot_device.shape
    cols = _steps(steps)
    weight = cols.weight
    need = steps.bits_per_token * _LN2
    keep = [np.ones(n, dtype=bool) for _ in range(k)]
    point = _evaluate(policy, steps, cols, keep, need)
    fallback = point.failed.copy()
    guard = policy.rho * _seq_sum_cols(weight)
    running = np.ones(n, dtype=bool)
    for _ in range(policy.max_iter):
        kept_weight = _seq_sum_cols(weight, keep)
        offers = [kept & (kept_weight - w >= guard) for kept, w in zip(keep, weight, strict=True)]
        any_offer = offers[0].copy()
        for offer in offers[1:]:
            any_offer |= offer
        running &= (_count(keep) >= 2) & any_offer
        if not running.any():
            break
        slot_cost = point.slot_values(cols.device, point.cost0, point.cost1)
        with np.errstate(divide="ignore"):
            score = [np.where(offer, w / np.maximum(cost, 1e-300), np.inf)
                     for offer, w, cost in zip(offers, weight, slot_cost, strict=True)]
        drop = _first_argmin(score)
        trial_keep = [kept & ~(running & (drop == j)) for j, kept in enumerate(keep)]
        trial = _evaluate(policy, steps, cols, trial_keep, need)
        fallback |= running & trial.failed  # the reference would have bisected; let it decide these
        accept = running & (trial.metric > point.metric)
        gain = trial.metric - point.metric
        running = accept & ~(gain <= policy.tol * np.abs(point.metric))
        keep = [(accept & tried) | (~accept & kept) for tried, kept in zip(trial_keep, keep, strict=True)]
        point = trial.where(accept, point)
    kept_weight = _seq_sum_cols(weight, keep)
    total = _seq_sum_cols(weight)
    count = _count(keep)
    shares = point.slot_values(cols.device, point.share0, point.share1)
    out_weight, out_share = np.empty((n, k)), np.empty((n, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(k):
            scaled = np.where(kept_weight > 0.0, weight[j] * total / kept_weight, total / count)
            out_weight[:, j] = np.where(keep[j], scaled, 0.0)
            out_share[:, j] = np.where(keep[j], shares[j], 0.0)
    return BatchDecision(np.stack(keep, axis=1), out_weight, out_share, fallback, steps.slot_device,
                         steps.num_devices)
