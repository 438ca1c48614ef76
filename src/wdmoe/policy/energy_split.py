"""The energy-minimizing bandwidth split of one layer step under a per-device time cap (pure Python floats).

Contract: given the active devices of a selection (radio.energy.ShareDevice: bits, compute, SNRs, powers), the
band B and a cap on each device's round trip, solve

    min_b  sum_d e_d(b_d)   s.t.  sum_d b_d <= B,  t_d(b_d) <= cap,  b_d >= 0

with t_d, e_d from radio.energy.share_cost (strictly decreasing and convex in b_d while bits move). Feasible iff
every t_d(B) <= cap and the minimum shares lo_d (t_d(lo_d) = cap) fit: sum lo_d <= B. Then the band is used whole
and, by KKT, every device above its minimum share has the same marginal energy |e_d'(b_d)| = nu:

    b_d(nu) = lo_d            if |e_d'(lo_d)| <= nu
            = B               if |e_d'(B)| >= nu
            = |e_d'|^-1(nu)   otherwise;     sum_d b_d(nu) = B fixes nu (decreasing in nu).

One device takes B; two devices are one monotone root in b_1; more are a root in log nu around a root per device.
Roots are bracketed (regula falsi, Illinois, with bisection when it stalls) to a relative width of 1e-14, so the
split is optimal to that tolerance (tests/unit/policy/test_energy.py checks it against a brute-force reference).
A device that moves no bits has constant t and e: it takes its minimum share (0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from wdmoe.radio.energy import ShareDevice, share_cost
from wdmoe.radio.exactmath import exp, log

_XTOL = 1e-14  # relative bracket width at which a root is taken
_MAX_ITER = 400
_FIT = 1e-9  # minimum shares that overshoot the band by this relative amount (root rounding) are scaled to fit


@dataclass(frozen=True)
class EnergySplit:
    """feasible: whether the cap can be met; shares_hz, times_s: per device, in the given order; energy_j: total."""

    feasible: bool
    shares_hz: tuple[float, ...]
    times_s: tuple[float, ...]
    energy_j: float


def _root(fn: Callable[[float], float], a: float, b: float) -> tuple[float, float]:
    """A bracket [a, b] (a < b) of a sign change of the monotone `fn`, narrowed to relative width _XTOL: regula
    falsi with the Illinois halving, a bisection step whenever the bracket shrank by less than half."""
    fa, fb = fn(a), fn(b)
    if fa == 0.0:
        return a, a
    if fb == 0.0:
        return b, b
    side, width = 0, b - a
    for _ in range(_MAX_ITER):
        if b - a <= _XTOL * max(abs(a), abs(b)):
            break
        c = (a * fb - b * fa) / (fb - fa) if math.isfinite(fa) and math.isfinite(fb) else math.nan
        if not a < c < b or b - a > 0.5 * width:
            c = 0.5 * (a + b)
        width = b - a
        fc = fn(c)
        if fc == 0.0:
            return c, c
        if (fc > 0.0) == (fb > 0.0):
            b, fb = c, fc
            if side == -1:
                fa *= 0.5
            side = -1
        else:
            a, fa = c, fc
            if side == 1:
                fb *= 0.5
            side = 1
    return a, b


def min_share_hz(device: ShareDevice, budget_hz: float, cap_s: float) -> float | None:
    """The smallest share with t(b) <= cap (the bracket's upper end, so the cap holds), or None if even the
    whole band misses the cap."""
    if share_cost(budget_hz, device).time_s > cap_s:
        return None
    if not _moves_bits(device) or not math.isfinite(cap_s):  # no cap to meet
        return 0.0
    low = 0.5 * budget_hz
    while share_cost(low, device).time_s <= cap_s:  # t -> inf as b -> 0 while bits move: this ends
        low *= 0.5
    return _root(lambda b: cap_s - share_cost(b, device).time_s, low, budget_hz)[1]


def energy_split(devices: Sequence[ShareDevice], budget_hz: float, cap_s: float) -> EnergySplit:
    """The energy-minimizing split under the cap (module docstring)."""
    lows = [min_share_hz(d, budget_hz, cap_s) for d in devices]
    if any(low is None for low in lows):
        return EnergySplit(False, (), (), math.inf)
    lo = [float(low) for low in lows if low is not None]
    total_lo = sum(lo)
    if total_lo > budget_hz * (1.0 + _FIT):
        return EnergySplit(False, (), (), math.inf)
    if total_lo > budget_hz:
        lo = [x * budget_hz / total_lo for x in lo]
    shares = _kkt_shares(devices, lo, budget_hz)
    costs = [share_cost(b, d) for b, d in zip(shares, devices, strict=True)]
    return EnergySplit(True, tuple(shares), tuple(c.time_s for c in costs), sum(c.energy_j for c in costs))


def _moves_bits(device: ShareDevice) -> bool:
    return device.bits_dl > 0.0 or device.bits_ul > 0.0


def _kkt_shares(devices: Sequence[ShareDevice], lo: list[float], budget_hz: float) -> list[float]:
    free = [i for i, d in enumerate(devices) if _moves_bits(d)]
    shares = list(lo)
    rest = budget_hz - sum(lo)
    if not free:  # nothing depends on the band: spread the rest equally
        return [x + rest / len(devices) for x in lo]
    if len(free) == 1:
        shares[free[0]] += rest
        return shares
    if len(free) == 2:
        i, j = free
        hi_i = lo[i] + rest

        def slope_gap(b: float) -> float:  # increasing in b: e_i' rises, e_j' at B - b - (others) falls
            return share_cost(b, devices[i]).energy_slope - share_cost(budget_hz - b - _others(lo, i, j),
                                                                          devices[j]).energy_slope

        if slope_gap(lo[i]) >= 0.0:
            b_i = lo[i]
        elif slope_gap(hi_i) <= 0.0:
            b_i = hi_i
        else:
            b_i = _root(slope_gap, lo[i], hi_i)[0]
        shares[i], shares[j] = b_i, budget_hz - b_i - _others(lo, i, j)
        return shares
    return _by_marginal(devices, lo, free, budget_hz)


def _others(lo: list[float], i: int, j: int) -> float:
    return sum(x for k, x in enumerate(lo) if k not in (i, j))


def _by_marginal(devices: Sequence[ShareDevice], lo: list[float], free: list[int], budget_hz: float) -> list[float]:
    """Three or more devices move bits: the root in log nu of sum_d b_d(nu) = B (module docstring)."""
    fixed = sum(x for k, x in enumerate(lo) if k not in free)

    def share_at(i: int, nu: float) -> float:
        if -share_cost(lo[i], devices[i]).energy_slope <= nu:
            return lo[i]
        if -share_cost(budget_hz, devices[i]).energy_slope >= nu:
            return budget_hz
        return _root(lambda b: nu + share_cost(b, devices[i]).energy_slope, lo[i], budget_hz)[0]

    def excess(log_nu: float) -> float:  # decreasing in nu; the root's bracket wants an increasing function
        nu = exp(log_nu)
        return budget_hz - fixed - sum(share_at(i, nu) for i in free)

    low = min(-share_cost(budget_hz, devices[i]).energy_slope for i in free)
    high = max(-share_cost(lo[i], devices[i]).energy_slope for i in free)
    log_low, log_high = log(max(low, 1e-300)), log(high) if math.isfinite(high) else log(max(low, 1e-300)) + 1.0
    while excess(log_high) < 0.0:  # an infinite slope at a zero minimum share: widen until all sit at lo
        log_high += 1.0 + abs(log_high)
    b = _root(excess, log_low, log_high)[1]
    nu = exp(b)  # the end with sum_d b_d <= B, so every share stays at or above its minimum
    shares = list(lo)
    for i in free:
        shares[i] = share_at(i, nu)
    widest = max(free, key=lambda i: shares[i])
    shares[widest] += budget_hz - sum(shares)  # the root's rounding, given where it costs no cap
    return shares
