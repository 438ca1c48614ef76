"""Radio stage 4, solver form: one device's round trip and energy as functions of its bandwidth share b.

Contract: for one active device with bits_dl / bits_ul to move, compute_s seconds of compute, SNRs per hertz and
powers, `share_cost(b, device)` returns (t(b), e(b), dt/db, de/db) with

    f(b)  = bits / (b log2(1 + snr / b))                      radio.rate.share_time_s, in seconds
    f'(b) = -f(b) (ln(1 + y) - y / (1 + y)) / (b ln(1 + y)),  y = snr / b
    t(b)  = f_dl(b) + compute_s + f_ul(b)                     radio.latency.device_times
    e(b)  = the three parts of radio.latency.energy_parts_j   (BS tx on the DL, device compute, device tx on the UL)

where the downlink follows the link's power model (radio.link.DownlinkPower): with the BS's power at a constant
spectral density over a DL pool of B Hz (dl_psd_pool_hz > 0, the default), f_dl(b) = bits / (b log2(1 + snr / B))
(radio.rate.dl_share_time_s), f_dl' = -f_dl / b, and the share radiates P b / B (radio.rate.
bs_tx_power_per_share_w), so the BS's energy P b / B * f_dl(b) does not depend on b; with the full power on every
downlink (dl_psd_pool_hz = 0.0) f_dl is the uplink's form and the BS radiates P. Both t and e are decreasing and
convex in b while bits move (t and e are constant when none do). Bits over a dead link (SNR 0) take inf at every
share (that direction flat, as radio.rate.scalar_time), and so does their energy: never a ZeroDivisionError.
The energy-minimizing policy (policy.energy_split) evaluates these many times per layer step on Python floats;
tests/unit/radio/test_energy.py holds t and e against radio.latency.layer_breakdown (t bit for bit) and the
slopes against finite differences.
Energy model: the [R] of radio.latency (papers.md §3.2 says WDMoE is latency-only).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from wdmoe.radio.exactmath import LOG2_E, log1p
from wdmoe.radio.latency import energy_parts_j


@dataclass(frozen=True)
class ShareDevice:
    """One active device of a layer step: bits each way, compute seconds, SNR per hertz each way (Hz), the powers
    in W (the BS's whole transmit power, the device's transmit and compute power), and the link's DL pool
    (`LinkState.dl_psd_pool_hz`: B > 0 for the BS's power at a constant spectral density over B Hz, 0.0 for the
    full power on every downlink)."""

    bits_dl: float
    bits_ul: float
    compute_s: float
    snr_dl_per_hz: float
    snr_ul_per_hz: float
    tx_power_w: float
    compute_power_w: float
    bs_tx_power_w: float
    dl_psd_pool_hz: float = 0.0


@dataclass(frozen=True)
class ShareCost:
    """t(b) seconds, e(b) joules and their slopes in s/Hz and J/Hz (module docstring)."""

    time_s: float
    energy_j: float
    time_slope: float
    energy_slope: float


def _transfer(bits: float, b: float, snr: float) -> tuple[float, float]:
    """(f(b), f'(b)) of one direction; 0 bits take 0 s, any bits over 0 Hz take inf, and so do any bits over a dead
    link (SNR 0), at every share: flat, as radio.rate.scalar_time's infinite inverse slope."""
    if bits == 0.0:
        return 0.0, 0.0
    if snr <= 0.0:
        return math.inf, 0.0
    if b <= 0.0:
        return math.inf, -math.inf
    y = snr / b
    ln = log1p(y)
    f = bits / (b * ln * LOG2_E)  # share_time_s's operations, so t(b) has its bits (a budget met there holds here)
    return f, -f * (ln - y / (1.0 + y)) / (b * ln)


def _psd_transfer(bits: float, b: float, snr: float, pool: float) -> tuple[float, float]:
    """(f(b), f'(b)) of a downlink at a constant spectral density over `pool` Hz: linear rate in b (a dead link:
    inf and flat, as `_transfer`)."""
    if bits == 0.0:
        return 0.0, 0.0
    if snr <= 0.0:
        return math.inf, 0.0
    if b <= 0.0:
        return math.inf, -math.inf
    f = bits / (b * log1p(snr / pool) * LOG2_E)  # dl_rate_bps's operations
    return f, -f / b


def share_cost(b: float, device: ShareDevice) -> ShareCost:
    """t(b), e(b) and their slopes for a share of b Hz (module docstring)."""
    pool = device.dl_psd_pool_hz
    if pool > 0.0:
        dl, dl_slope = _psd_transfer(device.bits_dl, b, device.snr_dl_per_hz, pool)
        bs_power = device.bs_tx_power_w * (b / pool)  # radio.rate.bs_tx_power_per_share_w
    else:
        dl, dl_slope = _transfer(device.bits_dl, b, device.snr_dl_per_hz)
        bs_power = device.bs_tx_power_w
    ul, ul_slope = _transfer(device.bits_ul, b, device.snr_ul_per_hz)
    bs, comp, tx = energy_parts_j(dl, device.compute_s, ul, device.compute_power_w, device.tx_power_w, bs_power)
    bs_slope, _, tx_slope = energy_parts_j(dl_slope, 0.0, ul_slope, device.compute_power_w, device.tx_power_w,
                                           bs_power)
    if pool > 0.0:  # p(b) f_dl(b) = P bits / (B log2(1 + snr / B)): the product rule's two terms cancel exactly
        bs_slope = 0.0
        if math.isinf(dl):  # bits down over no share (0 W x inf s) or a dead link: a transfer that never ends
            bs = math.inf
    return ShareCost(dl + device.compute_s + ul, bs + comp + tx, dl_slope + ul_slope, bs_slope + tx_slope)
