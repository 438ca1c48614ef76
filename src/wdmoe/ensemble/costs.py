"""MoE² stage 1: what one request costs on each LLM expert, and what a subset of experts costs (pure numpy).

Contract: `request_costs` models, for N LLM experts (one per edge server) and C application categories, the
seconds and joules of one request as arrays of shape (N, C); `RequestCosts` can also be built directly from
measured profiles. `subset_energy_j` and `subset_delay_s` give the worst-case cost of a subset S, the numbers the
coarse selection (`wdmoe.ensemble.selection`) holds against the budgets. Both are monotone non-decreasing in S.

Request model (papers.md §5.2 [R]; every time comes from `wdmoe.radio`, no new latency formula here): the access
point sends the prompt to server n (the BS -> device direction of `radio.rate`), server n prefills it and decodes
the answer one token at a time, then returns the answer (device -> BS):

    dl     = dl_share_time_s(prompt_tokens * bits_per_token, b_n, snr_dl_n, link.dl_psd_pool_hz)
    prefill = roofline_time_s(prompt_tokens, F_n, W_n, server_n)          F_n = 2 * params_n FLOP/token [R]
    decode = answer_tokens * roofline_time_s(1, F_n, W_n, server_n)       W_n = params_n * bytes_per_param; the
                                                                          KV-cache reads are left out [R]
    ul     = share_time_s(answer_tokens * bits_per_token, b_n, snr_ul_n)
    t_n^c  = dl + prefill + decode + ul
    e_n^c  = p_n * dl + compute_power_n * (prefill + decode) + tx_power_n * ul
                                         p_n: the BS power server n's downlink gets (radio.rate.bs_tx_power_per_share_w)

The energy split is the one of `radio.latency` (BS transmission, device compute, device transmission).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from wdmoe.radio.compute import DeviceProfile, dense_flops_per_token, roofline_time_s
from wdmoe.radio.latency import energy_parts_j
from wdmoe.radio.link import LinkState
from wdmoe.radio.params import DEFAULT_BS_TX_POWER_W
from wdmoe.radio.rate import bs_tx_power_per_share_w, dl_share_time_s, share_time_s

DEFAULT_BITS_PER_TOKEN = 32.0  # a token id as int32, or ~4 UTF-8 bytes of text per token [R]


@dataclass(frozen=True)
class Category:
    """An application category: the typical lengths of its requests.

    Attributes:
        name: a label, e.g. "qa" or "code".
        prompt_tokens: tokens in a prompt (uplinked and prefilled), >= 0.
        answer_tokens: tokens generated per answer (decoded and returned), >= 0.
    """

    name: str
    prompt_tokens: int
    answer_tokens: int

    def __post_init__(self) -> None:
        for field in ("prompt_tokens", "answer_tokens"):
            if getattr(self, field) < 0:
                raise ValueError(f"Category {self.name!r}: {field} = {getattr(self, field)} tokens must be >= 0")


@dataclass(frozen=True)
class LLMExpert:
    """One LLM on its edge server.

    Attributes:
        name: a label, e.g. "qwen-1.5b@orin".
        params: parameter count of the model.
        server: the compute and power figures of the server that hosts it (`radio.compute.DeviceProfile`).
        bytes_per_param: bytes per weight as stored (2 for fp16/bf16, 1 for int8, 0.5 for int4).
    """

    name: str
    params: float
    server: DeviceProfile
    bytes_per_param: float = 2.0

    def __post_init__(self) -> None:
        for field in ("params", "bytes_per_param"):
            if not getattr(self, field) > 0.0:
                raise ValueError(f"LLMExpert {self.name!r}: {field} = {getattr(self, field)} must be > 0")

    @property
    def flops_per_token(self) -> float:
        """2 FLOPs per parameter per token: a dense decoder's matmuls, attention over the context left out [R]."""
        return dense_flops_per_token(self.params)

    @property
    def weight_bytes(self) -> float:
        return self.params * self.bytes_per_param


