"""The distributed MoE layer: router output -> policy -> dispatch to devices -> combine (the heart of wdmoe).

`RemoteExperts` takes the place of a Hugging Face block's `.experts` module and keeps its signature
`(hidden_states (T, H), top_k_index (T, k), top_k_weights (T, k)) -> (T, H)`, so the router, the shared experts
and the residual stay the model's own code. With the model's own top-k (no policy) the output equals the unsplit
model's.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from wdmoe.backends.base import DeviceBatch, DeviceFailure, DevicePool, RejoiningPool
from wdmoe.placement import Placement
from wdmoe.radio.latency import LatencyBreakdown
from wdmoe.runtime.air import AirCompression, bits_per_token
from wdmoe.runtime.decider import Decider
from wdmoe.runtime.failover import FailoverEvent, Reroute, reroute
from wdmoe.runtime.telemetry import LayerRecord, Telemetry


class Dispatcher:
    """Groups each layer's (token, expert) assignments by device, runs them on the pool, and combines.

    Failover (see `wdmoe.runtime.failover`): when the pool raises `DeviceFailure`, the failed devices join `dead`,
    their assignments are re-routed (a live replica, else the next-best live expert) and sent in a further round
    of the same layer step; later steps route around `dead` before the policy runs. A pool that can bring devices
    back (`RejoiningPool`) is asked at each step while a device is dead.
    """

    def __init__(self, pool: DevicePool, placement: Placement, telemetry: Telemetry) -> None:
        self.pool = pool
        self.placement = placement
        self.telemetry = telemetry
        self.decider: Decider | None = None
        self.activation_bits: int | None = None  # the radio scenario's bits per value on the air, when one is set
        self.record_logits = True
        self.air: AirCompression | None = None  # activation dtype on the air, token fusion (wdmoe.runtime.air)
        self.fused_tokens = 0  # tokens fusion spared in the current layer step
        self.mark_s = time.perf_counter()
        self.dead: frozenset[int] = frozenset()
        self.primary = {layer: placement.primary_table(layer) for layer in placement.moe_layers}
        self.base = {layer: table.copy() for layer, table in self.primary.items()}
        self.live = {layer: table.copy() for layer, table in self.primary.items()}  # -1: no live device
        self.base_rows = {layer: table.tolist() for layer, table in self.base.items()}  # for the decode fast path
        self.zero_rows = [torch.zeros(n, dtype=torch.long) for n in range(max(self.placement.num_experts, 8) + 1)]

    def set_decider(self, decider: Decider | None, activation_bits: int | None = None) -> None:
        """Decide every layer step with `decider` (None: the model's own top-k) over a scenario that puts
        `activation_bits` per value on the air."""
        self.decider, self.activation_bits = decider, None if decider is None else activation_bits

    def bits_per_token(self, hidden: torch.Tensor) -> int:
        """The air format's bits per token (`wdmoe.runtime.air.bits_per_token`) for hidden states like `hidden`."""
        return bits_per_token(self.air, self.activation_bits, hidden.shape[-1], hidden.element_size() * 8)

    def set_dead(self, dead: frozenset[int]) -> None:
        """Route around `dead`. `primary` (shared with the radio decider) keeps a dead device where an expert has
        no live replica, so every table entry stays a valid device id; `live` has -1 there."""
        if len(dead) >= self.placement.num_devices:
            raise RuntimeError(
                f"all {self.placement.num_devices} devices have failed ({sorted(dead)}); no expert is left to run "
                "the request; restart the devices (`wdmoe device start`) and retry"
            )
        self.dead = dead
        for layer in self.placement.moe_layers:
            live = self.placement.primary_table(layer, dead)
            self.live[layer] = live
            self.primary[layer][:] = np.where(live >= 0, live, self.base[layer])

    def run(
        self,
        layer: int,
        hidden: torch.Tensor,  # (T, H)
        topk_index: torch.Tensor,  # (T, k)
        topk_weight: torch.Tensor,  # (T, k)
        logits: torch.Tensor | None,  # (T, E)
    ) -> torch.Tensor:  # (T, H)
        start = time.perf_counter()
        bs_time_s = start - self.mark_s
        num_tokens, k = topk_index.shape
        pre_events: list[FailoverEvent] = []
        if num_tokens == 1 and self.decider is None and not self.dead and self.air is None:
            fast = self._run_one_token(layer, hidden, topk_index, topk_weight, logits, bs_time_s)
            if isinstance(fast, torch.Tensor):
                return fast
            pre_events = fast  # a device failed: route around it below, in the general path
        router_index, weight_np, logits_np = _to_host(topk_index, topk_weight, logits)
        router_weight = weight_np
        self.fused_tokens, air = 0, self.air
        events: list[FailoverEvent] = pre_events or (self._rejoin() if self.dead else [])
        index, usable, rerouted = router_index, np.ones_like(router_index, dtype=bool), False
        moved = np.zeros(3, dtype=np.int64)  # assignments moved to a replica, to a substitute expert, dropped
        if self.dead:
            lost = self.live[layer][index] < 0  # experts with every replica dead: re-route before the policy
            replicas = (self.primary[layer][index] != self.base[layer][index]).sum()
            if lost.any():
                route = reroute(index, weight_np, usable, lost, self.live[layer], logits_np)
                index, weight_np, usable, rerouted = route.index, route.weight.astype(np.float32), route.keep, True
                moved += (0, route.substitute, route.dropped)
            moved[0] += replicas
        modeled: LatencyBreakdown | None = None
        bits = self.bits_per_token(hidden)
        if self.decider is None:
            keep, weight = usable, weight_np
        else:
            decided = self.decider(layer, index, weight_np, logits_np, expert_device=self.primary[layer],
                                   bits_per_token=float(bits))
            keep, weight, modeled = decided.decision.keep, decided.decision.weight, decided.modeled
            keep, rerouted = keep & usable, True
        num_devices = self.placement.num_devices
        dl_s, ul_s = _air_times(modeled, num_devices)
        device_of = np.where(keep, self.primary[layer][index], -1).ravel()  # (T*k,)
        batches, positions, tokens_down, counts = self._plan(layer, hidden, index, device_of, k, dl_s, ul_s)
        out = hidden.new_zeros((num_tokens * k, hidden.shape[-1]))
        device_time_s = np.zeros(num_devices)
        dispatch_start = time.perf_counter()
        pending = list(zip(batches, positions, strict=True))
        while pending:  # one round, plus one more per round in which devices failed
            failure: DeviceFailure | None = None
            try:
                results = self.pool.dispatch([b for b, _ in pending])
            except DeviceFailure as exc:
                failure, results = exc, exc.results
            done = {r.device for r in results}
            answered = [pos for b, pos in pending if b.device in done]
            for pos, result in zip(answered, results, strict=True):
                out[_on(out, pos)] = result.output if air is None else air.wire(result.output)
                device_time_s[result.device] += result.compute_s
            if failure is None:
                break
            affected = np.zeros(num_tokens * k, dtype=bool)
            for b, pos in pending:
                affected[pos] |= b.device not in done
            self.set_dead(self.dead | frozenset(failure.failed))
            route = reroute(index, weight, keep, affected.reshape(num_tokens, k), self.live[layer], logits_np)
            index, weight, keep, rerouted = route.index, route.weight, route.keep, True
            events.extend(_failure_events(failure, route))
            moved += (route.replica, route.substitute, route.dropped)
            device_of = np.where(affected & keep.ravel(), self.primary[layer][index].ravel(), -1)
            retry, retry_pos, more_tokens, more_counts = self._plan(layer, hidden, index, device_of, k, dl_s, ul_s)
            tokens_down, counts = tokens_down + more_tokens, counts + more_counts
            pending = list(zip(retry, retry_pos, strict=True))
        dispatch_s = time.perf_counter() - dispatch_start
        if rerouted:
            weight_t = torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)).to(
                hidden.device, non_blocking=True
            )
        else:
            weight_t = topk_weight  # the model's own weights, bit for bit
        combined = (out.view(num_tokens, k, -1) * weight_t.unsqueeze(-1)).sum(dim=1).to(hidden.dtype)
        self.telemetry.add(
            LayerRecord(
                layer=layer,
                topk_index=router_index,
                topk_weight=router_weight,
                keep=keep,
                weight=np.asarray(weight),
                logits=logits_np,
                tokens_down=tokens_down,
                assignments=counts,
                bits_down=tokens_down * bits,
                bits_up=counts * bits,
                bs_time_s=bs_time_s,
                device_time_s=device_time_s,
                dispatch_time_s=dispatch_s,
                modeled=modeled,
                routed_index=None if index is router_index else index,
                failover=tuple(events),
                rerouted=(int(moved[0]), int(moved[1]), int(moved[2])),
                fused_tokens=self.fused_tokens,
            )
        )
        self.mark_s = time.perf_counter()
        return combined

    def _run_one_token(
        self,
        layer: int,
        hidden: torch.Tensor,  # (1, H)
        topk_index: torch.Tensor,  # (1, k)
        topk_weight: torch.Tensor,  # (1, k)
        logits: torch.Tensor | None,  # (1, E)
        bs_time_s: float,
    ) -> torch.Tensor | list[FailoverEvent]:
        """`run` for one token with the model's own routing and every device live (the decode hot path).

        The same batches, the same combine (so the same output, bit for bit) and the same record as `run`, with
        Python lists in place of numpy planning and no scatter into a zeroed buffer. A device failure marks the
        failed devices dead and returns the events: `run` then re-routes the step in its general path.
        """
        router_index, weight_np, logits_np = _to_host(topk_index, topk_weight, logits)
        experts = router_index[0].tolist()
        table = self.base_rows[layer]
        groups: dict[int, list[int]] = {}
        for j, expert in enumerate(experts):
            groups.setdefault(table[expert], []).append(j)
        devices = sorted(groups)
        batches = [
            DeviceBatch(d, layer, hidden, self.zero_rows[len(groups[d])], torch.tensor([experts[j] for j in groups[d]]))
            for d in devices
        ]
        dispatch_start = time.perf_counter()
        try:
            results = self.pool.dispatch(batches)
        except DeviceFailure as failure:
            self.set_dead(self.dead | frozenset(failure.failed))
            return [FailoverEvent("failed", d, why, failure.detect_s) for d, why in sorted(failure.failed.items())]
        dispatch_s = time.perf_counter() - dispatch_start
        if len(results) == 1:  # one device holds all k: its rows are in k order already
            stacked = results[0].output
        elif len(results) == len(experts):  # one assignment per device (the usual decode step): cat in k order,
            by_k = [results[0].output] * len(experts)  # no index upload or gather kernel
            for d, result in zip(devices, results, strict=True):
                by_k[groups[d][0]] = result.output
            stacked = torch.cat(by_k)
        else:
            order = [j for d in devices for j in groups[d]]
            stacked = torch.cat([r.output for r in results])
            if order != sorted(order):
                stacked = stacked[_on(stacked, np.argsort(order))]  # no blocking upload: the GPU is not waited for
        combined = (stacked * topk_weight.T).sum(dim=0, keepdim=True)  # = run's sum over k, in k order
        if combined.dtype != hidden.dtype:
            combined = combined.to(hidden.dtype)
        num_devices = self.placement.num_devices
        counts = np.zeros(num_devices, dtype=np.int64)
        tokens_down = np.zeros(num_devices, dtype=np.int64)
        device_time_s = np.zeros(num_devices)
        for d, result in zip(devices, results, strict=True):
            counts[d], tokens_down[d] = len(groups[d]), 1
            device_time_s[d] += result.compute_s
        bits = self.bits_per_token(hidden)
        keep = np.ones((1, len(experts)), dtype=bool)
        self.telemetry.add(
            LayerRecord(
                layer=layer,
                topk_index=router_index,
                topk_weight=weight_np,
                keep=keep,
                weight=weight_np,
                logits=logits_np,
                tokens_down=tokens_down,
                assignments=counts,
                bits_down=tokens_down * bits,
                bits_up=counts * bits,
                bs_time_s=bs_time_s,
                device_time_s=device_time_s,
                dispatch_time_s=dispatch_s,
            )
        )
        self.mark_s = time.perf_counter()
        return combined

    def _plan(
        self,
        layer: int,
        hidden: torch.Tensor,  # (T, H)
        index: np.ndarray,  # (T, k)
        device_of: np.ndarray,  # (T*k,) device of each assignment, -1: not sent
        k: int,
        dl_s: np.ndarray,  # (D,)
        ul_s: np.ndarray,  # (D,)
    ) -> tuple[list[DeviceBatch], list[np.ndarray], np.ndarray, np.ndarray]:
        """One batch per device with assignments: its distinct tokens (sent once) and the expert of each."""
        if hidden.shape[0] == 1:
            return self._plan_one_token(layer, hidden, index, device_of, dl_s, ul_s)
        order = np.argsort(device_of, kind="stable")
        num_devices = self.placement.num_devices
        counts = np.bincount(device_of[device_of >= 0], minlength=num_devices)
        batches, positions = [], []
        tokens_down = np.zeros(num_devices, dtype=np.int64)
        cursor = int((device_of < 0).sum())  # unsent assignments sort first
        flat_expert = index.ravel()
        for device in np.flatnonzero(counts).tolist():
            pos = order[cursor : cursor + counts[device]]
            cursor += int(counts[device])
            tokens = pos // k
            if tokens.shape[0] == 1:
                distinct, rows = tokens, np.zeros(1, dtype=np.int64)
            else:
                distinct, rows = np.unique(tokens, return_inverse=True)
            sent, token_index = hidden[_on(hidden, distinct)], torch.from_numpy(rows)
            if self.air is not None:
                sent, token_index, saved = self.air.down(sent, token_index)
                self.fused_tokens += saved
            tokens_down[device] = sent.shape[0]
            batches.append(
                DeviceBatch(
                    device,
                    layer,
                    sent,
                    token_index,
                    torch.from_numpy(flat_expert[pos]),
                    float(dl_s[device]),
                    float(ul_s[device]),
                )
            )
            positions.append(pos)
        return batches, positions, tokens_down, counts

    def _plan_one_token(
        self,
        layer: int,
        hidden: torch.Tensor,  # (1, H)
        index: np.ndarray,  # (1, k)
        device_of: np.ndarray,  # (k,)
        dl_s: np.ndarray,
        ul_s: np.ndarray,
    ) -> tuple[list[DeviceBatch], list[np.ndarray], np.ndarray, np.ndarray]:
        """`_plan` for a decode step: the same batches, with Python sets instead of sorting k assignments."""
        num_devices = self.placement.num_devices
        counts = np.zeros(num_devices, dtype=np.int64)
        tokens_down = np.zeros(num_devices, dtype=np.int64)
        batches, positions = [], []
        experts = index.ravel()
        devices = device_of.tolist()
        if self.air is not None:
            hidden = self.air.wire(hidden)
        for device in sorted({d for d in devices if d >= 0}):
            pos = np.array([i for i, d in enumerate(devices) if d == device], dtype=np.int64)
            counts[device], tokens_down[device] = pos.shape[0], 1
            rows = torch.zeros(pos.shape[0], dtype=torch.long)
            expert = torch.from_numpy(experts[pos])
            batches.append(DeviceBatch(device, layer, hidden, rows, expert, float(dl_s[device]), float(ul_s[device])))
            positions.append(pos)
        return batches, positions, tokens_down, counts

    def _rejoin(self) -> list[FailoverEvent]:
        if not isinstance(self.pool, RejoiningPool):
            return []
        back = self.pool.rejoined() & self.dead
        if back:
            self.set_dead(self.dead - back)
        return [FailoverEvent("rejoined", d) for d in sorted(back)]


