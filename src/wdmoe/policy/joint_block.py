"""The joint policy's exact search for a small block of tokens (a short prefill), by enumeration with bounds.

Contract: `solve_block(rule, state, max_masks)` returns the keep mask (T, k) that maximises the joint objective
(policy.joint_search) over every mask in which each token keeps >= 1 slot and >= rho x its top-k weight, with the
exact min-max split of that mask (ties: joint_search.better), or None when the block has more than `max_masks`
feasible masks (the caller then runs its heuristic and certifies a gap).

Exact, not a heuristic: every feasible mask is enumerated (the product of each token's feasible slot subsets). A
mask's layer time depends only on its load (tokens sent to each device, tokens kept on each expert), so masks are
grouped by load and each load keeps its heaviest mask (equal weight: the higher key). Each load gets an upper bound
on its metric (its weight, and a floor on its time: the slowest active device alone on the band, and
joint_search.tangent_floor with tangents at the equal share); loads are solved exactly (policy.bandwidth.
minmax_split, the radio model's costs and times) in decreasing order of the bound until it falls below the best.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from wdmoe.policy.base import LayerState
from wdmoe.policy.joint_search import FLOOR_SLACK, JointRule, better, objective_array, tangent_floor_array
from wdmoe.policy.selection import profiles_of
from wdmoe.radio.compute import roofline_time_s
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope


@dataclass(frozen=True)
class BlockChoice:
    """The chosen keep (T, k) and its kept weight."""

    keep: np.ndarray
    kept_weight: float


def _token_subsets(weight: np.ndarray, rho: float, limit: float = np.inf) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """Per token: its feasible slot subsets (s, k) bool and their kept weights (s,), summed in slot order; None
    as soon as their product (the number of feasible masks) exceeds `limit`."""
    k = weight.shape[1]
    every = np.array(list(itertools.product((True, False), repeat=k)), dtype=bool)[:-1]  # nonempty, keep-all first
    out: list[tuple[np.ndarray, np.ndarray]] = []
    count = 1
    for row in weight:
        kept = np.zeros(every.shape[0])
        for j in range(k):
            kept = kept + np.where(every[:, j], row[j], 0.0)
        total = 0.0
        for w in row.tolist():
            total += w
        ok = kept >= rho * total
        out.append((every[ok], kept[ok]))
        count *= int(ok.sum())
        if count > limit:
            return None
    return out


def feasible_masks(weight: np.ndarray, rho: float) -> int:
    """The number of feasible keep masks of a block (the product over tokens of their feasible subsets)."""
    count = 1
    for subsets, _ in _token_subsets(weight, rho) or []:
        count *= subsets.shape[0]
    return count


def _enumerate(subsets: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Every feasible mask (m, T, k) and its kept weight (m,), the token sums added in token order."""
    index = np.zeros((1, 0), dtype=np.int64)  # (m, tokens so far): the cartesian product, token 0 slowest
    for s, _ in subsets:
        size = s.shape[0]
        index = np.concatenate([np.repeat(index, size, axis=0), np.tile(np.arange(size), index.shape[0])[:, None]],
                               axis=1)
    picks = [index[:, j] for j in range(len(subsets))]
    masks = np.stack([subsets[j][0][pick] for j, pick in enumerate(picks)], axis=1)  # (m, T, k)
    kept = np.zeros(masks.shape[0])
    for j, pick in enumerate(picks):
        kept = kept + subsets[j][1][pick]
    return masks, kept


