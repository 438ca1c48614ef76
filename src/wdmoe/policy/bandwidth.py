"""Bandwidth split of one layer step: equal shares, or the exact min-max split (papers.md §3.4 step 2 [R]).

Contract: an allocator maps (LayerState, keep (T, k)) to bandwidth_hz (D,) that sums to the state's budget over
the active devices (those with a kept expert) and is 0 on idle devices. As policies, `EqualBandwidth` and
`MinMaxBandwidth` keep the router's top-k and only split the band.

Min-max (one shared pool: a share carries DL then UL). Device k needs t_k(b) = A_k / r_dl(b) + C_k / r_ul(b)
+ c_k seconds (A_k, C_k bits; c_k compute seconds), strictly decreasing and convex in b under either downlink
power model (radio.rate: r_dl linear in b at a constant spectral density, `dl_pool` > 0, else concave).
The optimum of min_b max_k t_k(b_k) s.t. sum b_k = B equalises every t_k at the optimal T (KKT of the epigraph
form). We solve the D + 1 equations t_k(b_k) = T, sum b_k = B by Newton's method in x_k = 1/b_k, where t_k is
nearly linear (a downlink at a constant spectral density is exactly linear in x). With the shares kept on
sum b = B (rescaled after each step), the linearised system gives T in closed form,

    w_k = 1 / |dt_k/db_k|,   T = sum w_k t_k / sum w_k,   b_k <- b_k / (1 + (T - t_k) w_k / b_k),

and converges quadratically; the first step, from the equal split, solves the x-linear model with the exact
budget instead (`_model_step`). When Newton does not converge (not seen on thousands of random instances), a
bracketing bisection on T with an inner bisection per device takes over. Two devices reduce to one scalar Newton
on the split, cheap enough for decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import device_costs
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.approx import approx_time
from wdmoe.radio.exactmath import LN2, exp_array, log
from wdmoe.radio.rate import psd_dl_load, scalar_time, time_and_inverse_slope, transfer_and_slope_into


class BandwidthAllocator(Protocol):
    @property
    def name(self) -> str: ...

    def allocate(self, state: LayerState, keep: np.ndarray) -> np.ndarray: ...


def equal_split(active: np.ndarray, budget_hz: float) -> np.ndarray:
    """budget / #active on every active device, 0 elsewhere."""
    n = int(active.sum())
    return np.where(active, budget_hz / max(n, 1), 0.0)


def _newton(need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray, s_ul: np.ndarray,
            budget: float, rtol: float, max_iter: int, dl_pool: float) -> np.ndarray | None:
    """Newton in x = 1/b with the shares rescaled onto sum b = B after each step (fewer steps far from the
    optimum, still quadratic near it). DL and UL are stacked into (2, n) arrays and reductions are dot products:
    numpy's per-call overhead, not arithmetic, is the cost at these sizes. Once the relative gap is below
    0.1 sqrt(rtol), one last step lands below rtol (seen on 3000 random instances: worst 1e-10 for rtol 1e-10)
    and is not re-evaluated. The first step (from the equal split) solves the x-linear model with the exact
    budget instead (`_model_step`): about 5 evaluations instead of 7 on random instances. With the BS's power at a
    constant spectral density (dl_pool > 0) the downlink takes psd_dl_load / b seconds: only the UL row remains."""
    n = need_dl.shape[0]
    psd = dl_pool > 0.0
    rows = 1 if psd else 2
    need = np.empty((rows, n))  # DL row, UL row; the UL row alone at a constant spectral density
    snr = np.empty((rows, n))
    need[-1], snr[-1] = need_ul, s_ul
    if psd:
        dl_load = psd_dl_load(need_dl, s_dl, dl_pool)
    else:
        need[0], snr[0] = need_dl, s_dl
    y, log_term = np.empty((rows, n)), np.empty((rows, n))
    transfer, work = np.empty((rows, n)), np.empty((rows, n))  # DL/UL transfer seconds; b * |d transfer / db|
    ones = np.ones(n)
    b = np.full(n, budget / n)
    last_step = 0.1 * math.sqrt(rtol)
    first = True
    for _ in range(max_iter):
        transfer_and_slope_into(b, need, snr, y, log_term, transfer, work)  # work: b * |d transfer / db|
        if psd:
            dl = dl_load / b  # its b * |d dl / db| is itself
            t = dl + transfer[0] + base
            b_slope = dl + work[0]  # b * |dt/db|
        else:
            t = transfer[0] + transfer[1] + base
            b_slope = work[0] + work[1]
        w = b / b_slope  # 1 / |dt/db|
        target = w.dot(t) / w.dot(ones)
        gap = t - target
        gap2 = gap.dot(gap) / target**2
        if gap2 <= rtol**2:
            return b if np.isfinite(b).all() else None
        if first:  # far from the optimum: solve the x-linear model with the exact budget constraint
            b = _model_step(b, t, b_slope, target, budget, ones)
            first = False
        else:
            b = b / np.maximum(1.0 - gap / b_slope, 0.1)
        b *= budget / b.dot(ones)
        if gap2 <= last_step**2:  # quadratic convergence: this step took the gap from <= 1e-6 to ~1e-12
            return b if np.isfinite(b).all() else None
    return None