@dataclass(frozen=True)
class RequestCosts:
    """Per-request delay and energy of every expert in every category, modeled or measured.

    Attributes:
        expert_names: N labels. category_names: C labels.
        delay_s: (N, C) seconds per request (e.g. a measured 95th percentile); inf means "never in time".
        energy_j: (N, C) joules per request.
    """

    expert_names: tuple[str, ...]
    category_names: tuple[str, ...]
    delay_s: np.ndarray
    energy_j: np.ndarray

    def __post_init__(self) -> None:
        shape = (len(self.expert_names), len(self.category_names))
        for field in ("delay_s", "energy_j"):
            values = np.asarray(getattr(self, field), dtype=float)
            if values.shape != shape:
                raise ValueError(f"RequestCosts.{field} has shape {values.shape}; give (experts, categories) = {shape}")
            if np.isnan(values).any() or (values < 0.0).any():
                unit = "s" if field == "delay_s" else "J"
                raise ValueError(f"RequestCosts.{field} holds {values.min()} {unit} or NaN; costs must be >= 0")

    @property
    def num_experts(self) -> int:
        return len(self.expert_names)

    def worst_case_energy_j(self) -> np.ndarray:
        """(N,) joules per request in the most expensive category: the per-expert energy the budget is held
        against when a category mix is not known [R]."""
        return np.asarray(self.energy_j, dtype=float).max(axis=1, initial=0.0)


def request_costs(
    experts: Sequence[LLMExpert],
    categories: Sequence[Category],
    link: LinkState,
    bandwidth_hz: np.ndarray | float,
    *,
    bits_per_token: float = DEFAULT_BITS_PER_TOKEN,
    bs_tx_power_w: float = DEFAULT_BS_TX_POWER_W,
) -> RequestCosts:
    """Model every expert's per-request delay and energy (module docstring has the formulas).

    `link` describes the access point -> server links, one per expert (link.num_devices == N); bandwidth_hz is
    each server's share in Hz, shape (N,) or a scalar for all.
    """
    if link.num_devices != len(experts):
        raise ValueError(
            f"the link describes {link.num_devices} servers, there are {len(experts)} experts; "
            "give one link per expert's server"
        )
    if not categories:
        raise ValueError("request_costs needs at least one Category")
    share_hz = np.broadcast_to(np.asarray(bandwidth_hz, dtype=float), (len(experts),))
    prompt = np.array([c.prompt_tokens for c in categories], dtype=float)  # (C,)
    answer = np.array([c.answer_tokens for c in categories], dtype=float)  # (C,)
    delay = np.zeros((len(experts), len(categories)))
    energy = np.zeros_like(delay)
    for n, expert in enumerate(experts):
        s = expert.server
        roofline = (expert.flops_per_token, expert.weight_bytes, s.flops_per_s, s.mem_bytes_per_s, s.overhead_s)
        compute_s = roofline_time_s(prompt, *roofline) + answer * roofline_time_s(1.0, *roofline)
        dl_s = dl_share_time_s(prompt * bits_per_token, share_hz[n], link.snr_dl_per_hz[n], link.dl_psd_pool_hz)
        ul_s = share_time_s(answer * bits_per_token, share_hz[n], link.snr_ul_per_hz[n])
        delay[n] = dl_s + compute_s + ul_s
        bs_power_w = bs_tx_power_per_share_w(bs_tx_power_w, share_hz[n], link.dl_psd_pool_hz)
        bs_tx, device_compute, device_tx = energy_parts_j(dl_s, compute_s, ul_s, s.compute_power_w, s.tx_power_w,
                                                          bs_power_w)
        energy[n] = bs_tx + device_compute + device_tx
    return RequestCosts(tuple(e.name for e in experts), tuple(c.name for c in categories), delay, energy)


def subset_energy_j(energy_j: np.ndarray, subset: Iterable[int], top_k: int | None = None) -> float:
    """Energy of subset S in joules, from per-expert energies (N,).

    top_k None: E(S) = sum over S, the energy when every member answers. top_k = k: the worst case of the fine
    level, which activates any k members of S per prompt: the sum of the k largest energies in S (papers.md §5.3
    [R]). Both are monotone non-decreasing in S (energies are >= 0); E(∅) = 0.
    """
    members = np.sort(np.asarray(energy_j, dtype=float)[sorted(set(subset))])  # ascending: monotone to the ulp
    if top_k is not None and members.size > top_k:
        members = members[members.size - top_k :]
    return float(members.sum())


def subset_delay_s(delay_s: np.ndarray, subset: Iterable[int], aggregation_s: float = 0.0) -> np.ndarray:
    """Worst-case delay of subset S per category, (C,) seconds, from per-expert delays (N, C).

    The fine level runs any top-k of S in parallel and waits for the slowest, so the worst case over every top-k
    (k >= 1) is the slowest member of S: T_c(S) = max_{n in S} t_n^c + aggregation_s, and T_c(∅) = 0 (papers.md
    §5.2-5.3 [R]). Monotone non-decreasing in S.
    """
    table = np.asarray(delay_s, dtype=float)
    members = sorted(set(subset))
    if not members:
        return np.zeros(table.shape[1])
    return table[members].max(axis=0) + aggregation_s
