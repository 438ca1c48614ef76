"""Policy contract: one MoE layer step's state in, a `Decision` out (pure numpy, no torch, no clock, no I/O).

The runtime and the simulator build a `LayerState` from the router's output, the current `LinkState`, the device
profiles and the placement; a policy only masks and re-weights the router's top-k choices and splits the
bandwidth. The combine stays the model's own math.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wdmoe.policy.steps import BatchDecision, OneTokenSteps
from wdmoe.radio.link import LinkState


@dataclass(frozen=True)
class LayerState:
    """Everything a policy may look at for one MoE layer step of T tokens, k routed experts each, D devices.

    Attributes:
        topk_index: (T, k) int, the router's chosen expert ids.
        topk_weight: (T, k) float, the router's weights as the model would combine them (already renormalized or
            scaled the model's way, e.g. Mixtral's softmax over the top-k, DeepSeek's routed scaling factor).
        expert_device: (E,) int, the device that serves each expert of this layer (the primary replica).
        link: the links of the D devices for this step.
        profiles: per-device compute profiles (a `wdmoe.radio.compute.DeviceProfiles`, arrays of shape (D,)).
        expert_flops_per_token: FLOPs of one expert FFN on one token.
        expert_weight_bytes: bytes of one expert's weights as stored on the device.
        bits_per_token: activation payload of one token in one direction, in bits (hidden size x activation bits).
        bandwidth_hz: the total bandwidth pool the policy may split, in Hz.
        bs_time_s: the BS's own time for this layer (attention + router), in seconds.
        logits: (T, E) router logits, when the model exposes them; None otherwise.
    """

    topk_index: np.ndarray
    topk_weight: np.ndarray
    expert_device: np.ndarray
    link: LinkState
    profiles: object
    expert_flops_per_token: float
    expert_weight_bytes: float
    bits_per_token: float
    bandwidth_hz: float
    bs_time_s: float = 0.0
    logits: np.ndarray | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.topk_index.shape[0])

    @property
    def num_devices(self) -> int:
        return self.link.num_devices


@dataclass(frozen=True)
class Decision:
    """What runs: keep (T, k) bool, weight (T, k) float (0 where dropped), bandwidth_hz (D,) per device.

    Invariant: every token keeps at least one expert.

    optimality_gap: for a policy that optimises an objective (the joint policy), a certified bound on the relative
        gap (upper bound - metric) / |upper bound| of this decision to the optimum of its own objective: 0.0 when
        the decision is exact, None when the policy claims nothing (a rule such as TopK or WLR).
    """

    keep: np.ndarray
    weight: np.ndarray
    bandwidth_hz: np.ndarray
    optimality_gap: float | None = None


class Policy(Protocol):
    """A policy decides per layer step. Each one says whether its decisions depend on the call order and offers a
    batched form of one-token steps or declines it (returns None).

    Attributes:
        name: the policy's name in reports and on the command line.
        order_independent: True when `decide` is a pure function of its state, so a caller may decide steps in any
            order or in batches (the simulator's batched replay); False for a policy that keeps its own random
            state (`RandomDrop`), which must see the steps in the runtime's order.
    """

    name: str

    @property
    def order_independent(self) -> bool: ...

    def decide(self, state: LayerState) -> Decision: ...

    def decide_steps(self, steps: OneTokenSteps) -> BatchDecision | None:
        """`decide` on each of n one-token steps at once (policy.steps), or None where the policy has no batched
        form for its configuration (a subclass that may decide otherwise declines too)."""
        ...