def _model_step(b: np.ndarray, t: np.ndarray, b_slope: np.ndarray, target: float, budget: float,
                ones: np.ndarray) -> np.ndarray:
    """Shares that equalise the x-linear model t_k(x) = a_k + g_k x (x = 1/b, g = b * b_slope, a = t - b_slope)
    under sum b = B exactly: b_k(T) = g_k / (T - a_k), with T the root of 1/sum_k b_k(T) = 1/B, a concave
    increasing function of T, by 3 Newton steps (monotone once left of the root)."""
    g = b_slope * b
    a = t - b_slope
    floor = float(a.max())
    level = max(target, floor + 1e-9 * abs(floor))
    for _ in range(3):
        inverse_gap = 1.0 / (level - a)
        share = g * inverse_gap
        total = share.dot(ones)
        step = (1.0 / total - 1.0 / budget) * total**2 / share.dot(inverse_gap)  # d share / d level = -share / gap
        level = level - step if level - step > floor else 0.5 * (level + floor)
    return g / (level - a)


def _newton_pair(need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray,
                 s_ul: np.ndarray, budget: float, rtol: float, max_iter: int, dl_pool: float) -> np.ndarray | None:
    split = pair_split(float(need_dl[0]), float(need_dl[1]), float(need_ul[0]), float(need_ul[1]),
                       float(base[0]), float(base[1]), float(s_dl[0]), float(s_dl[1]), float(s_ul[0]),
                       float(s_ul[1]), budget, rtol, max_iter, dl_pool=dl_pool)
    return None if split is None else np.array(split)


PRESOLVE_LAST = 3e-5  # from an approximate relative gap this small, one more step lands at ~1e-11 (quadratic)
PRESOLVE_ITER = 10


def pair_model_step(b: float, e: float, t0: float, slope0: float, t1: float, slope1: float, budget: float) -> float:
    """The split that equalises the x-linear models t_k = alpha_k + g_k / b_k (x = 1/b, the tangent at b_0 = b,
    b_1 = e: g_k = b_k^2 |t_k'|, alpha_k = t_k - b_k |t_k'|) under b_0 + b_1 = B exactly: the root in (0, B) of
    delta b^2 - p b + g_0 B with delta = alpha_1 - alpha_0, p = delta B + g_0 + g_1, in its cancellation-free
    form (q = p + sign(p) sqrt(disc); 2 g_0 B / q for p >= 0, q / (2 delta) otherwise). t_k is nearly linear in
    x, so this converges fast from far away. Where a denominator is 0 the array form gives inf or nan; here -1:
    either way outside (0, B), so both reject the step."""
    g0, g1 = b * b * slope0, e * e * slope1
    delta = (t1 - e * slope1) - (t0 - b * slope0)
    p = delta * budget + g0 + g1
    q = p + math.copysign(math.sqrt(max(p * p - 4.0 * delta * g0 * budget, 0.0)), p)
    if p >= 0.0:
        return 2.0 * g0 * budget / q if q != 0.0 else -1.0
    return q / (2.0 * delta) if delta != 0.0 else -1.0


