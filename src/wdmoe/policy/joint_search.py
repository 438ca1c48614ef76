"""The joint policy's objective and the lower bound on the min-max layer time that lets its exact searches prune.

Contract: `objective(rule, kept_weight, layer_s)` is the metric M the joint policy maximises (policy.joint):

    ratio:       M = W / T_layer            (inf when T_layer = 0)
    lagrangian:  M = W - lam * T_layer      (W alone when lam = 0, so that a dead link's inf time gives W, not nan)

and `better(metric, key, best, best_key)` the one order every search and its batched twin use to pick among the
candidates: the higher metric, and on an exact tie the higher key (the keep mask read as a binary number, slot 0 of
token 0 the most significant bit: the one that keeps earlier slots). A nan metric is never chosen.

`tangent_floor(c, w, budget)` bounds the min-max time of a set of devices from below without solving it. Each
device's time t_d(b) is convex and decreasing in its share b (radio.rate: b over a concave rate), so the least share
that finishes by T, b_d(T), is convex and decreasing in T and lies above its tangent at any point (b0, t_d(b0)):
b_d(T) >= b0 - w (T - t_d(b0)) = c - w T with w = 1/|t_d'(b0)| and c = b0 + w t_d(b0). At the optimum
sum_d b_d(T*) = B, so for every subset J of the devices sum_J (c_d - w_d T*) <= B, i.e.
T* >= (sum_J c - B) / sum_J w; the best J is a prefix of the devices sorted by c / w, descending. The searches
compare this bound, with `FLOOR_SLACK`, to the incumbent: the solvers' own T is within their rtol of the optimum.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

FLOOR_SLACK = 1e-8  # relative: a bound is lowered by this before it prunes (solvers converge to rtol 1e-10)


class JointRule(Protocol):
    """The settings of `policy.joint.JointSelectionBandwidth` the searches read (its attributes)."""

    @property
    def form(self) -> str: ...

    @property
    def lam(self) -> float: ...

    @property
    def rho(self) -> float: ...

    @property
    def max_iter(self) -> int: ...

    @property
    def tol(self) -> float: ...


def objective(rule: JointRule, kept_weight: float, layer_s: float) -> float:
    """M of a keep mask with kept weight W and layer time T (module docstring)."""
    if rule.form == "ratio":
        return kept_weight / layer_s if layer_s > 0.0 else math.inf
    if rule.lam == 0.0:
        return kept_weight
    return kept_weight - rule.lam * layer_s


def objective_array(rule: JointRule, kept_weight: np.ndarray, layer_s: np.ndarray) -> np.ndarray:
    """`objective` elementwise (the same operations, so the same bits)."""
    if rule.form == "ratio":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(layer_s > 0.0, kept_weight / layer_s, np.inf)
    if rule.lam == 0.0:
        return kept_weight + 0.0
    with np.errstate(invalid="ignore"):
        return kept_weight - rule.lam * layer_s


def optimistic(rule: JointRule, kept_weight: float, bs_time_s: float, floor_s: float) -> float:
    """An upper bound on M of any candidate with kept weight <= W and layer time >= bs + floor (floor lowered by
    FLOOR_SLACK, W raised by 1e-12: the candidates' own sums and solves round differently)."""
    return objective(rule, kept_weight * (1.0 + 1e-12), bs_time_s + max(floor_s, 0.0) * (1.0 - FLOOR_SLACK))


def better(metric: float, key: int, best: float, best_key: int) -> bool:
    """Does (metric, key) beat (best, best_key)? best is nan while there is none."""
    if metric != metric:  # nan
        return False
    return best != best or metric > best or (metric == best and key > best_key)


def tangent_floor(c: list[float], w: list[float], budget: float) -> float:
    """max over prefixes J (by c / w, descending) of (sum_J c - B) / sum_J w (module docstring); -inf if none
    is defined. Python floats: decode sets hold at most 8 devices."""
    lines = sorted(((ci / wi, ci, wi) for ci, wi in zip(c, w, strict=True)
                    if 0.0 < wi < math.inf and -math.inf < ci < math.inf),
                   reverse=True)
    best, sum_c, sum_w = -math.inf, 0.0, 0.0
    for _, ci, wi in lines:
        sum_c += ci
        sum_w += wi
        best = max(best, (sum_c - budget) / sum_w)
    return best


def tangent_floor_array(c: np.ndarray, w: np.ndarray, budget: float) -> np.ndarray:
    """`tangent_floor` for m sets at once: c, w (m, D) with w = 0 on devices outside a set; (m,) floors."""
    valid = (w > 0.0) & np.isfinite(w) & np.isfinite(c)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(valid, c / np.where(valid, w, 1.0), -np.inf)
    order = np.argsort(-z, axis=1, kind="stable")
    cs = np.cumsum(np.take_along_axis(np.where(valid, c, 0.0), order, axis=1), axis=1)
    ws = np.cumsum(np.take_along_axis(np.where(valid, w, 0.0), order, axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        floors = np.where(ws > 0.0, (cs - budget) / ws, -np.inf)
    return floors.max(axis=1, initial=-np.inf)
