"""The latency–accuracy Pareto front and the headline number (pure numpy).

Contract: a point is on the front when no other point is at least as fast and at least as accurate, and strictly
better in one of the two. The headline is the largest latency reduction against the reference policy among the
points whose relative accuracy loss is at most `max_loss`; when no point is both faster and within the loss, the
closest point (the faster point with the smallest loss) is reported instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def pareto_front(latency_s: Sequence[float], accuracy: Sequence[float]) -> np.ndarray:
    """(n,) bool: the non-dominated points (lower latency and higher accuracy are better)."""
    lat = np.asarray(latency_s, dtype=float)
    acc = np.asarray(accuracy, dtype=float)
    point_lat, other_lat = lat[:, None], lat[None, :]  # (n, 1) point i, (1, n) point j
    point_acc, other_acc = acc[:, None], acc[None, :]
    no_worse = (other_lat <= point_lat) & (other_acc >= point_acc)  # (n, n) [i, j]: j no worse than i in both
    better = (other_lat < point_lat) | (other_acc > point_acc)
    return np.logical_not(np.any(no_worse & better, axis=1))


@dataclass(frozen=True)
class Headline:
    """label: the chosen point; within: whether its loss is <= max_loss; loss and reduction are relative (0.05 =
    5%); reduction = 1 - latency / reference latency."""

    label: str
    within: bool
    accuracy_loss: float
    latency_reduction: float
    max_loss: float


def relative_loss(accuracy: np.ndarray, reference: float, higher_is_better: bool) -> np.ndarray:
    """(n,) the relative accuracy loss against the reference (negative: better than the reference); against a
    zero reference a tie is no loss and any difference an infinite one."""
    diff = np.asarray(reference - accuracy if higher_is_better else accuracy - reference, dtype=float)
    if reference == 0.0:
        return np.select([diff > 0.0, diff < 0.0], [np.inf, -np.inf], 0.0)
    return diff / abs(reference)


def headline(labels: Sequence[str], latency_s: Sequence[float], accuracy: Sequence[float], reference: str,
             max_loss: float = 0.01, higher_is_better: bool = True) -> Headline | None:
    """The best point within `max_loss`, else the closest faster point; None when no point beats the reference."""
    lat, acc = np.asarray(latency_s, dtype=float), np.asarray(accuracy, dtype=float)
    ref = list(labels).index(reference)
    loss = relative_loss(acc, float(acc[ref]), higher_is_better)
    reduction = 1.0 - lat / lat[ref]
    faster = reduction > 0.0
    if not faster.any():
        return None
    within = faster & (loss <= max_loss)
    if within.any():
        pick = int(np.flatnonzero(within)[np.argmax(reduction[within])])
    else:
        candidates = np.flatnonzero(faster)
        pick = int(candidates[np.lexsort((-reduction[candidates], loss[candidates]))[0]])
    return Headline(labels[pick], bool(within[pick]), float(loss[pick]), float(reduction[pick]), max_loss)