def _pair_start(a0: float, a1: float, c0: float, c1: float, base0: float, base1: float, d0: float, d1: float,
                u0: float, u1: float, budget: float, dl_pool: float) -> float:
    """`pair_split`'s starting point: from where the two transfer loads alone would balance at a common spectral
    efficiency, `pair_model_step` on `approx_time`, until one step after the approximate times agree to
    PRESOLVE_LAST (that last step is not evaluated: quadratic convergence takes it to ~1e-11, and the exact loop
    checks it), or a step is undefined or leaves (0, B) (a zero division here is a non-finite value on arrays:
    the same stop)."""
    load0, load1 = a0 + c0, a1 + c1
    b = budget * load0 / (load0 + load1) if load0 + load1 > 0.0 else 0.5 * budget
    try:
        for _ in range(PRESOLVE_ITER):
            e = budget - b
            t0, s0 = approx_time(b, a0, c0, base0, d0, u0, dl_pool)
            t1, s1 = approx_time(e, a1, c1, base1, d1, u1, dl_pool)
            near = abs(t0 - t1) <= PRESOLVE_LAST * max(t0, t1)
            step = pair_model_step(b, e, t0, s0, t1, s1, budget)
            if not 0.0 < step < budget:
                break
            b = step
            if near:
                break
    except ZeroDivisionError:
        pass
    return b


def pair_split(a0: float, a1: float, c0: float, c1: float, base0: float, base1: float, d0: float, d1: float,
               u0: float, u1: float, budget: float, rtol: float = 1e-10,
               max_iter: int = 60, *, dl_pool: float = 0.0) -> tuple[float, float] | None:
    """Two devices (need a = DL bits * ln 2, c = UL bits * ln 2, SNRs per Hz d, u): the split b_0 + b_1 = B
    with t_0(b_0) = t_1(b_1). First `pair_model_step` on `approx_time` (no log1p, a fraction of an evaluation's
    cost on arrays) to about 1e-11 (`_pair_start`, 2 to 5 evaluations); then the same steps on the exact times,
    safeguarded by the bracket of f(b_0) = t_0(b_0) - t_1(B - b_0) (decreasing in b_0), with a bisection step
    when a step leaves it. The first exact evaluation almost always meets rtol (tests/unit/policy/test_bandwidth).
    dl_pool: the downlink power model (radio.rate's solver forms; `LinkState.dl_psd_pool_hz`).
    Degenerate problems (`pair_degenerate`) get `degenerate_split`'s answer.
    split_arrays.pair_split is this, operation for operation, on arrays."""
    if not (budget > 0.0 and d0 > 0.0 and d1 > 0.0 and u0 > 0.0 and u1 > 0.0):  # one test on the fast path
        degenerate = pair_degenerate(a0, a1, c0, c1, d0, d1, u0, u1, budget)
        if degenerate is not None:
            return degenerate
    b = _pair_start(a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget, dl_pool)
    lo, hi = 0.0, budget
    for _ in range(max_iter):
        e = budget - b
        t0, w0 = scalar_time(b, a0, c0, base0, d0, u0, dl_pool)
        t1, w1 = scalar_time(e, a1, c1, base1, d1, u1, dl_pool)
        f = t0 - t1
        if abs(f) <= rtol * max(t0, t1):
            return b, e
        if f > 0.0:
            lo = b
        else:
            hi = b
        step = pair_model_step(b, e, t0, 1.0 / w0, t1, 1.0 / w1, budget)
        b = step if lo < step < hi else 0.5 * (lo + hi)
    return None


def pair_degenerate(a0: float, a1: float, c0: float, c1: float, d0: float, d1: float, u0: float, u1: float,
                    budget: float) -> tuple[float, float] | None:
    """`degenerate_split` for `pair_split`'s two devices, or None where the problem is not degenerate."""
    if not budget >= 0.0 or math.isinf(budget):
        raise ValueError(f"the bandwidth budget is {budget!r} Hz; give a finite budget >= 0 Hz")
    dead0 = (a0 > 0.0 and not d0 > 0.0) or (c0 > 0.0 and not u0 > 0.0)
    dead1 = (a1 > 0.0 and not d1 > 0.0) or (c1 > 0.0 and not u1 > 0.0)
    if budget == 0.0:
        return 0.0, 0.0
    if dead0 and dead1:
        return 0.5 * budget, 0.5 * budget
    if dead0:
        return 0.0, budget
    if dead1:
        return budget, 0.0
    return None


