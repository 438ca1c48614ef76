"""Energy-minimizing joint expert selection and bandwidth split under a latency budget: OUR reconstruction [R] of
DES / JESA (arXiv 2503.13421) from a secondary description [S] (papers.md §10). Their formulation, constraint
values and results (about -50% energy at near-TopK accuracy) are theirs and [U] to us; none of our numbers are
theirs.

Contract: per layer step, over the keep masks a inside the router's top-k (each token keeps >= 1 expert and a
gate mass >= rho x its top-k total: the relevance guard, as the joint policy's rho) and the band split b,

    minimize   E(a, b) = sum_d e_d(b_d)                         radio.energy (radio.latency's energy parts)
    subject to T_layer(a, b) = t_BS + max_d t_d(b_d) <= budget,  sum_d b_d <= B
    budget     = latency_factor x T_layer of TopK (the router's top-k, the band split equally over its devices)

so with latency_factor >= 1 TopK's own decision is feasible: per layer step the policy is never slower than TopK
and never spends more energy. For a fixed mask the split is a convex problem solved to 1e-14 (policy.energy_split).
Masks:

- exact (decode, small blocks: at most `max_masks` guarded masks): every mask, visited in increasing order of a
  lower bound (each active device's energy on the whole band, which no split beats) and cut off once the bound
  reaches the best energy found: branch and bound over a one-level tree, so the optimum over masks is exact;
- larger blocks (a heuristic, no optimality certificate): the better of the top-k and a greedy mask in which
  each token drops its experts in increasing order of weight per joule of its device (under the top-k's split)
  while its guard allows.

When no mask meets the budget (latency_factor < 1), the step falls back to the top-k with the min-max split (the
fastest the top-k can be).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from wdmoe.policy.bandwidth import equal_split, minmax_split
from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.energy_split import EnergySplit, energy_split
from wdmoe.policy.selection import device_costs, device_times_s, profiles_of, renormalize
from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.energy import ShareDevice, share_cost
from wdmoe.radio.params import DEFAULT_BS_TX_POWER_W


@dataclass(frozen=True)
class EnergySolution:
    """The decision, its modeled energy (J) and layer time (s), the budget (s), whether the masks were searched
    exhaustively (`exact`) and whether the budget was met (False: the top-k fallback)."""

    decision: Decision
    energy_j: float
    layer_s: float
    budget_s: float
    exact: bool
    feasible: bool


@dataclass(frozen=True)
class EnergyMinJoint:
    """Energy-minimizing selection + band split under a latency budget (OUR reconstruction [R] of DES/JESA from a
    secondary description [S], papers.md §10).

    Attributes:
        rho: relevance guard in [0, 1]: each token keeps >= rho x its top-k gate mass (1: TopK's selection).
        latency_factor: the layer budget as a multiple (> 0) of TopK's layer time (equal band split).
        bs_tx_power_w: the BS's transmit power in W (the scenario's default, 43 dBm).
        max_masks: largest number of guarded masks searched exactly; a larger block takes the greedy mask.
    """

    rho: float = 0.8
    latency_factor: float = 1.0
    bs_tx_power_w: float = DEFAULT_BS_TX_POWER_W
    max_masks: int = 256
    name = "energy"  # a class attribute, not a field: the Policy protocol reads it as a plain str
    order_independent = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.rho <= 1.0:
            raise ValueError(f"EnergyMinJoint.rho = {self.rho} must lie in [0, 1] (a gate-mass share)")
        if not self.latency_factor > 0.0:
            raise ValueError(f"EnergyMinJoint.latency_factor = {self.latency_factor} must be > 0 (x TopK's time)")
        if self.max_masks < 1:
            raise ValueError(f"EnergyMinJoint.max_masks = {self.max_masks} must be >= 1")

    def decide(self, state: LayerState) -> Decision:
        return self.solve(state).decision

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """No batched form: the caller decides each step with `decide`."""
        return None

    def solve(self, state: LayerState) -> EnergySolution:
        weight = state.topk_weight.astype(float)
        topk = np.ones(weight.shape, dtype=bool)
        costs = device_costs(state, topk)
        slowest = float(device_times_s(state, costs, equal_split(costs.active, state.bandwidth_hz)).max(initial=0.0))
        topk_s = state.bs_time_s + slowest
        budget = self.latency_factor * topk_s
        # the devices' cap, budget - t_BS, written so that factor 1 gives the top-k's own slowest time exactly
        cap = self.latency_factor * slowest + (self.latency_factor - 1.0) * state.bs_time_s
        options = [_token_options(row, self.rho) for row in weight]
        exact = math.prod(len(o) for o in options) <= self.max_masks
        masks = (np.array(rows) for rows in itertools.product(*options)) if exact else self._greedy(state, weight)
        best = _search(state, masks, cap, self.bs_tx_power_w)
        if best is None:  # nothing meets the budget: the top-k at its fastest
            topk_bw = _minmax(state, topk)
            layer_s = state.bs_time_s + float(device_times_s(state, costs, topk_bw).max(initial=0.0))
            energy = _energy(state, topk, topk_bw, self.bs_tx_power_w)
            return EnergySolution(Decision(topk, weight.copy(), topk_bw), energy, layer_s, budget, exact, False)
        keep, split = best
        layer_s = state.bs_time_s + max(split.times_s, default=0.0)
        decision = Decision(keep, renormalize(weight, keep), _bandwidth(state, keep, split))
        return EnergySolution(decision, split.energy_j, layer_s, budget, exact, True)

    def _greedy(self, state: LayerState, weight: np.ndarray) -> list[np.ndarray]:
        """The top-k and the greedy mask of the module docstring (heuristic for large blocks)."""
        topk = np.ones(weight.shape, dtype=bool)
        devices, active = _share_devices(state, topk, self.bs_tx_power_w)
        b = state.bandwidth_hz / max(len(devices), 1)
        joules = np.zeros(state.num_devices)
        joules[active] = [share_cost(b, d).energy_j for d in devices]
        pairs = np.maximum(np.bincount(state.expert_device[state.topk_index].ravel(),
                                       minlength=state.num_devices), 1)
        score = weight / np.maximum(joules / pairs, 1e-300)[state.expert_device[state.topk_index]]
        keep = topk.copy()
        floor = self.rho * weight.sum(axis=1)
        for j in range(weight.shape[0]):
            for c in np.argsort(score[j], kind="stable"):
                rest = keep[j].copy()
                rest[c] = False
                if rest.any() and weight[j][rest].sum() >= floor[j]:
                    keep[j] = rest
        return [topk, keep]


def _token_options(weight: np.ndarray, rho: float) -> list[tuple[bool, ...]]:
    """Every keep row of one token that keeps an expert and >= rho of its gate mass, the top-k first."""
    k = weight.shape[0]
    floor = rho * weight.sum()
    rows = [row for row in itertools.product((True, False), repeat=k) if any(row)]
    return [row for row in rows if weight[np.array(row)].sum() >= floor]


def _minmax(state: LayerState, keep: np.ndarray) -> np.ndarray:
    costs = device_costs(state, keep)
    link = state.link
    return minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s, link.snr_dl_per_hz, link.snr_ul_per_hz,
                        state.bandwidth_hz, costs.active)


def _share_devices(state: LayerState, keep: np.ndarray, bs_tx_power_w: float) -> tuple[list[ShareDevice],
                                                                                          np.ndarray]:
    """The active devices of a mask as radio.energy inputs, and their ids."""
    costs = device_costs(state, keep)
    profiles = profiles_of(state)
    link = state.link
    active = np.flatnonzero(costs.active)
    devices = [ShareDevice(float(costs.bits_dl[d]), float(costs.bits_ul[d]), float(costs.compute_s[d]),
                           float(link.snr_dl_per_hz[d]), float(link.snr_ul_per_hz[d]),
                           float(profiles.tx_power_w[d]), float(profiles.compute_power_w[d]), bs_tx_power_w,
                           link.dl_psd_pool_hz)
               for d in active]
    return devices, active


def _search(state: LayerState, masks: Iterable[np.ndarray],
            cap_s: float, bs_tx_power_w: float) -> tuple[np.ndarray, EnergySplit] | None:
    """The lowest-energy feasible mask: masks in increasing order of their lower bound (each device's energy on
    the whole band), stopping once the bound reaches the best energy (module docstring)."""
    bounded = []
    for index, keep in enumerate(masks):
        devices, _ = _share_devices(state, keep, bs_tx_power_w)
        bound = sum(share_cost(state.bandwidth_hz, d).energy_j for d in devices)
        bounded.append((bound, index, keep, devices))
    bounded.sort(key=lambda item: (item[0], item[1]))
    best: tuple[np.ndarray, EnergySplit] | None = None
    for bound, _, keep, devices in bounded:
        if best is not None and bound >= best[1].energy_j:
            break
        split = energy_split(devices, state.bandwidth_hz, cap_s)
        if split.feasible and (best is None or split.energy_j < best[1].energy_j):
            best = (keep, split)
    return best


def _bandwidth(state: LayerState, keep: np.ndarray, split: EnergySplit) -> np.ndarray:
    bandwidth = np.zeros(state.num_devices)
    bandwidth[np.flatnonzero(device_costs(state, keep).active)] = split.shares_hz
    return bandwidth


def _energy(state: LayerState, keep: np.ndarray, bandwidth_hz: np.ndarray, bs_tx_power_w: float) -> float:
    devices, active = _share_devices(state, keep, bs_tx_power_w)
    return float(sum(share_cost(float(bandwidth_hz[d]), dev).energy_j for d, dev in zip(active, devices,
                                                                                      strict=True)))
