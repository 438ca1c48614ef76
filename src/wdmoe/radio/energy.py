"""Radio stage 4, solver form: one device's round trip and energy as functions of its bandwidth share b.

Contract: for one active device with bits_dl / bits_ul to move, compute_s seconds of compute, SNRs per hertz and
powers, `share_cost(b, device)` returns (t(b), e(b), dt/db, de/db) with

    f(b)  = bits / (b log2(1 + snr / b))                      radio.rate.share_time_s, in seconds
    f'(b) = -f(b) (ln(1 + y) - y / (1 + y)) / (b ln(1 + y)),  y = snr / b
    t(b)  = f_dl(b) + compute_s + f_ul(b)                     radio.latency.device_times
    e(b)  = the three parts of radio.latency.energy_parts_j   (BS tx on the DL, device compute, device tx on the UL)

both strictly decreasing and convex in b while bits move (t and e are constant when none do). The energy-minimizing
policy (policy.energy_split) evaluates these many times per layer step on Python floats; tests/unit/radio/
test_energy.py holds t and e against radio.latency.layer_breakdown (t bit for bit) and the slopes against
finite differences.
Energy model: the [R] of radio.latency (papers.md §3.2 says WDMoE is latency-only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wdmoe.radio.exactmath import LOG2_E, log1p
from wdmoe.radio.latency import energy_parts_j


@dataclass(frozen=True)
class ShareDevice:
    """One active device of a layer step: bits each way, compute seconds, SNR per hertz each way (Hz), and the
    powers in W (the BS's transmit power for its downlink, the device's transmit and compute power)."""

    bits_dl: float
    bits_ul: float
    compute_s: float
    snr_dl_per_hz: float
    snr_ul_per_hz: float
    tx_power_w: float
    compute_power_w: float
    bs_tx_power_w: float


@dataclass(frozen=True)
class ShareCost:
    """t(b) seconds, e(b) joules and their slopes in s/Hz and J/Hz (module docstring)."""

    time_s: float
    energy_j: float
    time_slope: float
    energy_slope: float


def _transfer(bits: float, b: float, snr: float) -> tuple[float, float]:
    """(f(b), f'(b)) of one direction; 0 bits take 0 s, any bits over 0 Hz take inf."""
    if bits == 0.0:
        return 0.0, 0.0
    if b <= 0.0:
        return math.inf, -math.inf
    y = snr / b
    ln = log1p(y)
    f = bits / (b * ln * LOG2_E)  # share_time_s's operations, so t(b) has its bits (a budget met there holds here)
    return f, -f * (ln - y / (1.0 + y)) / (b * ln)


def share_cost(b: float, device: ShareDevice) -> ShareCost:
    """t(b), e(b) and their slopes for a share of b Hz (module docstring)."""
    dl, dl_slope = _transfer(device.bits_dl, b, device.snr_dl_per_hz)
    ul, ul_slope = _transfer(device.bits_ul, b, device.snr_ul_per_hz)
    bs, comp, tx = energy_parts_j(dl, device.compute_s, ul, device.compute_power_w, device.tx_power_w,
                                  device.bs_tx_power_w)
    bs_slope, _, tx_slope = energy_parts_j(dl_slope, 0.0, ul_slope, device.compute_power_w, device.tx_power_w,
                                           device.bs_tx_power_w)
    return ShareCost(dl + device.compute_s + ul, bs + comp + tx, dl_slope + ul_slope, bs_slope + tx_slope)