def degenerate_split(moves: np.ndarray, dead: np.ndarray, budget_hz: float) -> np.ndarray | None:
    """The min-max split where it is degenerate, or None. A device that moves bits over a direction with an SNR of
    0 (a dead link) never finishes: the layer's time is infinite whatever the split, so the dead devices get 0 Hz
    and the live ones share the whole budget (min-max among them: `minmax_split` recurses) so that they finish as
    early as they can; only dead devices: the budget in equal parts. A budget of 0 Hz gives every device 0 Hz
    (infinite time where bits move). moves, dead: (D,) masks of the devices that move bits and of the dead ones
    among them. Returns the shares (D,) for the zero budget and the all-dead cases, None otherwise."""
    if budget_hz == 0.0:
        return np.zeros(moves.shape[0])
    if dead.any() and not (moves & ~dead).any():
        return np.where(dead, budget_hz / int(np.count_nonzero(dead)), 0.0)
    return None


def _bisection(need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray,
               s_ul: np.ndarray, budget: float, dl_pool: float) -> np.ndarray:
    """Slow and sure: bisect T; for each T, bisect log b_k(T) = min{b : t_k(b) <= T} per device (vectorized)."""
    n = need_dl.shape[0]
    dl_floor = 0.0 if dl_pool > 0.0 else need_dl / s_dl  # a downlink at a constant spectral density: 0 s
    floor = base + dl_floor + need_ul / s_ul  # t_k with infinite bandwidth
    t_lo = float(floor.max())
    t_hi = float(time_and_inverse_slope(np.full(n, budget / n), need_dl, need_ul, base, s_dl, s_ul,
                                        dl_pool)[0].max())
    log_lo, log_hi = log(budget) - 80.0, log(budget)

    def shares(target: float) -> np.ndarray:
        lo, hi = np.full(n, log_lo), np.full(n, log_hi)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            fast = time_and_inverse_slope(exp_array(mid), need_dl, need_ul, base, s_dl, s_ul, dl_pool)[0] <= target
            hi = np.where(fast, mid, hi)
            lo = np.where(fast, lo, mid)
        fits = time_and_inverse_slope(exp_array(hi), need_dl, need_ul, base, s_dl, s_ul, dl_pool)[0] <= target
        return np.where(fits, exp_array(hi), np.inf)

    for _ in range(200):
        mid = 0.5 * (t_lo + t_hi)
        if shares(mid).sum() <= budget:
            t_hi = mid
        else:
            t_lo = mid
    b = shares(t_hi)
    return b * (budget / b.sum())


