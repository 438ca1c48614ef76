"""The modeled latency of a policy's decision: a thin bridge from (LayerState, Decision) to radio.latency.

Contract: `layer_breakdown(state, decision)` is radio.latency.layer_breakdown on the state's arrays; it lives
here so that wdmoe.radio never imports wdmoe.policy.
"""

from __future__ import annotations

from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import layer_load, profiles_of
from wdmoe.radio.latency import DEFAULT_BS_TX_POWER_W, LatencyBreakdown
from wdmoe.radio.latency import layer_breakdown as _layer_breakdown


def layer_breakdown(state: LayerState, decision: Decision,
                    bs_tx_power_w: float = DEFAULT_BS_TX_POWER_W) -> LatencyBreakdown:
    """The latency and energy of one layer step under `decision` (one shared bandwidth pool)."""
    return _layer_breakdown(layer_load(state, decision.keep), state.link, profiles_of(state),
                            decision.bandwidth_hz, bs_time_s=state.bs_time_s, bs_tx_power_w=bs_tx_power_w)
