"""Radio stage 4: THE latency and energy model of one MoE layer step, of a forward step and of a request.

Contract: pure numpy functions of arrays; the policies, the runtime's telemetry, the simulator and the planner all
call these, so there is exactly one latency model in the repository. Every formula below is a reconstruction
[R] of papers.md; the section is named at each.

One MoE layer step (papers.md §2.2 [R], §3.2 [R]), for device k with bandwidth share b_k:

    dl_k      = tokens_k * bits_per_token / r_dl(b_k)        tokens_k: distinct tokens with a kept expert on k
    compute_k = sum over experts e on k of roofline(n_e)      n_e: tokens kept on expert e (radio.compute)
    ul_k      = pairs_k * bits_per_token / r_ul(b_k)          pairs_k: kept (token, expert) pairs on k; the BS
                                                              applies the combine weights, so each output returns
    t_k       = dl_k + compute_k + ul_k                       (0 for an idle device)
    T_layer   = t_BS + max over active k of t_k               (the BS waits for every expert, §3.2)
    W_j       = max_active t_k - max over k in keep_j of t_k  (token j's attention waiting time, §3.2)

Energy (papers.md §3.2 says WDMoE is latency-only, [U]; this is our [R] addition): device transmission
tx_power_k * ul_k, device compute compute_power_k * compute_k, BS transmission p_k * dl_k with p_k the BS power
device k's downlink gets (radio.rate.bs_tx_power_per_share_w): bs_tx_power * b_k / B at a constant spectral
density over the DL pool B (the default), the full bs_tx_power per share under DownlinkPower.FULL_PER_DEVICE.

A forward step is the sum over its layers (§2.2 T_e2e [R]); a request's TTFT is its prefill step and TPOT the
mean of its decode steps.

Forms: `layer_breakdown(load, link, profiles, bandwidth_hz)` is the reference, on a `LayerLoad` (what the step
asks of the devices). Its parts are public for the solvers, which evaluate them many times per step:
`device_costs` (bits and compute seconds per device) and `device_times` (t_k on given shares).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from wdmoe.radio.compute import DeviceProfiles, roofline_time_s
from wdmoe.radio.link import LinkState
from wdmoe.radio.params import DEFAULT_BS_TX_POWER_W as DEFAULT_BS_TX_POWER_W  # the scenario's: 43 dBm, 19.95 W
from wdmoe.radio.rate import PoolMode, Shares, bs_tx_power_per_share_w, dl_share_time_s, pool_shares, share_time_s


@dataclass(frozen=True)
class LayerLoad:
    """What one MoE layer step asks of the devices, before the band is split (the radio model's input).

    Attributes:
        topk_index: (T, k) int, the router's experts. keep: (T, k) bool, the pairs that run.
        expert_device: (E,) int, the device serving each expert.
        expert_flops_per_token: FLOPs of one expert on one token.
        expert_weight_bytes: bytes of one expert's weights, or (E,) one size per expert (the planner's).
        bits_per_token: one token's payload in one direction, bits.
    """

    topk_index: np.ndarray
    keep: np.ndarray
    expert_device: np.ndarray
    expert_flops_per_token: float
    expert_weight_bytes: float | np.ndarray
    bits_per_token: float


@dataclass(frozen=True)
class DeviceLoad:
    """What one selection sends to each device: shapes (D,), (D,), (E,)."""

    tokens_dl: np.ndarray  # distinct tokens downlinked to each device
    pairs_ul: np.ndarray  # kept (token, expert) outputs uplinked from each device
    expert_tokens: np.ndarray  # tokens kept on each expert of the layer


def device_load(topk_index: np.ndarray, keep: np.ndarray, expert_device: np.ndarray,
                num_devices: int) -> DeviceLoad:
    """Count the tokens and pairs each device receives under the mask `keep` (T, k)."""
    experts = topk_index[keep]  # (kept pairs,)
    num_experts = expert_device.shape[0]
    expert_tokens = np.bincount(experts, minlength=num_experts).astype(float)
    devices = expert_device[topk_index]  # (T, k)
    pairs_ul = np.bincount(devices[keep], minlength=num_devices).astype(float)
    if topk_index.shape[1] == 1:
        tokens_dl = pairs_ul
    else:
        hit = np.zeros((topk_index.shape[0], num_devices), dtype=bool)  # (T, D): token j needs device d
        rows = np.broadcast_to(np.arange(topk_index.shape[0])[:, None], devices.shape)
        hit[rows[keep], devices[keep]] = True
        tokens_dl = hit.sum(axis=0).astype(float)
    return DeviceLoad(tokens_dl, pairs_ul, expert_tokens)


def compute_time_s(expert_tokens: np.ndarray, expert_device: np.ndarray, profiles: DeviceProfiles,
                   flops_per_token: float, weight_bytes: float | np.ndarray) -> np.ndarray:
    """(D,) seconds: each device runs the roofline of each of its experts on that expert's tokens, in turn."""
    per_expert = roofline_time_s(expert_tokens, flops_per_token, weight_bytes,
                                 profiles.flops_per_s[expert_device], profiles.mem_bytes_per_s[expert_device],
                                 profiles.overhead_s[expert_device])
    return np.bincount(expert_device, weights=per_expert, minlength=profiles.num_devices)


