"""A certified optimality gap for the joint policy's heuristic on large blocks: an upper bound on its objective.

Contract: `certified_gap(rule, state, metric, bandwidth_hz, keep)` returns g >= 0 with
M* <= M + g |UB| where M* is the optimum of the joint objective (policy.joint_search) over every feasible keep mask
and split, M the heuristic's metric and UB the bound below; inf when no bound is found. Relaxation and duality:

1. Pairs. A pair is mandatory when its token cannot meet the guard without it (every feasible mask keeps it); the
   others are optional, and the relaxation lets any subset of them go (a superset of the feasible masks). On device
   d, keeping x optional pairs adds at most P_d(x), the sum of its x heaviest optional weights, and at least the load
   L_d(x): the mandatory load plus x uplinked pairs, the fewest new downlinked tokens that can carry x pairs, and a
   roofline floor (sum_e max(n_e F/C, W/M) + overhead >= max(F/C * pairs, W/M) + overhead * running experts).
   Device times rise with the load, so t_d >= t_d(b_d, L_d(x_d)).
2. Duality. For mu in the simplex, max_d t_d >= sum_d mu_d t_d; with nu >= 0 on the band (sum_d b_d = B), for any
   feasible (a, b):  W - lam (bs + T) <= W_mand - lam (bs - nu B) + sum_d max_x [P_d(x) - lam psi_d(x)],
   psi_d(x) = min_{b >= 0} mu_d t_d(b, L_d(x)) + nu b  (a convex one-dimensional problem; the bracket of its
   minimiser from a bisection gives a certified lower bound). mu and nu are the min-max split's KKT multipliers at
   the heuristic's point (mu_d proportional to 1 / |t_d'|, nu = 1 / sum_d 1 / |t_d'|).
3. Forms. Lagrangian: UB(lam) directly, g = (UB - M) / |UB|. Ratio (Dinkelbach): M* <= gamma whenever UB(gamma)
   <= 0, so the least such gamma (bisection; UB is convex in gamma) bounds M*, g = (gamma - M) / gamma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.policy.joint_counts import mandatory_pairs
from wdmoe.policy.joint_search import JointRule
from wdmoe.policy.selection import device_costs, profiles_of
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope

_SLACK = 1e-9  # relative: the bound is raised by this for the rounding of its own arithmetic


@dataclass(frozen=True)
class GapBound:
    """The certified gap, and the relaxation's own choice as a keep mask (T, k) when it is feasible: the
    mandatory pairs and each device's x heaviest optional pairs, x maximising its term at the metric's price (the
    heuristic tries it; None when the relaxation's choice breaks a token's guard)."""

    gap: float
    suggestion: np.ndarray | None
    upper: float = math.inf  # the bound UB >= M* itself (the gap is (UB - M) / |UB|)


def gap_of(upper: float, metric: float) -> float:
    """The relative gap (UB - M) / |UB| of a metric M under a certified bound UB on the optimum; inf without one."""
    if not (math.isfinite(upper) and math.isfinite(metric)):
        return math.inf
    return max(upper - metric, 0.0) / max(abs(upper), 1e-300)


def counts_mask(rule: JointRule, state: LayerState, mandatory: np.ndarray, rank: np.ndarray,
                x: np.ndarray) -> np.ndarray | None:
    """The keep mask (T, k) of the mandatory pairs and each device's x_d heaviest optional pairs (`rank` from
    `device_tables`); None when it breaks a token's guard."""
    weight = state.topk_weight.astype(float)
    mask = mandatory | (rank < x[state.expert_device[state.topk_index]])
    kept = np.where(mask, weight, 0.0).sum(axis=1)
    feasible = mask.any(axis=1) & (kept >= rule.rho * weight.sum(axis=1))
    return mask if feasible.all() else None


