"""MoE²'s coarse oracle (papers.md §5.7 [R]): A(T), its monotone hull U(S), and the routed subset, from score tables.

Contract: `SubsetOracle(gate_probs, option_probs, answers, top_k)` holds R score tables of the same I items:
gate_probs (R, I, N) = the gate's full-set g(x_i) (one table per cross-fitting repeat, or R = 1), option_probs
(R, N, I, C) = the calibrated p_n(choice | x_i), answers (I,). With the gate's top-k within T as the fine level:

    accuracy(T)       A(T) = the mean over the R tables of the share of items the mixture answers right (A(∅) = 0)
    answer_prob(T)    P(T) = the same mean of the mixture's probability of the right choice: a smoother statistic
    utility(S)        U(S) = max over nonempty T ⊆ S of A(T) (U(∅) = 0): monotone non-decreasing by construction
    active_subset(S)  the maximizing T: ties go to the larger P(T), then fewer experts, then the smaller bitmask

All are cached by bitmask. U needs A on the 2^|S| subsets of S; cheap for N ≤ 12 with precomputed tables.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from wdmoe.ensemble.aggregate import mix_option_probs
from wdmoe.ensemble.selection import fine_select, members


def bitmask(subset: Collection[int]) -> int:
    return sum(1 << n for n in set(subset))


class SubsetOracle:
    def __init__(self, gate_probs: np.ndarray, option_probs: np.ndarray, answers: np.ndarray, top_k: int) -> None:
        self.gate_probs = np.asarray(gate_probs, dtype=float)
        self.option_probs = np.asarray(option_probs, dtype=float)
        self.answers = np.asarray(answers)
        if self.gate_probs.ndim != 3 or self.option_probs.ndim != 4:
            raise ValueError(
                f"gate_probs must be (R, I, N) and option_probs (R, N, I, C), got {self.gate_probs.shape} and "
                f"{self.option_probs.shape}"
            )
        reps, items, experts = self.gate_probs.shape
        if self.option_probs.shape[:3] != (reps, experts, items) or self.answers.shape != (items,):
            raise ValueError(
                f"option_probs {self.option_probs.shape} and answers {self.answers.shape} do not match gate_probs "
                f"{self.gate_probs.shape} (R, I, N)"
            )
        self.top_k, self.num_experts = top_k, experts
        self._stats: dict[int, tuple[float, float]] = {}  # (A, P) by bitmask
        self._active: dict[int, int] = {}

    def _stat(self, mask: int) -> tuple[float, float]:
        if mask not in self._stats:
            if not mask:
                self._stats[mask] = (0.0, 0.0)
            else:
                hits, probs = [], []
                items = np.arange(self.answers.shape[0])
                for gate, options in zip(self.gate_probs, self.option_probs, strict=True):
                    routing = fine_select(gate, members(mask), self.top_k)
                    mixed = mix_option_probs(options, routing.index, routing.weight)  # (I, C)
                    hits.append(float((mixed.argmax(axis=-1) == self.answers).mean()))
                    probs.append(float(mixed[items, self.answers].mean()))
                self._stats[mask] = (float(np.mean(hits)), float(np.mean(probs)))
        return self._stats[mask]

    def accuracy(self, subset: Collection[int]) -> float:
        """A(T): the gate's top-k within T, share of items right, mean over the R tables."""
        return self._stat(bitmask(subset))[0]

    def answer_prob(self, subset: Collection[int]) -> float:
        """P(T): the mixture's mean probability of the right choice, mean over the R tables."""
        return self._stat(bitmask(subset))[1]

    def active_subset(self, subset: Collection[int]) -> frozenset[int]:
        """The nonempty T ⊆ S of largest A(T) (ties: larger P(T), fewer experts, smaller bitmask); ∅ for S = ∅."""
        mask = bitmask(subset)
        if mask not in self._active:
            subs = [t for t in range(1, mask + 1) if t & mask == t]
            self._active[mask] = min(
                subs, key=lambda t: (-self._stat(t)[0], -self._stat(t)[1], t.bit_count(), t), default=0
            )
        return members(self._active[mask])

    def utility(self, subset: Collection[int]) -> float:
        """U(S) = max over nonempty T ⊆ S of A(T)."""
        return self.accuracy(self.active_subset(subset))
