"""The planner's objective: the expected per-token (decode) latency of a placement, from wdmoe.radio.latency.

Contract: `LatencyModel(requirement, statuses, radio, bits)` scores a primary table (L, E) of device indices:

    E[T_token] = sum over MoE layers l of  sum over top-k sets S  P_l(S) * mean over channel samples c of
                 radio.latency.layer_breakdown(one token routed to S, devices of S, link_c, equal band split).layer_s

One token is a decode step; the band split is the runtime's default (`EqualBandwidth`, the `TopK` policy's). The
primary replica serves (as in the runtime); replicas only serve on failover. P_l(S) is the Plackett-Luce
probability of drawing the set S without replacement with weights popularity[l] [R]; enumerated exactly when
the orderings are few (8 experts, top-2: 56), else sampled (Gumbel top-k) with the radio seed.

One call of layer_breakdown on a one-token step depends only on the (device, expert bytes) pairs of the set, so
results are cached under that key: a whole local search costs a few hundred radio calls. Experts with no device
yet (-1, during the greedy) are masked out of the step, as if the router had not chosen them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from wdmoe.plan.links import RadioSettings, channel_samples
from wdmoe.plan.requirement import ModelRequirement
from wdmoe.plan.status import ResourceStatus
from wdmoe.policy.bandwidth import EqualBandwidth
from wdmoe.policy.base import LayerState
from wdmoe.radio.compute import DeviceProfiles
from wdmoe.radio.latency import LayerLoad, layer_breakdown

MAX_ORDERINGS = 20_000  # enumerate the top-k orderings up to this many, else sample
MAX_TABLE = 250_000  # a layer's tuple table (sets x D^k entries) up to this size, else the cache per call
ROUTE_SAMPLES = 2048  # sampled top-k draws per layer when not enumerating


@dataclass(frozen=True)
class Routes:
    """The top-k sets of one layer and their probabilities: sets (S, k) int, prob (S,) summing to 1."""

    sets: np.ndarray
    prob: np.ndarray


def route_distribution(popularity: np.ndarray, top_k: int, rng: np.random.Generator) -> Routes:
    """Plackett-Luce top-k sets of one layer from its popularity (E,) (module docstring) [R]."""
    weight = np.maximum(np.asarray(popularity, dtype=float), 1e-12)
    weight = weight / weight.sum()
    num = weight.shape[0]
    probs: dict[tuple[int, ...], float] = {}
    if math.perm(num, top_k) <= MAX_ORDERINGS:
        for order in itertools.permutations(range(num), top_k):
            p, left = 1.0, 1.0
            for e in order:
                p *= weight[e] / left
                left -= weight[e]
            key = tuple(sorted(order))
            probs[key] = probs.get(key, 0.0) + p
    else:
        keys = np.log(weight) + rng.gumbel(size=(ROUTE_SAMPLES, num))
        for row in np.sort(np.argsort(-keys, axis=1)[:, :top_k], axis=1):
            key = tuple(int(e) for e in row)
            probs[key] = probs.get(key, 0.0) + 1.0 / ROUTE_SAMPLES
    sets = np.array(list(probs), dtype=np.int64).reshape(-1, top_k)
    prob = np.array(list(probs.values()))
    return Routes(sets, prob / prob.sum())


class LatencyModel:
    """Expected per-token latency of placements on one cluster state (module docstring)."""

    def __init__(
        self,
        requirement: ModelRequirement,
        statuses: Sequence[ResourceStatus],
        radio: RadioSettings,
        bits: np.ndarray | None = None,
    ) -> None:
        self.requirement = requirement
        self.radio = radio
        self.num_devices = len(statuses)
        self.profiles = DeviceProfiles.from_profiles([s.effective_profile() for s in statuses])
        self.links = channel_samples(statuses, radio)
        self.expert_bytes = requirement.bytes_for(bits)  # (L, E)
        rng = np.random.default_rng(radio.seed)
        self.routes = [route_distribution(row, requirement.top_k, rng) for row in requirement.popularity]
        self.bits_per_token = float(requirement.hidden_size * radio.activation_bits)
        self._cache: dict[tuple[tuple[int, float], ...], float] = {}
        self._tables: dict[int, np.ndarray | None] = {}
        self.radio_calls = 0

    def tuple_table(self, layer_pos: int) -> np.ndarray | None:
        """(S, D^k) seconds of each top-k set of the layer with its experts on each device tuple (tuple index
        sum_i a_i D^(k-1-i)), built once from step_s; None when larger than MAX_TABLE."""
        if layer_pos in self._tables:
            return self._tables[layer_pos]
        routes, d = self.routes[layer_pos], self.num_devices
        k = routes.sets.shape[1]
        table = None
        if len(routes.prob) * d**k <= MAX_TABLE:
            sizes = self.expert_bytes[layer_pos]
            tuples = list(itertools.product(range(d), repeat=k))
            table = np.array([[self.step_s(tuple(sorted((a[i], float(sizes[e])) for i, e in enumerate(members))))
                               for a in tuples] for members in routes.sets.tolist()]).reshape(-1, d**k)
        self._tables[layer_pos] = table
        return table

    def step_s(self, members: tuple[tuple[int, float], ...]) -> float:
        """Mean layer seconds over the channel samples of one token whose kept experts are `members`, sorted
        (device, bytes) pairs; the BS time alone when nothing is kept."""
        if not members:
            return self.radio.bs_layer_time_s
        cached = self._cache.get(members)
        if cached is not None:
            return cached
        index = np.arange(len(members))[None, :]  # (1, k'): a virtual layer of just these experts
        keep = np.ones(index.shape, dtype=bool)
        device = np.array([d for d, _ in members], dtype=np.int64)
        # radio.compute's roofline broadcasts the weight bytes with the (E,) expert arrays: one size per expert
        weight_bytes = cast(float, np.array([b for _, b in members], dtype=float))
        total = 0.0
        for link in self.links:
            state = LayerState(
                index,
                np.full(index.shape, 1.0 / index.shape[1]),
                device,
                link,
                self.profiles,
                self.requirement.expert_flops_per_token,
                weight_bytes,
                self.bits_per_token,
                self.radio.bandwidth_hz,
                self.radio.bs_layer_time_s,
            )
            band = EqualBandwidth().allocate(state, keep)
            load = LayerLoad(index, keep, device, self.requirement.expert_flops_per_token, weight_bytes,
                             self.bits_per_token)
            total += layer_breakdown(
                load, link, self.profiles, band, bs_time_s=self.radio.bs_layer_time_s, pool=self.radio.pool
            ).layer_s
            self.radio_calls += 1
        value = total / len(self.links)
        self._cache[members] = value
        return value

    def layer_s(self, layer_pos: int, expert_device: np.ndarray, sizes: np.ndarray | None = None) -> float:
        """Expected seconds of MoE layer number `layer_pos` with primaries `expert_device` (E,) (-1: unplaced);
        `sizes` (E,) replaces the layer's weight bytes (an intra plan's host tier streams more slowly)."""
        routes = self.routes[layer_pos]
        if sizes is None and int(np.min(expert_device)) >= 0:
            table = self.tuple_table(layer_pos)
            if table is not None:
                devices = np.asarray(expert_device, dtype=np.int64)[routes.sets]  # (S, k)
                index = devices @ (self.num_devices ** np.arange(routes.sets.shape[1] - 1, -1, -1))
                return float(routes.prob @ table[np.arange(len(routes.prob)), index])
        row_bytes = self.expert_bytes[layer_pos] if sizes is None else sizes
        total = 0.0
        for members_of, p in zip(routes.sets.tolist(), routes.prob.tolist(), strict=True):
            members = tuple(
                sorted((int(expert_device[e]), float(row_bytes[e])) for e in members_of if expert_device[e] >= 0)
            )
            total += p * self.step_s(members)
        return total

    def token_s(self, primary: np.ndarray, sizes: np.ndarray | None = None) -> float:
        """Expected per-token seconds of a primary table (L, E): the sum of the layers'. `sizes` (L, E): as in
        layer_s."""
        return float(
            sum(self.layer_s(pos, row, None if sizes is None else sizes[pos]) for pos, row in enumerate(primary))
        )
