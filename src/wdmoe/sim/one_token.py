"""radio.latency's layer model for n one-token layer steps at once (the simulator's decode path).

Contract: `one_token_latency(steps, decision, ...)` gives, per step, what `wdmoe.radio.latency.layer_breakdown`
gives for that step's one-token LayerState and decision: layer seconds, bits each way, energy. It is built from
the same pieces (`radio.rate.pool_shares` / `share_time_s`, the roofline of `OneTokenSteps.roof_s`) on (n, k)
arrays of slots, in the same order of operations; tests/unit/sim compares it with `layer_breakdown` on random steps.
A one-token step never waits (its one token finishes with the slowest device), so waiting time is omitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wdmoe.policy.batched import BatchDecision, OneTokenSteps, slot_groups
from wdmoe.radio.rate import PoolMode, pool_shares, share_time_s


@dataclass(frozen=True)
class OneTokenLatency:
    """Per step (n,): layer seconds, bits down / up, and energy in joules (device tx + device compute + BS tx)."""

    layer_s: np.ndarray
    bits_dl: np.ndarray
    bits_ul: np.ndarray
    energy_j: np.ndarray


def one_token_latency(steps: OneTokenSteps, decision: BatchDecision, tx_power_w: np.ndarray,
                      compute_power_w: np.ndarray, bs_tx_power_w: float,
                      pool: PoolMode = PoolMode.SHARED) -> OneTokenLatency:
    """The latency and energy of n one-token layer steps; tx_power_w, compute_power_w: (D,) or (n, D) watts.

    Each device with a kept slot is counted once, at its first kept slot (idle devices add exact zeros in
    radio.latency, so they are skipped; with more than two active devices the energy sums may differ from it in
    the last bit by summation order)."""
    groups = slot_groups(steps, decision.keep)
    active = groups.first  # (n, k)
    bits = steps.bits_per_token[:, None]
    bits_dl = np.where(active, bits, 0.0)  # one distinct token to each active device
    bits_ul = np.where(active, groups.pairs * bits, 0.0)
    shares = pool_shares(pool, decision.slot_share_hz)
    device = steps.slot_device
    dl_s = share_time_s(bits_dl, shares.dl_hz, steps.snr_dl_per_hz)
    ul_s = share_time_s(bits_ul, shares.ul_hz, steps.snr_ul_per_hz)
    compute_s = np.where(active, groups.compute_s, 0.0)
    total = np.where(active, dl_s + compute_s + ul_s, 0.0)
    energy = ((_per_slot(tx_power_w, device) * ul_s).sum(axis=1)
              + (_per_slot(compute_power_w, device) * compute_s).sum(axis=1) + (bs_tx_power_w * dl_s).sum(axis=1))
    return OneTokenLatency(steps.bs_time_s + total.max(axis=1, initial=0.0), bits_dl.sum(axis=1),
                           bits_ul.sum(axis=1), energy)


def _per_slot(per_device: np.ndarray, device: np.ndarray) -> np.ndarray:
    """(n, k) the value of each slot's device, from (D,) or (n, D)."""
    per_device = np.asarray(per_device)
    return per_device[device] if per_device.ndim == 1 else np.take_along_axis(per_device, device, axis=1)
