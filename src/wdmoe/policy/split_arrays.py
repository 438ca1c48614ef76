"""The min-max pair split of `policy.bandwidth` on arrays: n two-device problems solved at once, iterate for iterate.

Contract: `pair_split(...)` returns, per problem, what `policy.bandwidth.pair_split` returns on the same floats (the
same operations in the same order, elementwise), with nan where it does not converge; `pair_model_step` is the
array form of the function of the same name there, `scalar_time` of radio.rate's (the presolve's approximate time
is radio.approx's). Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.policy.bandwidth import PRESOLVE_ITER, PRESOLVE_LAST
from wdmoe.radio.approx import approx_time_array
from wdmoe.radio.rate import time_and_inverse_slope


def scalar_time(b: np.ndarray, need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray,
                s_ul: np.ndarray, dl_pool: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """radio.rate.scalar_time on arrays: t(b) and 1/|dt/db| (inf where the slope is not positive)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t, inverse = time_and_inverse_slope(b, need_dl, need_ul, base, s_dl, s_ul, dl_pool)
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
                snr: np.ndarray, dl_pool: float) -> np.ndarray:
    """policy.bandwidth._pair_start from the start b (m,): problems leave once they stop (after the step that
    follows a gap below PRESOLVE_LAST, or at a step undefined or outside (0, B)), keeping their last b."""
    out = b.copy()
    items: np.ndarray = np.arange(b.shape[0])
    for _ in range(PRESOLVE_ITER):
        shares = np.empty((2, b.shape[0]))
        shares[0] = b
        e = np.subtract(budget, b, out=shares[1])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t, slope = approx_time_array(shares, need, base, snr, dl_pool)
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
               budget: np.ndarray, *, rtol: float = 1e-10, max_iter: int = 60, dl_pool: float = 0.0) -> PairSplit:
    """policy.bandwidth.pair_split on arrays of n problems, iterate for iterate; converged problems leave.
    Degenerate problems (a dead link where bits move, or a budget that is not > 0: policy.bandwidth.pair_degenerate)
    are not solved here: nan, like a problem that does not converge, so the caller takes the scalar form's answer.

    Both devices are evaluated in one call on (2, m) arrays (row 0: device 0 at b, row 1: device 1 at B - b):
    elementwise, the same operations as two calls. Problems are independent, so they are solved in blocks of
    about _BLOCK (elementwise work on arrays that fit in cache)."""
    n = a0.shape[0]
    with np.errstate(invalid="ignore"):
        dead = (((a0 > 0.0) & ~(d0 > 0.0)) | ((c0 > 0.0) & ~(u0 > 0.0)) | ((a1 > 0.0) & ~(d1 > 0.0))
                | ((c1 > 0.0) & ~(u1 > 0.0)) | ~(budget > 0.0))
    if dead.any():
        solved = np.flatnonzero(~dead)
        live = pair_split(*(x.take(solved) for x in (a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget)),
                          rtol=rtol, max_iter=max_iter, dl_pool=dl_pool)
        out = [np.full(n, np.nan) for _ in range(6)]
        for target, value in zip(out, (live.b0, live.b1, live.t0, live.inv0, live.t1, live.inv1), strict=True):
            target[solved] = value
        return PairSplit(*out)
    out = [np.full(n, np.nan) for _ in range(6)]  # b0, b1, t0, t1, inv0, inv1
    if n == 0:
        return PairSplit(*out)
    blocks = max(-(-n // _BLOCK), 1)
    size = -(-n // blocks)
    for start in range(0, n, size):
        part = slice(start, min(start + size, n))
        params = np.empty((5, 2, part.stop - part.start))  # need DL, need UL, base, SNR DL, SNR UL by device
        for row, pair in enumerate(((a0, a1), (c0, c1), (base0, base1), (d0, d1), (u0, u1))):
            params[row, 0], params[row, 1] = pair[0][part], pair[1][part]
        _pair_split_block([x[part] for x in out], params, budget[part], rtol, max_iter, dl_pool)
    return PairSplit(out[0], out[1], out[2], out[4], out[3], out[5])


def _pair_split_block(out: list[np.ndarray], params: np.ndarray, budget: np.ndarray, rtol: float,
                      max_iter: int, dl_pool: float) -> None:
    """`pair_split` of one block into the views `out` (b0, b1, t0, t1, inv0, inv1); params (5, 2, m)."""
    m = budget.shape[0]
    items: np.ndarray = np.arange(m)
    load = params[0] + params[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        b = np.where(load[0] + load[1] > 0.0, budget * load[0] / (load[0] + load[1]), 0.5 * budget)
    b = _pair_start(b, budget, params[:2], params[2], params[3:], dl_pool)
    lo: np.ndarray = np.zeros(m)
    hi: np.ndarray = budget.copy()
    for _ in range(max_iter):
        shares = np.empty((2, b.shape[0]))
        shares[0] = b
        np.subtract(budget, b, out=shares[1])
        t, w = scalar_time(shares, params[0], params[1], params[2], params[3], params[4], dl_pool)
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


def pair_split_by_key(key: np.ndarray, *args: np.ndarray, dl_pool: float = 0.0) -> PairSplit:
    """`pair_split` solved once per distinct key (equal keys have equal arguments) and spread back."""
    _, first, back = np.unique(key, return_index=True, return_inverse=True)
    if first.shape[0] == key.shape[0]:
        return pair_split(*args, dl_pool=dl_pool)
    split = pair_split(*[x.take(first) for x in args], dl_pool=dl_pool)
    return PairSplit(*(getattr(split, f).take(back) for f in split.__dataclass_fields__))