@dataclass(frozen=True)
class DeviceCosts:
    """What a selection asks of each device, shapes (D,): bits each way, compute seconds, and who is active."""

    bits_dl: np.ndarray
    bits_ul: np.ndarray
    compute_s: np.ndarray
    active: np.ndarray


def device_costs(load: LayerLoad, profiles: DeviceProfiles) -> DeviceCosts:
    """Bits each way and compute seconds per device for the kept pairs of `load` (module docstring)."""
    counts = device_load(load.topk_index, load.keep, load.expert_device, profiles.num_devices)
    compute_s = compute_time_s(counts.expert_tokens, load.expert_device, profiles, load.expert_flops_per_token,
                               load.expert_weight_bytes)
    return DeviceCosts(counts.tokens_dl * load.bits_per_token, counts.pairs_ul * load.bits_per_token, compute_s,
                       counts.pairs_ul > 0.0)


@dataclass(frozen=True)
class DeviceTimes:
    """Each device's downlink, uplink and round-trip (DL + compute + UL, 0 when idle) seconds, shapes (D,)."""

    dl_s: np.ndarray
    ul_s: np.ndarray
    total_s: np.ndarray


def device_times(costs: DeviceCosts, link: LinkState, shares: Shares) -> DeviceTimes:
    """t_k = dl_k + compute_k + ul_k on each device's DL and UL shares (module docstring)."""
    dl_s = dl_share_time_s(costs.bits_dl, shares.dl_hz, link.snr_dl_per_hz, link.dl_psd_pool_hz)
    ul_s = share_time_s(costs.bits_ul, shares.ul_hz, link.snr_ul_per_hz)
    return DeviceTimes(dl_s, ul_s, np.where(costs.active, dl_s + costs.compute_s + ul_s, 0.0))


