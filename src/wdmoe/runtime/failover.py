"""Failover routing: move (token, expert) assignments off devices that failed. Pure numpy, no torch.

For each kept assignment (t, j) of expert e whose device is lost:

1. a live replica of e exists (the placement lists another live device for e): the assignment stays on e and goes
   to the first live replica; its weight is unchanged;
2. else the token gets the next-best live expert s by router logit, one it does not already use, with weight
   w_tj * exp(l_ts - l_te) (= w_tj * p_s / p_e under a softmax router; for Mixtral this is exactly the softmax
   over the new top-k); then the token's kept weights are rescaled to their original sum (renormalized);
3. else (no logits recorded, or no live expert left) the assignment is dropped and the token's remaining kept
   weights are rescaled to the original sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class FailoverEvent:
    """A device failure noticed during a layer step, or a device that came back.

    Attributes:
        kind: "failed" or "rejoined".
        device: the device id.
        reason: why it was declared failed ("" for rejoined).
        detect_s: seconds from the start of the dispatch until the failure was noticed (0 for rejoined).
        replica / substitute / dropped: assignments of this step moved to a replica of the same expert, to the
            next-best live expert, or dropped.
    """

    kind: Literal["failed", "rejoined"]
    device: int
    reason: str = ""
    detect_s: float = 0.0
    replica: int = 0
    substitute: int = 0
    dropped: int = 0


@dataclass(frozen=True)
class Reroute:
    """The routing after failover: index / weight / keep (T, k), and how many assignments took each path."""

    index: np.ndarray
    weight: np.ndarray
    keep: np.ndarray
    replica: int
    substitute: int
    dropped: int


def next_best_expert(logits_row: np.ndarray, used: np.ndarray, live_primary: np.ndarray) -> int:
    """The live expert with the highest logit that is not in `used` (k,), or -1 if none is left."""
    candidate = live_primary >= 0
    candidate[used] = False
    if not candidate.any():
        return -1
    return int(np.argmax(np.where(candidate, logits_row, -np.inf)))


def reroute(
    index: np.ndarray,  # (T, k) experts
    weight: np.ndarray,  # (T, k) combine weights
    keep: np.ndarray,  # (T, k) bool
    affected: np.ndarray,  # (T, k) bool: kept assignments whose device is lost
    live_primary: np.ndarray,  # (E,) first live device of each expert, -1 where every replica is lost
    logits: np.ndarray | None,  # (T, E) router logits, when recorded
) -> Reroute:
    """Move every affected assignment to a replica, a substitute expert, or drop it (module docstring)."""
    index, weight, keep = index.copy(), weight.astype(np.float64), keep.copy()
    mass = np.where(keep, weight, 0.0).sum(axis=1)  # (T,) each token's original weight sum
    replica = substitute = dropped = 0
    touched: set[int] = set()
    for t, j in zip(*np.nonzero(affected & keep), strict=True):
        expert = int(index[t, j])
        if live_primary[expert] >= 0:
            replica += 1
            continue
        touched.add(int(t))
        best = -1 if logits is None else next_best_expert(logits[t], index[t], live_primary)
        if best < 0 or logits is None:
            keep[t, j], weight[t, j] = False, 0.0
            dropped += 1
            continue
        weight[t, j] *= float(np.exp(np.float64(logits[t, best]) - np.float64(logits[t, expert])))
        index[t, j] = best
        substitute += 1
    for t in touched:
        total = weight[t, keep[t]].sum()
        if total > 0.0:
            weight[t, keep[t]] *= mass[t] / total
    return Reroute(index, weight, keep, replica, substitute, dropped)
