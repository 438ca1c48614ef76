"""The joint policy's one-token rounds (`JointSelectionBandwidth.decide` on one token), vectorized over n steps.

Contract: `decide_rounds(steps, policy)` equals `JointSelectionBandwidth.decide` on each step's LayerState for
steps whose slots lie on one or two devices and have a nonzero payload (the caller, `JointSelectionBandwidth.
decide_steps`, keeps the others for the per-state path): for each step the same greedy rounds as the reference,
in the same floating-point order: evaluate the top-k with its min-max split; while >= 2 slots are kept, offer the
kept slots whose loss keeps the guard, drop the lowest weight / (mu_d t_d / pairs_d), and accept when the metric
rises; stop when it rises by less than tol (relative). The two-device min-max split is
`policy.bandwidth.pair_split`'s safeguarded Newton, run on arrays (`policy.split_arrays`); a step whose split does
not converge is marked `fallback`. Any k; `policy.joint_top2` is the fast version for k = 2.

The rounds read the policy's settings through `JointRule`, so this module does not import policy.joint (which
imports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wdmoe.policy.split_arrays import pair_split_by_key, scalar_time
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.exactmath import LN2


class JointRule(Protocol):
    """The settings of `policy.joint.JointSelectionBandwidth` that the batched rounds read (its attributes)."""

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


def beyond_two_devices(steps: OneTokenSteps) -> np.ndarray:
    """(n,) bool: the steps whose slots span three or more devices (the rounds here solve at most two)."""
    device = _columns(steps.slot_device)
    on_a, (dev_b,) = _on_a_and_b(device)
    third = np.zeros(steps.size, dtype=bool)
    for col, here in zip(device, on_a, strict=True):
        third |= ~here & (col != dev_b)
    return third


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


def _evaluate(policy: JointRule, steps: OneTokenSteps, cols: _Steps, keep: list[np.ndarray],
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
        split = pair_split_by_key(key, ni, ni, ni * p0.take(i), ni * p1.take(i), comp0.take(i), comp1.take(i),
                                   dl0.take(i), dl1.take(i), ul0.take(i), ul1.take(i), steps.bandwidth_hz.take(i),
                                   dl_pool=steps.dl_psd_pool_hz)
        share0[i], share1[i], t0[i], inv0[i], t1[i], inv1[i] = (split.b0, split.b1, split.t0, split.inv0, split.t1,
                                                                split.inv1)
        failed[i] = np.isnan(split.b0)
    if i.size == n:
        pass
    elif i.size == 0:
        t0, inv0 = scalar_time(share0, need, need * p0, comp0, dl0, ul0, steps.dl_psd_pool_hz)
    else:
        one = np.flatnonzero(~two)
        t0[one], inv0[one] = scalar_time(share0.take(one), need.take(one), need.take(one) * p0.take(one),
                                         comp0.take(one), dl0.take(one), ul0.take(one), steps.dl_psd_pool_hz)
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


def decide_rounds(steps: OneTokenSteps, policy: JointRule) -> BatchDecision:
    """`JointSelectionBandwidth.decide` on each step (module docstring: slots on at most two devices, a nonzero
    payload). Every round evaluates a trial for all steps and keeps it where the step is still running and the
    metric rose (no row gathers, which are slow). Works on columns (`_Steps`); (n, k) arrays only at the end."""
    n, k = steps.slot_device.shape
    cols = _steps(steps)
    weight = cols.weight
    need = steps.bits_per_token * LN2
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
