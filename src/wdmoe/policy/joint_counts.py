"""The joint policy's local search for large blocks over the number of optional pairs kept per device.

Contract: `improve_counts(rule, state, keep)` returns a keep mask (T, k) whose metric is >= that of `keep` (the
heuristic rounds' mask), or `keep` itself. Candidates keep every mandatory pair (policy.joint_gap: its token cannot
meet the guard without it) and, on each device d, its x_d heaviest optional pairs; a candidate's load per device
depends on x_d only, so the exact costs of every x on every device (tokens sent, pairs returned, the roofline of
each expert's tokens) are tabulated once, and a candidate costs one min-max split (policy.bandwidth). Coordinate
search on x with steps 4 then 1 (first improvement, at most _MAX_EVALUATIONS candidates), from the counts of
`keep`; candidates that break a token's guard are skipped. A heuristic: the certified gap (policy.joint_gap) says
how far from the optimum it ends.
"""

from __future__ import annotations

import numpy as np

from wdmoe.policy.bandwidth import minmax_split
from wdmoe.policy.base import LayerState
from wdmoe.policy.joint_search import JointRule, objective
from wdmoe.policy.selection import profiles_of
from wdmoe.radio.compute import roofline_time_s
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope

_STEPS = (4, 1)
_MAX_EVALUATIONS = 48


def mandatory_pairs(rule: JointRule, weight: np.ndarray) -> np.ndarray:
    """(T, k) the pairs every feasible mask keeps: without one, its token's other weights miss the guard (with a
    relative margin, so that rounding never calls a droppable pair mandatory)."""
    total = weight.sum(axis=1, keepdims=True)
    return ((total - weight) < rule.rho * total * (1.0 - 1e-12)) | (weight.shape[1] == 1)


def optional_rank(device: np.ndarray, weight: np.ndarray, optional: np.ndarray, num_devices: int) -> np.ndarray:
    """(T, k) each optional pair's place among its device's optional pairs, heaviest first (0 elsewhere)."""
    rank = np.zeros(weight.shape, dtype=np.int64)
    for d in range(num_devices):
        opt = optional & (device == d)
        order = np.argsort(-weight[opt], kind="stable")
        place = np.empty(order.size, dtype=np.int64)
        place[order] = np.arange(order.size)
        rank[opt] = place
    return rank


def _tables(state: LayerState, mandatory: np.ndarray, rank: np.ndarray) -> tuple[list[np.ndarray], ...]:
    """Per device, over x = 0..X_d: kept weight gained, DL bits, UL bits and compute seconds (exact)."""
    weight = state.topk_weight.astype(float)
    device = state.expert_device[state.topk_index]
    profiles = profiles_of(state)
    rows = np.broadcast_to(np.arange(state.num_tokens)[:, None], device.shape)
    gains, dl, ul, compute = [], [], [], []
    for d in range(state.num_devices):
        mand, opt = mandatory & (device == d), ~mandatory & (device == d)
        order = np.argsort(rank[opt], kind="stable")
        opt_tokens, opt_experts, opt_w = rows[opt][order], state.topk_index[opt][order], weight[opt][order]
        seen = np.zeros(state.num_tokens, dtype=bool)
        seen[rows[mand]] = True
        new = np.zeros(opt_tokens.size, dtype=np.int64)
        for i, j in enumerate(opt_tokens.tolist()):  # a token's first pair on d sends it down
            new[i] = not seen[j]
            seen[j] = True
        experts = np.unique(np.concatenate([state.topk_index[mand], opt_experts]))
        counts = np.zeros((opt_tokens.size + 1, experts.size))
        counts[0] = (state.topk_index[mand][:, None] == experts[None, :]).sum(axis=0)
        counts[1:] = counts[0] + np.cumsum(opt_experts[:, None] == experts[None, :], axis=0)
        roof = roofline_time_s(counts, state.expert_flops_per_token, state.expert_weight_bytes,
                               profiles.flops_per_s[d], profiles.mem_bytes_per_s[d], profiles.overhead_s[d])
        tokens = int(np.unique(rows[mand]).size) + np.concatenate([[0], np.cumsum(new)])
        pairs = int(mand.sum()) + np.arange(opt_tokens.size + 1)
        gains.append(np.concatenate([[0.0], np.cumsum(opt_w)]))
        dl.append(tokens * state.bits_per_token)
        ul.append(pairs * state.bits_per_token)
        compute.append(roof.sum(axis=1))
    return gains, dl, ul, compute


