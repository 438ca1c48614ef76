"""The decide stage's contract: what a decider takes and answers for one layer step (pure numpy, no torch, no
pydantic, so the runtime core imports where only torch is installed, like the GPU machine's image).

`WirelessDecider` (wdmoe.runtime.wireless) is the decider of a model with a radio scenario.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wdmoe.policy.base import Decision
from wdmoe.radio.latency import LatencyBreakdown


@dataclass(frozen=True)
class ModeledDecision:
    """What the radio side answers for one layer step: the policy's `Decision` and the radio model's latency of it."""

    decision: Decision
    modeled: LatencyBreakdown


class Decider(Protocol):
    """topk_index / topk_weight (T, k), logits (T, E) | None, the step's expert -> device table (E,) and the air
    format's bits per token in; the policy's decision and its modeled latency out."""

    def __call__(self, layer: int, index: np.ndarray, weight: np.ndarray, logits: np.ndarray | None, *,
                 expert_device: np.ndarray | None = None,
                 bits_per_token: float | None = None) -> ModeledDecision: ...