def _to_host(
    index: torch.Tensor, weight: torch.Tensor, logits: torch.Tensor | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The router's outputs as numpy, with one stream synchronization on a GPU instead of one per tensor."""
    gpu = index.is_cuda
    if not gpu:
        return index.detach().numpy(), weight.detach().float().numpy(), _host_logits(logits)
    host = [t.detach().to("cpu", non_blocking=gpu) for t in (index, weight.float())]
    logits_host = None if logits is None else logits.detach().float().to("cpu", non_blocking=gpu)
    if gpu:
        torch.cuda.current_stream(index.device).synchronize()
    return host[0].numpy(), host[1].numpy(), None if logits_host is None else logits_host.numpy()


def _host_logits(logits: torch.Tensor | None) -> np.ndarray | None:
    return None if logits is None else logits.detach().float().numpy()


def _on(like: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """An index tensor for `like`'s device. A pageable host source is staged by CUDA before the call returns, so
    non_blocking skips the stream synchronization of a blocking copy without racing the numpy buffer."""
    index = torch.from_numpy(rows)
    return index if like.device.type == "cpu" else index.to(like.device, non_blocking=True)


def _air_times(modeled: LatencyBreakdown | None, num_devices: int) -> tuple[np.ndarray, np.ndarray]:
    """(D,) modeled downlink and uplink seconds of each device (zeros without a radio model)."""
    if modeled is None:
        return np.zeros(num_devices), np.zeros(num_devices)
    return np.asarray(modeled.dl_s, dtype=float), np.asarray(modeled.ul_s, dtype=float)


def _failure_events(failure: DeviceFailure, route: Reroute) -> list[FailoverEvent]:
    """One event per failed device; the re-routing counts of the step go on the first."""
    events = []
    for n, (device, reason) in enumerate(sorted(failure.failed.items())):
        counts = (route.replica, route.substitute, route.dropped) if n == 0 else (0, 0, 0)
        events.append(FailoverEvent("failed", device, reason, failure.detect_s, *counts))
    return events


class RemoteExperts(nn.Module):
    """Stands in for a block's `.experts`: same call signature, no weights; the experts live on the devices."""

    def __init__(self, layer: int, num_experts: int, dispatcher: Dispatcher) -> None:
        super().__init__()
        self.layer = layer
        self.num_experts = num_experts
        self.dispatcher = dispatcher
        self.logits: torch.Tensor | None = None  # set by a hook on the block's router when logits are recorded

    def forward(
        self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor
    ) -> torch.Tensor:
        logits, self.logits = self.logits, None
        return self.dispatcher.run(self.layer, hidden_states, top_k_index, top_k_weights, logits)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, num_experts={self.num_experts}, on devices"
