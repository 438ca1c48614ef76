"""The bandwidth solvers' approximate transfer time (their presolve): radio.rate's solver form with ln(1 + y)
replaced by a cheap series (pure numpy).

Contract: `approx_time` (Python floats) and `approx_time_array` (arrays, the same operations, the same bits) give
t(b) = need_dl / (b ln(1 + s_dl/b)) + need_ul / (b ln(1 + s_ul/b)) + base and |dt/db| as `radio.rate.scalar_time`
does, with `approx_log` (~5e-13 absolute) for ln: no log1p call, a fraction of an exact evaluation's cost on arrays.
The min-max pair split (`wdmoe.policy.bandwidth.pair_split`, `wdmoe.policy.split_arrays`) uses them only to find a
starting point; its exact steps use radio.rate's forms.
"""

from __future__ import annotations

import math

import numpy as np

from wdmoe.radio.exactmath import LN2

# ln x = (e - 1/2) ln 2 + ln v with x = m 2^e (frexp: m in [1/2, 1)) and v = m sqrt 2 in [sqrt(1/2), sqrt(2));
# ln v = 2 atanh z, z = (v - 1) / (v + 1), |z| <= 0.1716, by the series to z^13 (1, 1/3, ..., 1/13): the rest is
# < 5e-13. Only frexp and +, -, *, / (no branch), so Python floats and numpy arrays give the same bits.
LOG_SERIES = tuple(1.0 / (2 * j + 1) for j in range(7))
SQRT_TWO = math.sqrt(2.0)
LOG_LN2 = LN2  # approx_log's ln 2
_C0, _C1, _C2, _C3, _C4, _C5, _C6 = LOG_SERIES
_frexp = math.frexp


def approx_log(x: float) -> float:
    """ln x (x > 0, finite) to ~5e-13 absolute, by frexp and the atanh series (`LOG_SERIES`): cheap on arrays
    (`approx_log_array` does the same operations), unlike log1p, and used only to find a starting point."""
    m, e = _frexp(x)
    v = m * SQRT_TWO
    z = (v - 1.0) / (v + 1.0)
    z2 = z * z
    return (e - 0.5) * LOG_LN2 + 2.0 * z * ((((((_C6 * z2 + _C5) * z2 + _C4) * z2 + _C3) * z2 + _C2) * z2 + _C1) * z2
                                            + _C0)


def approx_time(b: float, need_dl: float, need_ul: float, base: float, s_dl: float,
                s_ul: float, dl_pool: float = 0.0) -> tuple[float, float]:
    """`radio.rate.scalar_time` with `approx_log` for log1p: t(b) and the slope |dt/db| (not its inverse)."""
    y_ul = s_ul / b
    o_ul = 1.0 + y_ul
    l_ul = approx_log(o_ul)
    t_ul = need_ul / (b * l_ul)
    if dl_pool > 0.0:  # the downlink at a constant spectral density: need_dl / (b ln(1 + s_dl / dl_pool))
        t_dl = need_dl / (b * approx_log(1.0 + s_dl / dl_pool))
        return t_dl + t_ul + base, (t_dl + t_ul * (l_ul - y_ul / o_ul) / l_ul) / b
    y_dl = s_dl / b
    o_dl = 1.0 + y_dl
    l_dl = approx_log(o_dl)
    t_dl = need_dl / (b * l_dl)
    slope = (t_dl * (l_dl - y_dl / o_dl) / l_dl + t_ul * (l_ul - y_ul / o_ul) / l_ul) / b
    return t_dl + t_ul + base, slope


def approx_log_array(x: np.ndarray) -> np.ndarray:
    """`approx_log` on an array, operation for operation (in place on a few buffers: arrays this
    size cost more in allocation than in arithmetic)."""
    m, e = np.frexp(x)
    v = np.multiply(m, SQRT_TWO, out=m)
    z = np.subtract(v, 1.0)
    np.add(v, 1.0, out=v)
    np.divide(z, v, out=z)
    z2 = np.multiply(z, z, out=v)
    c = LOG_SERIES
    s = np.multiply(z2, c[6])
    for coefficient in (c[5], c[4], c[3], c[2], c[1]):
        s += coefficient
        s *= z2
    s += c[0]
    np.multiply(z, 2.0, out=z)
    np.multiply(z, s, out=z)
    out = np.subtract(e, 0.5, out=s)  # int32 - 0.5 in float64, as (e - 0.5)
    out *= LOG_LN2
    out += z
    return out


def approx_time_array(b: np.ndarray, need: np.ndarray, base: np.ndarray, snr: np.ndarray,
                      dl_pool: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """`approx_time` on arrays: b (2, m) shares, need and snr (2, 2, m) with the DL row first, base
    (2, m); both directions go through each operation at once (elementwise, the reference's operations)."""
    if dl_pool > 0.0:
        return _approx_time_psd_array(b, need, base, snr, dl_pool)
    y = np.divide(snr, b)
    o = np.add(y, 1.0)
    log_term = approx_log_array(o)
    transfer = np.multiply(log_term, b)
    np.divide(need, transfer, out=transfer)
    part = np.divide(y, o, out=y)  # transfer * (log_term - y / o) / log_term
    np.subtract(log_term, part, out=part)
    part *= transfer
    part /= log_term
    t = np.add(transfer[0], transfer[1])
    t += base
    slope = np.add(part[0], part[1])
    slope /= b
    return t, slope


def _approx_time_psd_array(b: np.ndarray, need: np.ndarray, base: np.ndarray, snr: np.ndarray,
                           dl_pool: float) -> tuple[np.ndarray, np.ndarray]:
    """`approx_time_array` with the downlink at a constant spectral density over dl_pool Hz (`approx_time`'s
    operations, elementwise)."""
    y = np.divide(snr[1], b)
    o = np.add(y, 1.0)
    l_ul = approx_log_array(o)
    t_ul = np.divide(need[1], np.multiply(b, l_ul))
    part = np.subtract(l_ul, np.divide(y, o))
    part = np.divide(np.multiply(t_ul, part), l_ul)
    t_dl = np.divide(need[0], np.multiply(b, approx_log_array(np.add(np.divide(snr[0], dl_pool), 1.0))))
    t = np.add(t_dl, t_ul)
    t += base
    slope = np.add(t_dl, part)
    slope /= b
    return t, slope
