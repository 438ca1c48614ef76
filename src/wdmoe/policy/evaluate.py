"""The modeled latency of a policy's decision: a thin bridge from (LayerState, Decision) to radio.latency.

Contract: `layer_breakdown(state, decision)` is radio.latency.layer_breakdown on the state's arrays; it lives
here so that wdmoe.radio never imports wdmoe.policy.
"""

from __future__ import annotations

from wdmoe.policy.base import Decision, LayerState
from wdmoe.policy.selection import profiles_of
from wdmoe.radio.latency import DEFAULT_BS_TX_POWER_W, LatencyBreakdown
from wdmoe.radio.latency import layer_breakdown as _layer_breakdown


def layer_breakdown(state: LayerState, decision: Decision,
                    bs_tx_power_w: float = DEFAULT_BS_TX_POWER_W) -> LatencyBreakdown:
    """The latency and energy of one layer step under `decision` (one shared bandwidth pool)."""
    return _layer_breakdown(state.topk_index, decision.keep, state.expert_device, state.link,
                            profiles_of(state), state.expert_flops_per_token, state.expert_weight_bytes,
                            state.bits_per_token, decision.bandwidth_hz, state.bs_time_s,
                            bs_tx_power_w=bs_tx_power_w)