def minmax_split(bits_dl: np.ndarray, bits_ul: np.ndarray, compute_s: np.ndarray, snr_dl_per_hz: np.ndarray,
                 snr_ul_per_hz: np.ndarray, budget_hz: float, active: np.ndarray, rtol: float = 1e-10,
                 max_iter: int = 60, *, dl_pool_hz: float = 0.0) -> np.ndarray:
    """The exact min-max bandwidth split (module docstring), (D,) Hz summing to budget_hz; dl_pool_hz is the links'
    downlink power model (`LinkState.dl_psd_pool_hz`: the pool of a constant spectral density, or 0.0).

    Devices that move bits share the whole budget so that they all finish together; active devices that move
    no bits, and idle devices, get 0 Hz. When no device moves bits, the active devices share it equally.
    Dead links (an SNR of 0 where bits move) and a zero budget: `degenerate_split`. A negative or non-finite
    budget, or a negative or nan SNR, raises ValueError.
    """
    if not budget_hz >= 0.0 or math.isinf(budget_hz):
        raise ValueError(f"the bandwidth budget is {budget_hz!r} Hz; give a finite budget >= 0 Hz")
    need = active & ((bits_dl > 0.0) | (bits_ul > 0.0))
    dead = need & (((bits_dl > 0.0) & ~(snr_dl_per_hz > 0.0)) | ((bits_ul > 0.0) & ~(snr_ul_per_hz > 0.0)))
    if dead.any() or budget_hz == 0.0:
        return _degenerate_minmax(bits_dl, bits_ul, compute_s, snr_dl_per_hz, snr_ul_per_hz, budget_hz, need,
                                  dead, rtol, max_iter, dl_pool_hz)
    count = int(np.count_nonzero(need))
    out = np.zeros(need.shape[0])
    if count == 0:
        return equal_split(active, budget_hz)
    if count == 1:
        out[need] = budget_hz
        return out
    if count == need.shape[0]:  # the common case: skip the fancy indexing (decisions take microseconds)
        args = (bits_dl * LN2, bits_ul * LN2, compute_s, snr_dl_per_hz, snr_ul_per_hz, float(budget_hz))
    else:
        args = (bits_dl[need] * LN2, bits_ul[need] * LN2, compute_s[need], snr_dl_per_hz[need],
                snr_ul_per_hz[need], float(budget_hz))
    if count == 2:
        b = _newton_pair(*args, rtol=rtol, max_iter=max_iter, dl_pool=dl_pool_hz)
    else:
        b = _newton(*args, rtol=rtol, max_iter=max_iter, dl_pool=dl_pool_hz)
    if b is None:
        b = _bisection(*args, dl_pool=dl_pool_hz)
    if count == need.shape[0]:
        return b
    out[need] = b
    return out


def _degenerate_minmax(bits_dl: np.ndarray, bits_ul: np.ndarray, compute_s: np.ndarray, snr_dl: np.ndarray,
                       snr_ul: np.ndarray, budget_hz: float, need: np.ndarray, dead: np.ndarray, rtol: float,
                       max_iter: int, dl_pool_hz: float) -> np.ndarray:
    """`minmax_split` with dead links or no band (`degenerate_split`); a negative or nan SNR is an error."""
    for name, snr, bits in (("snr_dl_per_hz", snr_dl, bits_dl), ("snr_ul_per_hz", snr_ul, bits_ul)):
        bad = np.flatnonzero(need & (bits > 0.0) & ((snr < 0.0) | np.isnan(snr)))
        if bad.size:
            raise ValueError(f"device {int(bad[0])} has {name} = {float(snr[bad[0]])} Hz; an SNR is >= 0 (0: a dead "
                             "link, which takes infinitely long)")
    split = degenerate_split(need, dead, budget_hz)
    if split is not None:
        return split
    live = need & ~dead
    return minmax_split(bits_dl, bits_ul, compute_s, snr_dl, snr_ul, budget_hz, live, rtol, max_iter,
                        dl_pool_hz=dl_pool_hz)


@dataclass(frozen=True)
class EqualBandwidth:
    """The budget split equally among the active devices; as a policy, the router's top-k unchanged."""

    name = "equal"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def allocate(self, state: LayerState, keep: np.ndarray) -> np.ndarray:
        return equal_split(device_costs(state, keep).active, state.bandwidth_hz)

    def decide(self, state: LayerState) -> Decision:
        keep = np.ones(state.topk_index.shape, dtype=bool)
        return Decision(keep, state.topk_weight.astype(float), self.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None


@dataclass(frozen=True)
class MinMaxBandwidth:
    """The exact min-max split (every active device finishes together); as a policy, the router's top-k."""

    rtol: float = 1e-10
    name = "minmax"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def allocate(self, state: LayerState, keep: np.ndarray) -> np.ndarray:
        costs = device_costs(state, keep)
        return minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s, state.link.snr_dl_per_hz,
                            state.link.snr_ul_per_hz, state.bandwidth_hz, costs.active, self.rtol,
                            dl_pool_hz=state.link.dl_psd_pool_hz)

    def decide(self, state: LayerState) -> Decision:
        keep = np.ones(state.topk_index.shape, dtype=bool)
        return Decision(keep, state.topk_weight.astype(float), self.allocate(state, keep))

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None