def solve_block(rule: JointRule, state: LayerState, max_masks: int,
                evaluate: Callable[[np.ndarray, float], tuple[float, float]]) -> BlockChoice | None:
    """The exact joint decision of a small block (module docstring); `evaluate(keep, kept_weight)` gives the
    metric and layer time of a mask (the policy's own evaluation, min-max split included)."""
    weight = state.topk_weight.astype(float)
    subsets = _token_subsets(weight, rule.rho, max_masks)
    if subsets is None:
        return None
    masks, kept = _enumerate(subsets)
    m, t, k = masks.shape
    flat = masks.reshape(m, t * k)
    key = flat.astype(np.int64) @ (np.int64(1) << np.arange(t * k - 1, -1, -1, dtype=np.int64))
    profiles = profiles_of(state)
    num_devices, num_experts = state.num_devices, state.expert_device.shape[0]
    slot_device = state.expert_device[state.topk_index]  # (T, k)
    experts = np.zeros((m, num_experts), dtype=np.int64)
    to_device = np.zeros((m, t, num_devices), dtype=bool)
    for j in range(t):
        for slot in range(k):
            experts[:, state.topk_index[j, slot]] += masks[:, j, slot]
            to_device[:, j, slot_device[j, slot]] |= masks[:, j, slot]
    tokens_dl = to_device.sum(axis=1)  # (m, D)
    load = np.concatenate([experts, tokens_dl], axis=1)
    loads, inverse = np.unique(load, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    # each load's heaviest mask, the higher key on a tie: order by (load, kept, key) and take each load's last
    order = np.lexsort((key, kept, inverse))
    last = order[np.r_[np.flatnonzero(np.diff(inverse[order])), m - 1]]
    best_of_load = last  # (L,) mask index per load, in load order
    expert_tokens = loads[:, :num_experts].astype(float)
    tokens = loads[:, num_experts:].astype(float)
    on = state.expert_device  # (E,)
    per_expert = roofline_time_s(expert_tokens, state.expert_flops_per_token, state.expert_weight_bytes,
                                 profiles.flops_per_s[on], profiles.mem_bytes_per_s[on], profiles.overhead_s[on])
    compute = per_expert @ (on[:, None] == np.arange(num_devices)[None, :]).astype(float)  # (L, D)
    pairs = expert_tokens @ (on[:, None] == np.arange(num_devices)[None, :]).astype(float)
    active = pairs > 0.0
    floor = _floors(state, tokens, pairs, compute, active)
    bound = objective_array(rule, kept[best_of_load] * (1.0 + 1e-12),
                            state.bs_time_s + np.maximum(floor, 0.0) * (1.0 - FLOOR_SLACK))
    bound = np.where(np.isnan(bound), np.inf, bound)
    best, best_key, chosen = math.nan, -1, -1
    for i in np.lexsort((-key[best_of_load], -bound)).tolist():
        if bound[i] < best:
            break
        mask_index = int(best_of_load[i])
        metric, _ = evaluate(masks[mask_index], float(kept[mask_index]))
        if better(metric, int(key[mask_index]), best, best_key):
            best, best_key, chosen = metric, int(key[mask_index]), mask_index
    if chosen < 0:  # every metric is nan: the router's top-k
        return BlockChoice(np.ones((t, k), dtype=bool), float(weight.sum()))
    return BlockChoice(masks[chosen], float(kept[chosen]))


def _floors(state: LayerState, tokens: np.ndarray, pairs: np.ndarray, compute: np.ndarray,
            active: np.ndarray) -> np.ndarray:
    """(L,) a lower bound on each load's min-max device time (module docstring)."""
    link, budget = state.link, state.bandwidth_hz
    need, pool = state.bits_per_token * LN2, link.dl_psd_pool_hz
    dl, ul = link.snr_dl_per_hz[None, :], link.snr_ul_per_hz[None, :]
    if need == 0.0:
        return np.where(active, compute, 0.0).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        alone, _ = time_and_inverse_slope(np.full(tokens.shape, budget), need * tokens, need * pairs, compute, dl, ul,
                                          pool)
        floor = np.where(active, alone, -np.inf).max(axis=1)
        n = active.sum(axis=1, keepdims=True)
        b0 = np.broadcast_to(budget / np.maximum(n, 1), tokens.shape)
        t0, w0 = time_and_inverse_slope(b0, need * tokens, need * pairs, compute, dl, ul, pool)
        w0 = np.where(active & (w0 > 0.0), w0, 0.0)
        tangent = tangent_floor_array(b0 + w0 * t0, w0, budget)
    return np.maximum(floor, tangent)
