"""Radio stage 2: the Shannon rate of a bandwidth share, and the time to move bits over it (pure numpy).

Contract: given a `LinkState` (SNR per hertz per device) and bandwidth shares in Hz, return rates in bit/s and
transfer times in seconds, vectorized over devices. A share of 0 Hz has rate 0; moving 0 bits takes 0 s even
over 0 Hz, moving more than 0 bits over 0 Hz takes infinitely long.

Formulas. Uplink (papers.md §2.2 [R]): r(b) = b * log2(1 + snr_per_hz / b), the device's transmit power spread
over its share, so the rate rises with b, is concave in b, and saturates at snr_per_hz * log2(e) (power-limited
regime). Downlink (`wdmoe.radio.link.DownlinkPower`): the BS's power is shared by the concurrent downlinks at a
constant spectral density over its pool of B Hz (`LinkState.dl_psd_pool_hz`), r(b) = b * log2(1 + snr_per_hz / B),
linear in b; or, the papers' model, the full power on every downlink, the uplink's formula (pool 0.0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import numpy as np

from wdmoe.radio.exactmath import LN2, log1p, log1p_array
from wdmoe.radio.link import LinkState

_LOG2_E = 1.0 / LN2
_NATS_MEMO: dict[tuple[bytes, tuple[int, ...], float], np.ndarray] = {}
_NATS_MEMO_SIZE = 4096  # links; cleared when full (a run's steps draw a new link each, a step asks it ~1000 times)


class PoolMode(Enum):
    """How the bandwidth budget is organised.

    SHARED: one pool of B Hz; device k's share b_k carries its downlink, then its uplink (TDD-like), so one
        array of shares with sum(b) <= B describes both directions.
    SEPARATE: a DL pool and a UL pool (FDD-like); the DL shares and the UL shares each sum to at most their own
        pool. Without explicit UL shares, the UL pool is split like the DL pool.
    """

    SHARED = "shared"
    SEPARATE = "separate"


@dataclass(frozen=True)
class Shares:
    """The DL and UL bandwidth of every device, in Hz, shape (D,) each."""

    dl_hz: np.ndarray
    ul_hz: np.ndarray


def pool_shares(mode: PoolMode, bandwidth_hz: np.ndarray, bandwidth_ul_hz: np.ndarray | None = None) -> Shares:
    """The DL and UL shares a decision's bandwidth means under a pool mode.

    SHARED: both directions use `bandwidth_hz`; passing `bandwidth_ul_hz` is an error (one pool, one split).
    SEPARATE: DL uses `bandwidth_hz`, UL uses `bandwidth_ul_hz` when given, else the same split.
    """
    dl = np.asarray(bandwidth_hz, dtype=float)
    if mode is PoolMode.SHARED:
        if bandwidth_ul_hz is not None:
            raise ValueError("bandwidth_ul_hz was given with PoolMode.SHARED; one shared pool has one split of "
                             "the band, use PoolMode.SEPARATE for separate DL/UL pools")
        return Shares(dl, dl)
    ul = dl if bandwidth_ul_hz is None else np.asarray(bandwidth_ul_hz, dtype=float)
    if ul.shape != dl.shape:
        raise ValueError(f"bandwidth_ul_hz has shape {ul.shape}, bandwidth_hz has shape {dl.shape}; give one "
                         "share per device in each")
    return Shares(dl, ul)


def shannon_rate_bps(bandwidth_hz: np.ndarray | float, snr_per_hz: np.ndarray | float) -> np.ndarray:
    """Shannon rate r = b * log2(1 + snr_per_hz / b) in bit/s; 0 where b <= 0. Broadcasts its arguments."""
    b = np.asarray(bandwidth_hz, dtype=float)
    s = np.asarray(snr_per_hz, dtype=float)
    positive = b > 0.0
    safe_b = np.where(positive, b, 1.0)
    return np.where(positive, safe_b * log1p_array(s / safe_b) * _LOG2_E, 0.0)


def dl_rate_bps(bandwidth_hz: np.ndarray | float, snr_per_hz: np.ndarray | float,
                dl_psd_pool_hz: float) -> np.ndarray:
    """Downlink rate in bit/s (`LinkState.dl_psd_pool_hz`): b * log2(1 + snr_per_hz / B) with the BS's power at a
    constant spectral density over a pool of B = dl_psd_pool_hz > 0 Hz, `shannon_rate_bps` (the full power on the
    share) for 0.0; 0 where b <= 0. Broadcasts its arguments."""
    if dl_psd_pool_hz > 0.0:
        b = np.asarray(bandwidth_hz, dtype=float)
        s = np.asarray(snr_per_hz, dtype=float)
        return np.where(b > 0.0, b * psd_dl_nats(s, dl_psd_pool_hz) * _LOG2_E, 0.0)
    return shannon_rate_bps(bandwidth_hz, snr_per_hz)


def rate_dl_bps(link: LinkState, bandwidth_hz: np.ndarray) -> np.ndarray:
    """Downlink (BS -> device) rate of each device's share under the link's downlink power model, (D,) bit/s."""
    return dl_rate_bps(bandwidth_hz, link.snr_dl_per_hz, link.dl_psd_pool_hz)


def rate_ul_bps(link: LinkState, bandwidth_hz: np.ndarray) -> np.ndarray:
    """Uplink (device -> BS) rate of each device's share, (D,) bit/s."""
    return shannon_rate_bps(bandwidth_hz, link.snr_ul_per_hz)


