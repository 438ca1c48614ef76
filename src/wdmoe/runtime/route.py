"""The hand-offs of a layer step: the router's output on the host, the route the step takes, and the step so far.

`RouterOutput.from_torch` is the route stage (one host synchronization on a GPU); `decide` (wdmoe.runtime.layer_step)
turns it into a `LayerPlan`, which transport with failover hands on with a new route when devices fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wdmoe.policy.base import Decision
from wdmoe.radio.latency import LatencyBreakdown
from wdmoe.runtime.failover import FailoverEvent
from wdmoe.runtime.liveness import RoutingTable


@dataclass(frozen=True)
class RouterOutput:
    """The model's router output of one layer step on the host: index / weight (T, k), logits (T, E) | None, and
    the model's own weight tensor (T, k), which the combine uses bit for bit while the route keeps it."""

    index: np.ndarray
    weight: np.ndarray
    logits: np.ndarray | None
    weight_t: torch.Tensor

    @classmethod
    def from_torch(cls, index: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor | None) -> RouterOutput:
        """The router's outputs as numpy, with one stream synchronization on a GPU instead of one per tensor."""
        if not index.is_cuda:
            host_logits = None if logits is None else logits.detach().float().numpy()
            return cls(index.detach().numpy(), weight.detach().float().numpy(), host_logits, weight)
        host = [t.detach().to("cpu", non_blocking=True) for t in (index, weight.float())]
        logits_host = None if logits is None else logits.detach().float().to("cpu", non_blocking=True)
        torch.cuda.current_stream(index.device).synchronize()
        return cls(host[0].numpy(), host[1].numpy(), None if logits_host is None else logits_host.numpy(), weight)

    @property
    def shape(self) -> tuple[int, int]:
        return self.index.shape[0], self.index.shape[1]


@dataclass(frozen=True)
class Route:
    """What the step runs: experts index (T, k), combine weights weight (T, k), keep (T, k) bool. `routers_weight`:
    index and weight are still the router's own (no policy, no failover), so the combine uses the model's tensor."""

    index: np.ndarray
    weight: np.ndarray
    keep: np.ndarray
    routers_weight: bool = False


@dataclass(frozen=True)
class LayerPlan:
    """One layer step after the decide stage (and, once transported, after failover).

    Attributes:
        layer: the decoder layer index.
        router: the router's output.
        route: the route the step takes.
        routing: the expert -> device tables the step routes with (their liveness included).
        decision / modeled: the policy's `Decision` and the radio model's latency of it (None without a scenario).
        events: device failures and rejoins noticed in this step.
        moved: assignments moved off dead devices in this step: (to a replica, to a substitute expert, dropped).
    """

    layer: int
    router: RouterOutput
    route: Route
    routing: RoutingTable
    decision: Decision | None = None
    modeled: LatencyBreakdown | None = None
    events: tuple[FailoverEvent, ...] = ()
    moved: tuple[int, int, int] = (0, 0, 0)
