"""The group and combine stages of a layer step: (token, expert) assignments into one batch per device, and the
devices' answers back into (T, H) with the model's own arithmetic.

Contract: a `Grouping` pairs a `group` and a `combine`. `REFERENCE` works for any number of tokens: it sorts the
assignments by device (numpy) and scatters the answers into a zeroed (T*k, H) buffer before the weighted sum over
k. `ONE_TOKEN` is the decode form, registered for steps of one token only (`applies`): the same batches with Python
lists instead of sorting, and the answers stacked in k order instead of scattered. It is an alternative of these
two stages only, tested equal to the reference (bit-identical outputs, equal records:
tests/unit/runtime/test_layer_step.py); the runtime chooses it explicitly (`Runtime.decode_grouping`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from wdmoe.backends.base import DeviceBatch
from wdmoe.runtime.air import AirCompression
from wdmoe.runtime.liveness import RoutingTable

Answer = tuple[np.ndarray, torch.Tensor]  # (m,) flat positions t * k + j of a batch's assignments, (m, H) outputs


@dataclass(frozen=True)
class AirPlan:
    """What the batches of one step carry besides the routing: D, the radio model's air seconds of each device
    (None without a radio model: the batches say 0) and the compression on the air (None: off)."""

    num_devices: int
    dl_s: np.ndarray | None = None  # (D,)
    ul_s: np.ndarray | None = None  # (D,)
    compression: AirCompression | None = None


@dataclass(frozen=True)
class Dispatch:
    """One round of a layer step: one batch per device with assignments, and where each batch's outputs go.

    Attributes:
        batches: one `DeviceBatch` per device, in device order.
        positions: per batch, (m,) the flat position t * k + j of each of its assignments, ascending.
        tokens_down: (D,) rows sent down to each device; assignments: (D,) expert outputs it sends back.
        fused_tokens: rows token fusion spared (`wdmoe.runtime.air`).
    """

    batches: list[DeviceBatch]
    positions: list[np.ndarray]
    tokens_down: np.ndarray
    assignments: np.ndarray
    fused_tokens: int = 0


class GroupFn(Protocol):
    def __call__(self, layer: int, hidden: torch.Tensor, index: np.ndarray, send: np.ndarray,
                 routing: RoutingTable, air: AirPlan) -> Dispatch: ...


CombineFn = Callable[[Sequence[Answer], int, int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Grouping:
    """A group stage and its combine. `applies(num_tokens)`: the step sizes this form is written for."""

    name: str
    group: GroupFn
    combine: CombineFn
    applies: Callable[[int], bool]


def group(layer: int, hidden: torch.Tensor, index: np.ndarray, send: np.ndarray, routing: RoutingTable,
          air: AirPlan) -> Dispatch:
    """The batches for the assignments `send` (T, k) of experts `index` (T, k) on their primary devices of
    `routing`; each device gets its distinct tokens once (hidden (T, H)) and the expert of each assignment."""
    k = index.shape[1]
    device_of = np.where(send, routing.primary[layer][index], -1).ravel()  # (T*k,)
    order = np.argsort(device_of, kind="stable")
    counts = np.bincount(device_of + 1, minlength=air.num_devices + 1)  # unsent (-1) counted first
    cursor, counts = int(counts[0]), counts[1:]  # unsent assignments sort first
    batches, positions = [], []
    tokens_down = np.zeros(air.num_devices, dtype=np.int64)
    fused = 0
    # every device's distinct tokens at once: the stable sort keeps a device's assignments in (token, j) order, so
    # a token is new where it or the device changes (np.unique of each device's tokens, without its sort)
    sent_pos = order[cursor:]
    tokens = sent_pos // k
    sent_device = device_of[sent_pos]
    new = np.ones(sent_pos.shape[0], dtype=bool)
    np.not_equal(tokens[1:], tokens[:-1], out=new[1:])
    new[1:] |= sent_device[1:] != sent_device[:-1]
    distinct_at = np.cumsum(new) - 1  # (n,) the index of each assignment's token among all devices' distinct ones
    distinct_all, experts = tokens[new], index.ravel()[sent_pos]
    # every device's rows in one gather: a device's distinct tokens are a contiguous run of them (a view each)
    rows_all = hidden[on_device(hidden, distinct_all)] if sent_pos.shape[0] else hidden[:0]  # (sum n_d, H)
    a = 0
    for device in np.flatnonzero(counts).tolist():
        b = a + int(counts[device])
        first = int(distinct_at[a])
        sent = rows_all[first : int(distinct_at[b - 1]) + 1]
        token_index = torch.from_numpy(distinct_at[a:b] - first)
        if air.compression is not None:
            sent, token_index, saved = air.compression.down(sent, token_index)
            fused += saved
        tokens_down[device] = sent.shape[0]
        batches.append(DeviceBatch(device, layer, sent, token_index, torch.from_numpy(experts[a:b]),
                                   _seconds(air.dl_s, device), _seconds(air.ul_s, device)))
        positions.append(sent_pos[a:b])
        a = b
    return Dispatch(batches, positions, tokens_down, counts, fused)


def combine(answers: Sequence[Answer], num_tokens: int, k: int, weight: torch.Tensor,
            like: torch.Tensor) -> torch.Tensor:
    """(T, H): the answers' outputs weighted by `weight` (T, k) and summed over k, in `like`'s dtype; an
    assignment without an answer (dropped) adds zero.

    When every assignment has its answer in `like`'s dtype (the usual step), the (T*k, H) rows are the answers
    concatenated and put in position order by one gather; otherwise they are scattered into zeros. Either way the
    rows hold the same values."""
    out = _complete(answers, num_tokens * k, like)
    if out is None:
        out = like.new_zeros((num_tokens * k, like.shape[-1]))  # (T*k, H)
        for pos, output in answers:
            out[on_device(out, pos)] = output
    return (out.view(num_tokens, k, -1) * weight.unsqueeze(-1)).sum(dim=1).to(like.dtype)


def _complete(answers: Sequence[Answer], count: int, like: torch.Tensor) -> torch.Tensor | None:
    """(count, H) the answers in position order when they answer all `count` positions in `like`'s dtype, else
    None. Positions are distinct (an assignment is answered once), so `count` of them are a permutation."""
    if not answers or sum(pos.shape[0] for pos, _ in answers) != count:
        return None
    if any(output.dtype != like.dtype or output.device != like.device for _, output in answers):
        return None
    if len(answers) == 1:
        pos, stacked = answers[0]
    else:
        pos, stacked = np.concatenate([p for p, _ in answers]), torch.cat([o for _, o in answers])
    if (np.diff(pos) > 0).all():  # already in order
        return stacked
    return stacked[on_device(stacked, np.argsort(pos))]


# Read-only values the decode form reuses across steps (host-side cost is most of a decode step's overhead):
_ZERO_ROWS: dict[int, torch.Tensor] = {}  # (n,) zeros: every assignment of a one-token batch uses row 0
_POSITIONS: dict[tuple[int, ...], np.ndarray] = {}  # positions j of a batch's assignments, at most 2^k keys


def group_one_token(layer: int, hidden: torch.Tensor, index: np.ndarray, send: np.ndarray, routing: RoutingTable,
                    air: AirPlan) -> Dispatch:
    """`group` for one token (hidden (1, H)): the same batches, grouped with Python lists instead of sorting."""
    experts, table = index[0].tolist(), routing.primary_rows[layer]
    groups: dict[int, list[int]] = {}
    for j, (expert, sent_j) in enumerate(zip(experts, send[0].tolist(), strict=True)):
        if sent_j:
            groups.setdefault(table[expert], []).append(j)
    sent = hidden if air.compression is None else air.compression.wire(hidden)
    counts = np.zeros(air.num_devices, dtype=np.int64)
    tokens_down = np.zeros(air.num_devices, dtype=np.int64)
    batches, positions = [], []
    for device in sorted(groups):
        js = groups[device]
        rows = _ZERO_ROWS.get(len(js))
        if rows is None:
            rows = _ZERO_ROWS[len(js)] = torch.zeros(len(js), dtype=torch.long)
        pos = _POSITIONS.get(tuple(js))
        if pos is None:
            pos = _POSITIONS[tuple(js)] = np.array(js, dtype=np.int64)  # never written; not flagged read-only, as
            # torch.from_numpy warns on those
        batches.append(DeviceBatch(device, layer, sent, rows, torch.tensor([experts[j] for j in js]),
                                   _seconds(air.dl_s, device), _seconds(air.ul_s, device)))
        positions.append(pos)
        counts[device], tokens_down[device] = len(js), 1
    return Dispatch(batches, positions, tokens_down, counts)


def combine_one_token(answers: Sequence[Answer], num_tokens: int, k: int, weight: torch.Tensor,
                      like: torch.Tensor) -> torch.Tensor:
    """`combine` for one token: the outputs stacked in k order (no zeroed buffer, no scatter), then the same
    weighted sum over k. A step with a dropped assignment takes the reference."""
    answered = 0
    for pos, _ in answers:
        answered += pos.shape[0]
    if answered != k:
        return combine(answers, num_tokens, k, weight, like)
    if len(answers) == 1:  # one device answered all k: its rows are in k order already
        stacked = answers[0][1]
    elif len(answers) == k:  # one assignment per answer (the usual decode step): cat in k order, no gather kernel
        by_k = [answers[0][1]] * k
        for pos, output in answers:
            by_k[int(pos[0])] = output
        stacked = torch.cat(by_k)
    else:
        order = np.concatenate([pos for pos, _ in answers])
        stacked = torch.cat([output for _, output in answers])
        if (np.diff(order) < 0).any():
            stacked = stacked[on_device(stacked, np.argsort(order))]  # no blocking upload: the GPU is not waited for
    combined = (stacked * weight.T).sum(dim=0, keepdim=True)  # (1, H) = combine's sum over k, in k order
    return combined if combined.dtype == like.dtype else combined.to(like.dtype)


REFERENCE = Grouping("reference", group, combine, lambda num_tokens: True)
ONE_TOKEN = Grouping("one_token", group_one_token, combine_one_token, lambda num_tokens: num_tokens == 1)
GROUPINGS = {g.name: g for g in (REFERENCE, ONE_TOKEN)}


def on_device(like: torch.Tensor, rows: np.ndarray) -> torch.Tensor:
    """An index tensor for `like`'s device. A pageable host source is staged by CUDA before the call returns, so
    non_blocking skips the stream synchronization of a blocking copy without racing the numpy buffer."""
    index = torch.from_numpy(rows)
    return index if like.device.type == "cpu" else index.to(like.device, non_blocking=True)


def _seconds(per_device: np.ndarray | None, device: int) -> float:
    return 0.0 if per_device is None else float(per_device[device])