def transfer_time_s(bits: np.ndarray | float, rate_bps: np.ndarray | float) -> np.ndarray:
    """Seconds to move `bits` at `rate_bps`: 0 for 0 bits, inf for bits > 0 at rate 0."""
    n = np.asarray(bits, dtype=float)
    r = np.asarray(rate_bps, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = n / r
    return np.where(n > 0.0, np.where(r > 0.0, t, np.inf), 0.0)


def share_time_s(bits: np.ndarray | float, bandwidth_hz: np.ndarray | float,
                 snr_per_hz: np.ndarray | float) -> np.ndarray:
    """Seconds to move `bits` over a share of `bandwidth_hz` with the given SNR per hertz."""
    return transfer_time_s(bits, shannon_rate_bps(bandwidth_hz, snr_per_hz))


def dl_share_time_s(bits: np.ndarray | float, bandwidth_hz: np.ndarray | float, snr_per_hz: np.ndarray | float,
                    dl_psd_pool_hz: float) -> np.ndarray:
    """Seconds to move `bits` down over a share of `bandwidth_hz` (`dl_rate_bps`'s power model)."""
    return transfer_time_s(bits, dl_rate_bps(bandwidth_hz, snr_per_hz, dl_psd_pool_hz))


def bs_tx_power_per_share_w(bs_tx_power_w: float, dl_hz: np.ndarray | float, dl_psd_pool_hz: float) -> np.ndarray:
    """The BS power a downlink of `dl_hz` Hz radiates: P b / B at a constant spectral density over B =
    dl_psd_pool_hz > 0, the full P on every share for 0.0 (the energy model charges the power each share gets)."""
    if dl_psd_pool_hz > 0.0:
        return bs_tx_power_w * (np.asarray(dl_hz, dtype=float) / dl_psd_pool_hz)
    return np.full(np.shape(dl_hz), bs_tx_power_w)


def snr_per_hz_for_rate(rate_bps: float, bandwidth_hz: float) -> float:
    """The inverse of `shannon_rate_bps` in the SNR: s with shannon_rate_bps(B, s) = rate, s = B (2^(rate/B) - 1),
    in Hz (a link given by its rate over the whole band)."""
    return float(bandwidth_hz * np.expm1(rate_bps / bandwidth_hz * np.log(2.0)))


def max_rate_bps(snr_per_hz: np.ndarray | float) -> np.ndarray:
    """The rate limit of an infinitely wide share, snr_per_hz * log2(e): no share moves bits faster."""
    return np.asarray(snr_per_hz, dtype=float) * _LOG2_E


# Solver forms. The bandwidth solvers (wdmoe.policy.bandwidth, split_arrays, joint) evaluate a device's round trip
#     t(b) = need_dl / (b ln(1 + s_dl / p)) + need_ul / (b ln(1 + s_ul / b)) + base,   need = bits * ln 2,
# (p = the DL pool dl_pool when the BS's power has a constant spectral density over it, p = b for the full power
# per downlink, dl_pool = 0.0) and its slope |dt/db| many times per layer step. Each transfer term is
# `dl_share_time_s` / `share_time_s` of the same bits (log2 written as ln / ln 2). Below: that one formula on Python
# floats, on arrays, and in place for a solver's inner loop; the scalar and array forms give the same bits
# (radio.exactmath's ln(1 + y)). tests/unit/radio/test_rate.py holds each against dl_share_time_s / share_time_s.


def time_and_inverse_slope(b: np.ndarray, need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray,
                           s_dl: np.ndarray, s_ul: np.ndarray, dl_pool: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """t(b) and w = 1/|dt/db| on arrays; need_* are bits * ln 2, so a transfer takes need / (b ln(1 + s/b)), or
    down, with the BS's power at a constant spectral density over dl_pool > 0 Hz, need / (b ln(1 + s/dl_pool))."""
    y_ul = s_ul / b
    l_ul = log1p_array(y_ul)  # radio.exactmath: the same bits as scalar_time's log1p, on any CPU
    t_ul = need_ul / (b * l_ul)
    if dl_pool > 0.0:
        t_dl = need_dl / (b * psd_dl_nats(s_dl, dl_pool))
        slope = (t_dl + t_ul * (l_ul - y_ul / (1.0 + y_ul)) / l_ul) / b
        return t_dl + t_ul + base, 1.0 / slope
    y_dl = s_dl / b
    l_dl = log1p_array(y_dl)
    t_dl = need_dl / (b * l_dl)
    slope = (t_dl * (l_dl - y_dl / (1.0 + y_dl)) / l_dl + t_ul * (l_ul - y_ul / (1.0 + y_ul)) / l_ul) / b
    return t_dl + t_ul + base, 1.0 / slope


def time_only(b: np.ndarray, need_dl: np.ndarray, need_ul: np.ndarray, base: np.ndarray, s_dl: np.ndarray,
              s_ul: np.ndarray, dl_pool: float = 0.0) -> np.ndarray:
    """`time_and_inverse_slope`'s t alone, by the same operations (the same bits), for searches that need no slope."""
    t_ul = need_ul / (b * log1p_array(s_ul / b))
    if dl_pool > 0.0:
        return need_dl / (b * psd_dl_nats(s_dl, dl_pool)) + t_ul + base
    return need_dl / (b * log1p_array(s_dl / b)) + t_ul + base


def scalar_time(b: float, need_dl: float, need_ul: float, base: float, s_dl: float,
                s_ul: float, dl_pool: float = 0.0) -> tuple[float, float]:
    """`time_and_inverse_slope` for one device with Python floats (the decode fast path); inf where the slope is
    not positive. A degenerate link (no band, or an SNR of 0 where bits move) takes infinitely long, as
    `share_time_s` says, instead of dividing by zero (`_degenerate_time`)."""
    try:
        return _scalar_time(b, need_dl, need_ul, base, s_dl, s_ul, dl_pool)
    except ZeroDivisionError:
        return _degenerate_time(b, need_dl, need_ul, base, s_dl, s_ul, dl_pool)


def _degenerate_time(b: float, need_dl: float, need_ul: float, base: float, s_dl: float, s_ul: float,
                     dl_pool: float) -> tuple[float, float]:
    """`scalar_time` where a division by zero stopped it: a direction with no bits takes 0 s, one with bits over
    no band or at an SNR of 0 makes the time inf (inverse slope inf: flat); else the same formula."""
    t, slope = base, 0.0
    for need, snr, pool in ((need_dl, s_dl, dl_pool), (need_ul, s_ul, 0.0)):
        if need == 0.0:
            continue
        if b <= 0.0 or snr <= 0.0:
            return math.inf, math.inf
        y = snr / (pool if pool > 0.0 else b)
        nats = log1p(y)
        part = need / (b * nats)
        t += part
        slope += part if pool > 0.0 else part * (nats - y / (1.0 + y)) / nats
    slope /= b
    return t, (1.0 / slope if slope > 0.0 else math.inf)


def _scalar_time(b: float, need_dl: float, need_ul: float, base: float, s_dl: float,
                 s_ul: float, dl_pool: float) -> tuple[float, float]:
    y_ul = s_ul / b
    l_ul = log1p(y_ul)
    t_ul = need_ul / (b * l_ul)
    if dl_pool > 0.0:
        t_dl = need_dl / (b * log1p(s_dl / dl_pool))
        slope = (t_dl + t_ul * (l_ul - y_ul / (1.0 + y_ul)) / l_ul) / b
    else:
        y_dl = s_dl / b
        l_dl = log1p(y_dl)
        t_dl = need_dl / (b * l_dl)
        slope = (t_dl * (l_dl - y_dl / (1.0 + y_dl)) / l_dl + t_ul * (l_ul - y_ul / (1.0 + y_ul)) / l_ul) / b
    return t_dl + t_ul + base, (1.0 / slope if slope > 0.0 else math.inf)


def psd_dl_load(need_dl: np.ndarray, s_dl: np.ndarray, dl_pool: float) -> np.ndarray:
    """need_dl / ln(1 + s_dl / dl_pool), Hz s: with the BS's power at a constant spectral density over dl_pool Hz
    a downlink of need_dl (bits * ln 2) over b Hz takes this / b seconds (its slope: this / b^2)."""
    return need_dl / psd_dl_nats(s_dl, dl_pool)


def psd_dl_nats(s_dl: np.ndarray, dl_pool: float) -> np.ndarray:
    """ln(1 + s_dl / dl_pool) (`log1p_array`'s bits; read-only): the downlink's nats per hertz at a constant
    spectral density. It depends on the link alone, and the policies' solvers ask it again for every candidate of
    a layer step (a large block's search evaluates ~100 of them over the same link), so it is memoised by value."""
    s_dl = np.asarray(s_dl, dtype=np.float64)
    key = (s_dl.tobytes(), s_dl.shape, float(dl_pool))
    nats = _NATS_MEMO.get(key)
    if nats is None:
        if len(_NATS_MEMO) >= _NATS_MEMO_SIZE:
            _NATS_MEMO.clear()
        nats = log1p_array(s_dl / dl_pool)
        nats.flags.writeable = False
        _NATS_MEMO[key] = nats
    return nats


def transfer_and_slope_into(b: np.ndarray, need: np.ndarray, snr: np.ndarray, y: np.ndarray, log_term: np.ndarray,
                            transfer: np.ndarray, work: np.ndarray) -> None:
    """The transfer terms in place on (2, n) buffers (DL row, UL row), for a solver's inner loop: `transfer` =
    need / (b ln(1 + y)) seconds and `work` = b |d transfer / db| = transfer (1 - y / ((1 + y) ln(1 + y))), with
    y = snr / b (`y`, `log_term` are scratch)."""
    np.divide(snr, b, out=y)
    log_term[...] = log1p_array(y)
    np.divide(need, np.multiply(log_term, b, out=work), out=transfer)
    np.add(y, 1.0, out=work)
    np.multiply(work, log_term, out=work)
    np.divide(y, work, out=work)
    np.multiply(work, transfer, out=work)
    np.subtract(transfer, work, out=work)
