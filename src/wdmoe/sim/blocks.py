"""Channel blocks of a replay: which fading block each layer step sees, all blocks drawn in one call.

Contract: `WirelessDecider` redraws the fast fading at every request, forward step or layer step (the scenario's
`coherence`), always from its own generator and never depending on a decision, so the sequence of links a run
sees is fixed by the trace's shape alone. `trace_blocks` numbers the blocks as the runtime meets them (block 0
is the one `sample_links` drew at construction, which a run replaces before its first layer), and `draw_blocks`
draws the fading of blocks 1..n in one generator call, in the runtime's order, and composes them with
`wdmoe.radio.channel`'s own `draw_fading` and `compose_links`. The result equals the runtime's links bit for bit
(tests/unit/sim/test_simulate.py checks it for every coherence and fading model): numpy's Generator gives the
same numbers for one call of size n * m as for n calls of size m, and the rest is elementwise arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.radio.channel import block_schedule, compose_links, draw_fading
from wdmoe.radio.link import LinkState
from wdmoe.radio.params import RadioParams
from wdmoe.sim.trace import PREFILL, Trace


def trace_blocks(trace: Trace, radio: RadioParams) -> np.ndarray:
    """(S, L) int: the fading block of every (step, MoE layer) of a replay that starts each request at its
    prefill step (`wdmoe.radio.channel.block_schedule`, the coherence rule over a whole replay)."""
    return block_schedule(trace.step_phase == PREFILL, trace.num_layers, radio.coherence)


@dataclass
class _Normals:
    """Stands in for the generator inside `draw_fading`: hands out pre-drawn standard normals, in order."""

    parts: list[np.ndarray]

    def standard_normal(self, size: object) -> np.ndarray:
        return self.parts.pop(0)


def draw_blocks(rng: np.random.Generator, first: LinkState, radio: RadioParams, num_blocks: int) -> LinkState:
    """Links of blocks 0..num_blocks: a LinkState whose gain and SNR arrays have shape (num_blocks + 1, D), row 0
    being `first` (the construction draw). Consumes from `rng` exactly what num_blocks calls of
    `redraw_fading` would."""
    fading = radio.fading
    devices = first.num_devices
    directions = 1 if fading.reciprocal else 2
    if fading.model == "none":
        normals = _Normals([])
    else:  # redraw_fading draws, per block: DL real, DL imaginary, then (non-reciprocal) UL real, UL imaginary
        bulk = rng.standard_normal((num_blocks, 2 * directions, devices))
        normals = _Normals([np.ascontiguousarray(bulk[:, j]) for j in range(2 * directions)])
    size = (num_blocks, devices)
    # _Normals serves the one generator method draw_fading calls, so the fading formula stays in radio.channel
    gain_dl = draw_fading(normals, fading.model, size, fading.k_factor_db)  # type: ignore[arg-type]
    gain_ul = (gain_dl.copy() if fading.reciprocal
               else draw_fading(normals, fading.model, size, fading.k_factor_db))  # type: ignore[arg-type]
    links = compose_links(first.distance_m, first.pathloss_db, gain_dl, gain_ul, radio)
    return LinkState(first.distance_m, first.pathloss_db, np.vstack([first.gain_dl, links.gain_dl]),
                     np.vstack([first.gain_ul, links.gain_ul]), np.vstack([first.snr_dl_per_hz, links.snr_dl_per_hz]),
                     np.vstack([first.snr_ul_per_hz, links.snr_ul_per_hz]), first.dl_psd_pool_hz)


def block_link(blocks: LinkState, block: int) -> LinkState:
    """The (D,) LinkState of one block of `draw_blocks`' result."""
    return LinkState(blocks.distance_m, blocks.pathloss_db, blocks.gain_dl[block], blocks.gain_ul[block],
                     blocks.snr_dl_per_hz[block], blocks.snr_ul_per_hz[block], blocks.dl_psd_pool_hz)
