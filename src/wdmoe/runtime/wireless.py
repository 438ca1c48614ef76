"""The runtime's radio side: per MoE layer, build the `LayerState`, ask the policy, model the latency.

`WirelessDecider` is the `Runtime.decider` when a scenario is set. It owns the channel realization: the
geometry and large-scale loss are drawn once (devices do not move during a run), the fast fading is redrawn per
the scenario's coherence setting (every forward step, every layer, or once per request), from a generator seeded
by the scenario, so a run replays exactly. All latency and energy numbers come from `wdmoe.radio.latency`.
"""

from __future__ import annotations

import numpy as np

from wdmoe.config import Scenario
from wdmoe.policy.base import Decision, LayerState, Policy
from wdmoe.radio.channel import redraw_fading, redraws_at, sample_links
from wdmoe.radio.compute import PRESETS, DeviceProfiles, dense_flops_per_token, roofline_time_s
from wdmoe.radio.costs import ModelCosts
from wdmoe.radio.latency import LatencyBreakdown, LayerLoad, layer_breakdown
from wdmoe.radio.link import LinkState
from wdmoe.runtime.decider import ModeledDecision


class WirelessDecider:
    """Policy + channel + latency model for every MoE layer step of a running model."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        costs: ModelCosts,
        expert_device: dict[int, np.ndarray],
        num_devices: int,
    ) -> None:
        if scenario.num_devices != num_devices:
            raise ValueError(
                f"scenario field 'num_devices' = {scenario.num_devices}, but the model is split over "
                f"{num_devices} devices; make them equal"
            )
        self.scenario = scenario
        self.radio = scenario.radio  # the radio model's plain value of the scenario
        self.policy = policy
        self.costs = costs
        self.expert_device = expert_device
        self.rng = np.random.default_rng(scenario.seed)
        self.link: LinkState = sample_links(self.rng, self.radio)
        self.profiles = DeviceProfiles.from_profiles(
            [PRESETS[scenario.preset_of_device(d)] for d in range(num_devices)]
        )
        self.pool = self.radio.pool
        self.bs_tx_power_w = self.radio.bs_tx_power_w
        self.last_state: LayerState | None = None
        # one token's payload in one direction when the caller gives none (the simulator); the runtime hands its
        # air format's (`wdmoe.runtime.air.bits_per_token`) with every step
        self.bits_per_token = float(costs.hidden_size * scenario.activation_bits)

    def start_request(self) -> None:
        if redraws_at(self.radio.coherence, "request"):
            self.link = redraw_fading(self.rng, self.link, self.radio)

    def seed_step(self, channel_seed: int, step: int) -> None:
        """Derive the channel of the next forward step from (`channel_seed`, `step`): a request's seed and its step
        number, not the state earlier steps left, so a seeded request sees the same fading whatever ran before it
        (the serving scheduler calls this before each batched step, keyed by the batch's oldest request). Coherence
        "request": the block of the request's first step; "step" and "layer": drawn from there by `start_step` and
        `state` as usual."""
        per_request = redraws_at(self.radio.coherence, "request")
        self.rng = np.random.default_rng([int(self.scenario.seed), int(channel_seed), 0 if per_request else int(step)])
        if per_request:
            self.link = redraw_fading(self.rng, self.link, self.radio)

    def channel_state(self) -> tuple[np.random.Generator, LinkState, LayerState | None]:
        """What a forward step changes here: the generator, the channel block and the last state. A step run inside
        another (the serving scheduler's prefill at a paused decode step, `DistributedMoE.step_segments`) takes it
        before and hands it back with `restore_channel` after, so the paused step goes on in its own channel: the
        inner step starts with `seed_step` (a generator of its own), and every draw replaces these objects, none
        changes them in place, so the saved ones are as the paused step left them."""
        return self.rng, self.link, self.last_state

    def restore_channel(self, state: tuple[np.random.Generator, LinkState, LayerState | None]) -> None:
        self.rng, self.link, self.last_state = state

    def start_step(self) -> None:
        if redraws_at(self.radio.coherence, "step"):
            self.link = redraw_fading(self.rng, self.link, self.radio)

    def bs_time_s(self, layer: int, num_tokens: int) -> float:
        """The BS's modeled time for one layer step [R]: a fixed time, or the roofline of the BS preset on the
        BS weights since the previous MoE layer (2 FLOPs per weight per token; attention over the context and
        the LM head are not counted)."""
        if self.scenario.bs_layer_time_s is not None:
            return self.scenario.bs_layer_time_s
        bs = PRESETS[str(self.scenario.bs_preset)]
        params = self.costs.bs_params_per_layer[layer]
        return float(
            roofline_time_s(
                num_tokens, dense_flops_per_token(params), params * self.costs.bytes_per_param, bs.flops_per_s,
                bs.mem_bytes_per_s, bs.overhead_s,
            )
        )

    def state(self, layer: int, index: np.ndarray, weight: np.ndarray, logits: np.ndarray | None, *,
              expert_device: np.ndarray | None = None, bits_per_token: float | None = None) -> LayerState:
        if redraws_at(self.radio.coherence, "layer"):
            self.link = redraw_fading(self.rng, self.link, self.radio)
        return self.state_on(self.link, layer, index, weight, logits, expert_device=expert_device,
                             bits_per_token=bits_per_token)

    def state_on(self, link: LinkState, layer: int, index: np.ndarray, weight: np.ndarray,
                 logits: np.ndarray | None, *, expert_device: np.ndarray | None = None,
                 bits_per_token: float | None = None) -> LayerState:
        """The LayerState of one layer step over a given channel block (the simulator replays blocks it drew).
        `expert_device` (E,) and `bits_per_token` are the runtime's of this step; None: the decider's own."""
        return LayerState(
            topk_index=index,
            topk_weight=weight,
            expert_device=self.expert_device[layer] if expert_device is None else expert_device,
            link=link,
            profiles=self.profiles,
            expert_flops_per_token=self.costs.expert_flops_per_token,
            expert_weight_bytes=self.costs.expert_weight_bytes,
            bits_per_token=self.bits_per_token if bits_per_token is None else bits_per_token,
            bandwidth_hz=self.scenario.bandwidth_hz,
            bs_time_s=self.bs_time_s(layer, index.shape[0]),
            logits=logits,
        )

    def breakdown(self, state: LayerState, decision: Decision) -> LatencyBreakdown:
        load = LayerLoad(state.topk_index, decision.keep, state.expert_device, state.expert_flops_per_token,
                         state.expert_weight_bytes, state.bits_per_token)
        return layer_breakdown(load, state.link, self.profiles, decision.bandwidth_hz, bs_time_s=state.bs_time_s,
                               pool=self.pool, bs_tx_power_w=self.bs_tx_power_w)

    def __call__(
        self, layer: int, index: np.ndarray, weight: np.ndarray, logits: np.ndarray | None, *,
        expert_device: np.ndarray | None = None, bits_per_token: float | None = None,
    ) -> ModeledDecision:
        """Decide one layer step: index / weight (T, k), logits (T, E) | None; the keyword arguments as `state_on`."""
        state = self.state(layer, index, weight, logits, expert_device=expert_device, bits_per_token=bits_per_token)
        self.last_state = state
        decision = self.policy.decide(state)
        return ModeledDecision(decision, self.breakdown(state, decision))
