"""radio.latency's layer model for n one-token layer steps at once (the simulator's decode path).

Contract: `one_token_latency(load, ...)` gives, per step, what `wdmoe.radio.latency.layer_breakdown` gives for
that step's one-token load and band split: layer seconds, bits each way, energy. It is built from the same pieces
(`radio.rate.pool_shares` / `share_time_s`, the roofline of `OneTokenLoad.roof_s`, `latency.energy_parts_j`) on
the k slots of each step, in the same order of operations; tests/unit/sim compares it with `layer_breakdown` on
random steps. `OneTokenLoad` is what the simulator's batched decode hands over (`wdmoe.policy.steps`' steps and
decision, as plain arrays).
A one-token step never waits (its one token finishes with the slowest device), so waiting time is omitted.

Speed: the work runs slot column by slot column on contiguous (n,) arrays. numpy reduces along a short last axis
(k = 2) about 100 times slower per element than it adds two columns, so the sums and the max over the slots are
column operations in numpy's own order for k < 8 (`_row_sum`: left to right from +0.0, which is what
`ndarray.sum(axis=1)` does for fewer than 8 entries; from 8 on numpy sums pairwise, and `_row_sum` calls it).
Transfer times are `share_time_s` itself, on the slots that move bits (`_share_times`). tests/unit/sim/
test_one_token.py checks the result bit for bit against the (n, k) array form this replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.radio.latency import energy_parts_j
from wdmoe.radio.rate import PoolMode, bs_tx_power_per_share_w, dl_share_time_s, pool_shares, share_time_s

_COMPACT = 0.75  # compute a column's transfer times on its active slots alone below this active fraction
_SEQUENTIAL_SUM = 8  # ndarray.sum over fewer entries than this adds them left to right from +0.0


@dataclass(frozen=True)
class OneTokenLoad:
    """n one-token layer steps with k routed slots each, after a decision; (n, k) arrays unless noted.

    Attributes:
        slot_device: int, the device serving each slot. keep: bool, the slots that run.
        roof_s: seconds of each slot's expert on its device for one token (radio.compute roofline).
        share_hz: the band of each kept slot's device, Hz. snr_dl_per_hz / snr_ul_per_hz: each slot's link, Hz.
        bits_per_token / bs_time_s: (n,) payload bits and BS seconds of each step.
        dl_psd_pool_hz: `LinkState.dl_psd_pool_hz` of every step's links (one scenario): > 0, the BS's power at a
            constant spectral density over that pool; 0.0, its full power on every downlink.
    """

    slot_device: np.ndarray
    keep: np.ndarray
    roof_s: np.ndarray
    share_hz: np.ndarray
    snr_dl_per_hz: np.ndarray
    snr_ul_per_hz: np.ndarray
    bits_per_token: np.ndarray
    bs_time_s: np.ndarray
    dl_psd_pool_hz: float = 0.0


@dataclass(frozen=True)
class OneTokenLatency:
    """Per step (n,): layer seconds, bits down / up, and energy in joules (device tx + device compute + BS tx)."""

    layer_s: np.ndarray
    bits_dl: np.ndarray
    bits_ul: np.ndarray
    energy_j: np.ndarray


def one_token_latency(load: OneTokenLoad, tx_power_w: np.ndarray, compute_power_w: np.ndarray,
                      bs_tx_power_w: float, pool: PoolMode = PoolMode.SHARED) -> OneTokenLatency:
    """The latency and energy of n one-token layer steps; tx_power_w, compute_power_w: (D,) or (n, D) watts.

    Each device with a kept slot is counted once, at its first kept slot (idle devices add exact zeros in
    radio.latency, so they are skipped; with more than two active devices the energy sums may differ from it in
    the last bit by summation order)."""
    device, keep, roof = _columns(load.slot_device), _columns(load.keep), _columns(load.roof_s)
    active, pairs, compute = _slot_groups(device, keep, roof)
    shares = pool_shares(pool, load.share_hz)
    dl_hz = _columns(shares.dl_hz)
    ul_hz = dl_hz if shares.ul_hz is shares.dl_hz else _columns(shares.ul_hz)
    snr_dl, snr_ul = _columns(load.snr_dl_per_hz), _columns(load.snr_ul_per_hz)
    bits, pool_hz = load.bits_per_token, load.dl_psd_pool_hz
    slowest = np.zeros(bits.shape[0])  # max(axis=1, initial=0.0)
    bits_dl, bits_ul, tx_j, compute_j, bs_j = [], [], [], [], []
    for j, first in enumerate(active):
        dl_bits = np.where(first, bits, 0.0)  # one distinct token to each active device
        ul_bits = np.where(first, pairs[j] * bits, 0.0)
        dl_s, ul_s = _share_times(first, dl_bits, ul_bits, dl_hz[j], ul_hz[j], snr_dl[j], snr_ul[j], pool_hz)
        compute_s = np.where(first, compute[j], 0.0)
        slowest = np.maximum(slowest, np.where(first, dl_s + compute_s + ul_s, 0.0))
        bits_dl.append(dl_bits)
        bits_ul.append(ul_bits)
        bs, comp, tx = energy_parts_j(dl_s, compute_s, ul_s, _per_slot(compute_power_w, device[j]),
                                      _per_slot(tx_power_w, device[j]),
                                      bs_tx_power_per_share_w(bs_tx_power_w, dl_hz[j], pool_hz))
        tx_j.append(tx)
        compute_j.append(comp)
        bs_j.append(bs)
    energy = _row_sum(tx_j) + _row_sum(compute_j) + _row_sum(bs_j)
    return OneTokenLatency(load.bs_time_s + slowest, _row_sum(bits_dl), _row_sum(bits_ul), energy)


def _columns(values: np.ndarray) -> list[np.ndarray]:
    """The k columns of an (n, k) array as contiguous (n,) arrays."""
    return [np.ascontiguousarray(values[:, j]) for j in range(values.shape[1])]


def _slot_groups(device: list[np.ndarray], keep: list[np.ndarray],
                 roof: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """`policy.steps.slot_groups` by column: per slot, whether it is the first kept slot on its device, the
    number of kept slots on its device, and their rooflines summed in slot order (the same operations)."""
    k = len(device)
    first = [kept.copy() for kept in keep]
    pairs, compute = [], []
    for j in range(k):
        count = np.zeros(device[j].shape[0])
        total = np.zeros(device[j].shape[0])
        for i in range(k):
            same = keep[i] & (device[i] == device[j])
            if i < j:
                first[j] &= ~same
            count += same
            total = total + np.where(same, roof[i], 0.0)
        pairs.append(count)
        compute.append(total)
    return first, pairs, compute


def _share_times(first: np.ndarray, dl_bits: np.ndarray, ul_bits: np.ndarray, dl_hz: np.ndarray, ul_hz: np.ndarray,
                 snr_dl: np.ndarray, snr_ul: np.ndarray, pool_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """`dl_share_time_s` down and `share_time_s` up for one slot column. A slot that is not its device's first kept
    one moves 0 bits, which either gives exactly 0 s whatever the share and SNR, so where few slots are first (dropped
    slots, shared devices) only the first ones are computed (the rate's log1p costs far more than the gathers)."""
    live = np.flatnonzero(first)
    n = first.shape[0]
    if live.shape[0] > _COMPACT * n:
        return dl_share_time_s(dl_bits, dl_hz, snr_dl, pool_hz), share_time_s(ul_bits, ul_hz, snr_ul)
    dl_s, ul_s = np.zeros(n), np.zeros(n)
    dl_s[live] = dl_share_time_s(dl_bits.take(live), dl_hz.take(live), snr_dl.take(live), pool_hz)
    ul_s[live] = share_time_s(ul_bits.take(live), ul_hz.take(live), snr_ul.take(live))
    return dl_s, ul_s


def _row_sum(cols: list[np.ndarray]) -> np.ndarray:
    """np.stack(cols, axis=1).sum(axis=1), bit for bit (module docstring)."""
    if len(cols) >= _SEQUENTIAL_SUM:
        return np.stack(cols, axis=1).sum(axis=1)
    total = cols[0] + 0.0  # numpy starts from +0.0: -0.0 + 0.0 is +0.0
    for col in cols[1:]:
        total = total + col
    return total


def _per_slot(per_device: np.ndarray, device: np.ndarray) -> np.ndarray:
    """(n,) the value of each slot's device, from (D,) or (n, D); device: one (n,) slot column."""
    per_device = np.asarray(per_device)
    if per_device.ndim == 1:
        return per_device.take(device)
    return per_device.ravel().take(np.arange(device.shape[0]) * per_device.shape[1] + device)