class CountSearch:
    """Masks given by x, the optional pairs kept per device (module docstring), and their exact metric."""

    def __init__(self, rule: JointRule, state: LayerState) -> None:
        self.rule, self.state = rule, state
        self.weight = state.topk_weight.astype(float)
        self.device = state.expert_device[state.topk_index]
        self.mandatory = mandatory_pairs(rule, self.weight)
        self.rank = optional_rank(self.device, self.weight, ~self.mandatory, state.num_devices)
        self.gains, self.dl, self.ul, self.compute = _tables(state, self.mandatory, self.rank)
        self.w_mand = float(self.weight[self.mandatory].sum())
        self.guard = rule.rho * self.weight.sum(axis=1)
        self.top = np.array([g.size - 1 for g in self.gains])
        self.known: dict[tuple[int, ...], float] = {}  # metric of each x seen: the search steps back onto some

    def mask(self, x: np.ndarray) -> np.ndarray:
        return self.mandatory | (self.rank < x[self.device]) & ~self.mandatory

    def counts_of(self, keep: np.ndarray) -> np.ndarray:
        return np.array([int((keep & ~self.mandatory & (self.device == d)).sum()) for d in range(self.top.size)])

    def feasible(self, x: np.ndarray) -> bool:
        mask = self.mask(x)
        return bool((mask.any(axis=1) & (np.where(mask, self.weight, 0.0).sum(axis=1) >= self.guard)).all())

    def loads(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = range(x.size)
        return (np.array([self.dl[i][x[i]] for i in d]), np.array([self.ul[i][x[i]] for i in d]),
                np.array([self.compute[i][x[i]] for i in d]))

    def kept_weight(self, x: np.ndarray) -> float:
        return self.w_mand + sum(self.gains[d][x[d]] for d in range(x.size))

    def metric(self, x: np.ndarray) -> float:
        """The objective of the mask of x with its exact min-max split; -inf where it breaks a guard. Memoised:
        after a move the coordinate search tries the step back (about one evaluation in five is a repeat)."""
        key = tuple(x.tolist())
        value = self.known.get(key)
        if value is None:
            value = self.known[key] = self._metric(x)
        return value

    def _metric(self, x: np.ndarray) -> float:
        if not self.feasible(x):
            return -np.inf
        state, link = self.state, self.state.link
        bits_dl, bits_ul, comp = self.loads(x)
        active = bits_ul > 0.0
        b = minmax_split(bits_dl, bits_ul, comp, link.snr_dl_per_hz, link.snr_ul_per_hz, state.bandwidth_hz,
                         active, dl_pool_hz=link.dl_psd_pool_hz)
        on = active & (b > 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            t, _ = time_and_inverse_slope(b[on], bits_dl[on] * LN2, bits_ul[on] * LN2, comp[on],
                                          link.snr_dl_per_hz[on], link.snr_ul_per_hz[on], link.dl_psd_pool_hz)
        slowest = max(float(t.max(initial=0.0)), float(np.where(active & ~on, comp, 0.0).max(initial=0.0)))
        return objective(self.rule, self.kept_weight(x), state.bs_time_s + slowest)


def improve_counts(rule: JointRule, state: LayerState, keep: np.ndarray) -> np.ndarray:
    """A mask at least as good as `keep` under the joint objective (module docstring)."""
    return search_counts(CountSearch(rule, state), keep)


def search_counts(search: CountSearch, keep: np.ndarray) -> np.ndarray:
    """`improve_counts`' coordinate search on a given CountSearch (module docstring)."""
    if not (keep | ~search.mandatory).all():
        return keep
    x = search.counts_of(keep)
    best = search.metric(x)  # -inf where the top-x mask of keep's counts breaks a guard: only feasible ones replace it
    start = x
    evaluations = 1
    for step in _STEPS:
        improved = True
        while improved and evaluations < _MAX_EVALUATIONS:
            improved = False
            for d in range(x.size):
                for move in (step, -step):
                    y = x.copy()
                    y[d] = min(max(y[d] + move, 0), search.top[d])
                    if y[d] == x[d]:
                        continue
                    value = search.metric(y)
                    evaluations += 1
                    if value > best:
                        best, x, improved = value, y, True
    return keep if x is start else search.mask(x)