def device_tables(state: LayerState, mandatory: np.ndarray) -> tuple[np.ndarray, ...]:
    """(D, X + 1) tables over x, the optional pairs kept per device: P_d(x) (-inf beyond the device's optional
    pairs), and the load floor: tokens downlinked, pairs uplinked, compute seconds; and W_mand."""
    weight = state.topk_weight.astype(float)
    device = state.expert_device[state.topk_index]  # (T, k)
    profiles = profiles_of(state)
    num_devices, num_tokens = state.num_devices, state.num_tokens
    optional = ~mandatory
    x_max = int(np.bincount(device[optional], minlength=num_devices).max(initial=0))
    xs = np.arange(x_max + 1, dtype=float)
    gain = np.full((num_devices, x_max + 1), -np.inf)
    rank = np.zeros(weight.shape, dtype=np.int64)  # each optional pair's place on its device, heaviest first
    tokens = np.zeros((num_devices, x_max + 1))
    pairs = np.zeros((num_devices, x_max + 1))
    compute = np.zeros((num_devices, x_max + 1))
    flops = state.expert_flops_per_token / profiles.flops_per_s
    memory = state.expert_weight_bytes / profiles.mem_bytes_per_s
    rows = np.arange(num_tokens)[:, None].repeat(device.shape[1], axis=1)
    for d in range(num_devices):
        on, mand, opt = device == d, mandatory & (device == d), optional & (device == d)
        order = np.argsort(-weight[opt], kind="stable")
        opt_w = weight[opt][order]
        place = np.empty(order.size, dtype=np.int64)
        place[order] = np.arange(order.size)
        rank[opt] = place
        gain[d, : opt_w.size + 1] = np.concatenate([[0.0], np.cumsum(opt_w)])
        mand_tokens = np.unique(rows[mand])
        # optional pairs of tokens already sent to d are free; the others come in groups of one token each
        free = int(np.isin(rows[opt], mand_tokens).sum())
        groups = np.sort(np.bincount(rows[opt & ~np.isin(rows, mand_tokens)], minlength=num_tokens))[::-1]
        covered = np.concatenate([[0], np.cumsum(groups[groups > 0])])
        extra = np.searchsorted(covered, np.maximum(xs - free, 0.0), side="left")
        tokens[d] = mand_tokens.size + extra
        pairs[d] = mand.sum() + xs
        mand_experts = np.unique(state.topk_index[mand])
        running = np.maximum(mand_experts.size, (xs > 0).astype(float)) if on.any() else np.zeros_like(xs)
        counts = np.bincount(state.topk_index[mand], minlength=state.expert_device.shape[0])[mand_experts]
        exact_mand = float((np.maximum(counts * flops[d], memory[d]) + profiles.overhead_s[d]).sum())
        compute[d] = np.where(pairs[d] > 0, np.maximum.reduce([
            np.full_like(xs, exact_mand), flops[d] * pairs[d] + profiles.overhead_s[d] * running,
            (memory[d] + profiles.overhead_s[d]) * running]), 0.0)
    w_mand = float(np.where(mandatory, weight, 0.0).sum())
    return gain, tokens, pairs, compute, np.array(w_mand), rank