@dataclass(frozen=True)
class LatencyBreakdown:
    """The modeled time and energy of one MoE layer step; per-device arrays have shape (D,), per-token (T,).

    Attributes:
        dl_s, compute_s, ul_s, total_s: each device's downlink, compute, uplink and round-trip seconds.
        bs_s: the BS's own seconds (attention + router). layer_s: bs_s + the slowest active device.
        waiting_s: per token, seconds its outputs wait at the BS for the slowest device (§3.2).
        bits_dl, bits_ul: bits sent to / from each device.
        energy_device_tx_j, energy_device_compute_j, energy_bs_tx_j: energy parts per device in joules.
    """

    dl_s: np.ndarray
    compute_s: np.ndarray
    ul_s: np.ndarray
    total_s: np.ndarray
    bs_s: float
    layer_s: float
    waiting_s: np.ndarray
    bits_dl: np.ndarray
    bits_ul: np.ndarray
    energy_device_tx_j: np.ndarray
    energy_device_compute_j: np.ndarray
    energy_bs_tx_j: np.ndarray

    @property
    def energy_j(self) -> float:
        """Total energy of the layer step in joules (device transmission + device compute + BS transmission)."""
        return float(self.energy_device_tx_j.sum() + self.energy_device_compute_j.sum()
                     + self.energy_bs_tx_j.sum())

    @property
    def active(self) -> np.ndarray:
        """(D,) bool: devices that run at least one kept expert."""
        return self.bits_ul > 0.0


def layer_breakdown(load: LayerLoad, link: LinkState, profiles: DeviceProfiles, bandwidth_hz: np.ndarray, *,
                    bs_time_s: float = 0.0, pool: PoolMode = PoolMode.SHARED,
                    bandwidth_ul_hz: np.ndarray | None = None,
                    bs_tx_power_w: float = DEFAULT_BS_TX_POWER_W) -> LatencyBreakdown:
    """The latency and energy of one MoE layer step (module docstring has the formulas).

    Shapes: bandwidth_hz (D,) Hz (and bandwidth_ul_hz with PoolMode.SEPARATE); `load` has the rest.
    An active device with a 0 Hz share gets infinite transfer time (and energy), not an error.
    """
    topk_index = np.asarray(load.topk_index)
    keep = np.asarray(load.keep, dtype=bool)
    expert_device = np.asarray(load.expert_device)
    if profiles.num_devices != link.num_devices:
        raise ValueError(f"profiles describe {profiles.num_devices} devices, the link {link.num_devices}; "
                         "give one profile per device")
    costs = device_costs(LayerLoad(topk_index, keep, expert_device, load.expert_flops_per_token,
                                   load.expert_weight_bytes, load.bits_per_token), profiles)
    shares = pool_shares(pool, bandwidth_hz, bandwidth_ul_hz)
    times = device_times(costs, link, shares)
    dl_s, ul_s, total_s, compute_s = times.dl_s, times.ul_s, times.total_s, costs.compute_s
    bits_dl, bits_ul = costs.bits_dl, costs.bits_ul
    slowest = float(total_s.max(initial=0.0))
    token_finish = np.where(keep, total_s[expert_device[topk_index]], 0.0).max(axis=1, initial=0.0)  # (T,)
    with np.errstate(invalid="ignore"):  # inf - inf when the slowest device never finishes
        waiting_s = np.where(token_finish == slowest, 0.0, slowest - token_finish)
    bs_power_w = bs_tx_power_per_share_w(bs_tx_power_w, shares.dl_hz, link.dl_psd_pool_hz)
    bs_tx, device_compute, device_tx = energy_parts_j(dl_s, compute_s, ul_s, profiles.compute_power_w,
                                                      profiles.tx_power_w, bs_power_w)
    return LatencyBreakdown(
        dl_s=dl_s, compute_s=compute_s, ul_s=ul_s, total_s=total_s, bs_s=float(bs_time_s),
        layer_s=float(bs_time_s) + slowest, waiting_s=waiting_s, bits_dl=bits_dl, bits_ul=bits_ul,
        energy_device_tx_j=device_tx, energy_device_compute_j=device_compute, energy_bs_tx_j=bs_tx,
    )


def energy_parts_j(dl_s: Any, compute_s: Any, ul_s: Any, compute_power_w: Any, tx_power_w: Any,
                   bs_tx_power_w: Any) -> tuple[Any, Any, Any]:
    """(BS transmission, device compute, device transmission) joules: the BS sends the downlink, the device
    computes and sends the uplink. Scalars or arrays that broadcast; bs_tx_power_w is the power each downlink
    gets (radio.rate.bs_tx_power_per_share_w)."""
    return bs_tx_power_w * dl_s, compute_power_w * compute_s, tx_power_w * ul_s


