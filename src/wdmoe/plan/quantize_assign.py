"""Compression, bit-width assignment (CoEL, papers.md §4.4 [R]): which expert gets how many bits under a memory budget.

Contract (pure numpy): every expert's score is popularity x importance (e.g. from `wdmoe.plan.calibrate`); the
experts are visited from the highest score down (ties: lower layer, then lower expert first), and each takes the
widest bit width that still leaves room for every expert not yet visited at the narrowest width. So the result
always fits the budget when anything does, and an expert never gets fewer bits than one with a lower score.
Bytes are per expert of a layer (all experts of one layer have the same shapes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def assign_bits(
    popularity: np.ndarray,
    importance: np.ndarray,
    bytes_per_bit_width: Mapping[int, float],
    budget_bytes: float,
    layers: Sequence[int] | None = None,
) -> dict[tuple[int, int], int]:
    """{(layer, expert): bits} for the experts of `popularity` (L, E), within `budget_bytes` in all.

    Args:
        popularity, importance: (L, E) non-negative; row i is MoE layer `layers[i]` (default: i).
        bytes_per_bit_width: {bits: bytes of one expert stored at that width}, e.g. {32: 516096, 8: 130560, ...}.
        budget_bytes: bytes the routed experts may take together.
    """
    pop, imp = np.asarray(popularity, dtype=float), np.asarray(importance, dtype=float)
    if pop.shape != imp.shape or pop.ndim != 2:
        raise ValueError(f"popularity {pop.shape} and importance {imp.shape} must be (L, E) arrays of one shape")
    if not bytes_per_bit_width:
        raise ValueError("bytes_per_bit_width is empty: give the bytes of one expert at each bit width")
    rows = list(range(pop.shape[0])) if layers is None else list(layers)
    if len(rows) != pop.shape[0]:
        raise ValueError(f"{len(rows)} layer ids for {pop.shape[0]} rows of popularity")
    widths = sorted(bytes_per_bit_width, reverse=True)  # widest first
    size = {b: float(bytes_per_bit_width[b]) for b in widths}
    narrowest = size[widths[-1]]
    count = pop.size
    if count * narrowest > budget_bytes:
        raise ValueError(
            f"{count} experts need at least {count * narrowest / 1e6:.2f} MB at {widths[-1]} bits each; the budget "
            f"is {budget_bytes / 1e6:.2f} MB: raise the budget or add a narrower bit width"
        )
    score = (pop * imp).ravel()
    order = np.lexsort((np.arange(count), -score))  # highest score first, ties in (layer, expert) order
    free = float(budget_bytes) - count * narrowest  # bytes left beyond everyone at the narrowest width
    out: dict[tuple[int, int], int] = {}
    for flat in order.tolist():
        bits = next(b for b in widths if size[b] - narrowest <= free)
        free -= size[bits] - narrowest
        out[(rows[flat // pop.shape[1]], flat % pop.shape[1])] = bits
    return out


def assigned_bytes(bits: Mapping[tuple[int, int], int], bytes_per_bit_width: Mapping[int, float]) -> float:
    """Total bytes of an assignment."""
    return float(sum(bytes_per_bit_width[b] for b in bits.values()))