def _psi(state: LayerState, mu: np.ndarray, nu: float, tokens: np.ndarray, pairs: np.ndarray,
         compute: np.ndarray) -> np.ndarray:
    """(D, X + 1) a certified lower bound on min_{b >= 0} mu_d t_d(b, load) + nu b (module docstring, 2)."""
    need = state.bits_per_token * LN2
    mu_c = mu[:, None] * np.ones_like(tokens)
    loaded = (pairs > 0.0) & (mu_c > 0.0)
    if need == 0.0 or nu <= 0.0:
        return np.where(loaded, mu_c * compute, 0.0)
    dl, ul = state.link.snr_dl_per_hz[:, None], state.link.snr_ul_per_hz[:, None]
    need_dl, need_ul = need * tokens, need * pairs

    def phi(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # value and derivative of mu t(b) + nu b
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t, inverse = time_and_inverse_slope(b, need_dl, need_ul, compute, dl, ul, state.link.dl_psd_pool_hz)
            return mu_c * t + nu * b, nu - mu_c / inverse

    lo = np.full(tokens.shape, state.bandwidth_hz * 1e-12)
    hi = np.full(tokens.shape, state.bandwidth_hz * 1e9)
    for _ in range(48):  # bisection in log b (a 1e21 bracket to ~1e-13 relative) on the sign of the derivative
        mid = np.sqrt(lo * hi)
        _, slope = phi(mid)
        up = slope > 0.0
        hi, lo = np.where(up, mid, hi), np.where(up, lo, mid)
    value_lo, slope_lo = phi(lo)
    value_hi, slope_hi = phi(hi)
    with np.errstate(invalid="ignore"):
        floor = np.maximum(value_lo + np.minimum(slope_lo, 0.0) * (hi - lo),
                           value_hi - np.maximum(slope_hi, 0.0) * (hi - lo))
    floor = np.where(np.isfinite(floor), floor, np.minimum(value_lo, value_hi))
    return np.where(loaded, np.maximum(floor, 0.0), 0.0)


def certified_gap(rule: JointRule, state: LayerState, metric: float, bandwidth_hz: np.ndarray,
                  keep: np.ndarray) -> GapBound:
    """g with M* <= M + g |UB| (module docstring); inf when no bound is found; and the relaxation's choice."""
    weight = state.topk_weight.astype(float)
    mandatory = mandatory_pairs(rule, weight)
    gain, tokens, pairs, compute, w_mand_array, rank = device_tables(state, mandatory)
    w_mand = float(w_mand_array)
    costs = device_costs(state, keep)
    need = state.bits_per_token * LN2
    on = costs.active
    inverse = np.zeros(state.num_devices)
    if need > 0.0 and on.any():
        with np.errstate(divide="ignore", invalid="ignore"):
            _, inverse[on] = time_and_inverse_slope(bandwidth_hz[on], costs.bits_dl[on] * LN2,
                                                    costs.bits_ul[on] * LN2, costs.compute_s[on],
                                                    state.link.snr_dl_per_hz[on], state.link.snr_ul_per_hz[on],
                                                    state.link.dl_psd_pool_hz)
    if not (np.isfinite(inverse).all() and inverse.sum() > 0.0):
        inverse = on.astype(float)  # no slopes (no payload): any point of the simplex is a valid mu
    mu, nu = inverse / inverse.sum(), (1.0 / inverse.sum() if need > 0.0 else 0.0)
    psi = _psi(state, mu, nu, tokens, pairs, compute)

    def bound(lam: float) -> float:
        best = np.where(np.isfinite(gain), gain - lam * psi, -np.inf).max(axis=1)
        value = w_mand - lam * (state.bs_time_s - nu * state.bandwidth_hz) + float(best.sum())
        return value + _SLACK * (abs(value) + w_mand + float(np.where(np.isfinite(gain), gain, 0.0).max(initial=0.0)))

    def suggestion(lam: float) -> np.ndarray | None:
        x = np.where(np.isfinite(gain), gain - lam * psi, -np.inf).argmax(axis=1)  # (D,)
        return counts_mask(rule, state, mandatory, rank, x)

    if rule.form == "lagrangian":
        upper = bound(rule.lam)
        return GapBound(max(upper - metric, 0.0) / max(abs(upper), 1e-300), suggestion(rule.lam), upper)
    if not metric > 0.0 or not math.isfinite(metric):
        return GapBound(math.inf, None)
    lo, hi = metric, metric
    for _ in range(60):  # the first gamma above M with UB(gamma) <= 0
        if bound(hi) <= 0.0:
            break
        lo, hi = hi, hi * 2.0
    else:
        return GapBound(math.inf, suggestion(metric))
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if bound(mid) <= 0.0:
            hi = mid
        else:
            lo = mid
    return GapBound(max(hi - metric, 0.0) / hi, suggestion(metric), hi)