@dataclass(frozen=True)
class StepLatency:
    """One forward step (prefill or one decode token): sums over its MoE layers (papers.md §2.2 T_e2e [R])."""

    latency_s: float
    energy_j: float
    energy_device_tx_j: float
    energy_device_compute_j: float
    energy_bs_tx_j: float
    bits_dl: float
    bits_ul: float
    num_layers: int


def step_totals(layers: Sequence[LatencyBreakdown]) -> StepLatency:
    """Sum the layer steps of one forward step."""
    return StepLatency(
        latency_s=float(sum(b.layer_s for b in layers)),
        energy_j=float(sum(b.energy_j for b in layers)),
        energy_device_tx_j=float(sum(b.energy_device_tx_j.sum() for b in layers)),
        energy_device_compute_j=float(sum(b.energy_device_compute_j.sum() for b in layers)),
        energy_bs_tx_j=float(sum(b.energy_bs_tx_j.sum() for b in layers)),
        bits_dl=float(sum(b.bits_dl.sum() for b in layers)),
        bits_ul=float(sum(b.bits_ul.sum() for b in layers)),
        num_layers=len(layers),
    )


def step_share(step: StepLatency, share: float) -> StepLatency:
    """One request's part of a forward step it shared with others (continuous batching): it waits for the whole
    step, so the latency stays; energy and bits are split in proportion to its `share` (0..1) of the step's tokens."""
    return StepLatency(
        latency_s=step.latency_s,
        energy_j=step.energy_j * share,
        energy_device_tx_j=step.energy_device_tx_j * share,
        energy_device_compute_j=step.energy_device_compute_j * share,
        energy_bs_tx_j=step.energy_bs_tx_j * share,
        bits_dl=step.bits_dl * share,
        bits_ul=step.bits_ul * share,
        num_layers=step.num_layers,
    )


@dataclass(frozen=True)
class RequestLatency:
    """A request: TTFT = its prefill step, TPOT = mean decode step (nan without decode steps), in seconds."""

    ttft_s: float
    tpot_s: float
    total_s: float
    energy_j: float
    num_decode_steps: int


@dataclass(frozen=True)
class RequestTimes:
    """TTFT and TPOT of R requests, (R,) seconds each; TPOT is nan for a request without decode steps."""

    ttft_s: np.ndarray
    tpot_s: np.ndarray


def request_times(step_s: np.ndarray, step_request: np.ndarray, decode: np.ndarray,
                  num_requests: int) -> RequestTimes:
    """`request_latency`'s TTFT and TPOT for many requests at once (the simulator's form).

    step_s (S,): each forward step's seconds, in run order; step_request (S,) int: its request, the steps of one
    request contiguous and its first step the prefill; decode (S,) bool: decode steps.
    """
    ttft = np.zeros(num_requests)
    first = np.flatnonzero(np.r_[True, np.diff(step_request) != 0])
    ttft[step_request[first]] = step_s[first]
    count = np.bincount(step_request[decode], minlength=num_requests)
    total = np.bincount(step_request[decode], weights=step_s[decode], minlength=num_requests)
    with np.errstate(invalid="ignore", divide="ignore"):
        tpot = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return RequestTimes(ttft, tpot)


def request_latency(prefill: StepLatency, decode: Sequence[StepLatency]) -> RequestLatency:
    """TTFT, TPOT, total time and energy of one request from its step totals."""
    decode_s = [s.latency_s for s in decode]
    return RequestLatency(
        ttft_s=prefill.latency_s,
        tpot_s=float(np.mean(decode_s)) if decode_s else float("nan"),
        total_s=prefill.latency_s + float(sum(decode_s)),
        energy_j=prefill.energy_j + float(sum(s.energy_j for s in decode)),
        num_decode_steps=len(decode_s),
    )
