"""The radio model's transcendentals (ln, ln(1 + y), log10, e^x, 10^x) from + - * / and frexp/ldexp alone: one
implementation for Python floats and numpy arrays, the same bits on every CPU.

Why: numpy's float64 log/log1p/exp/log10/power run SIMD loops chosen at import for the CPU (AVX-512 on x86-64 CPUs
that have it), and Python's `math` calls the C library, which also picks code by CPU (glibc's FMA variants).
Each is accurate to about 1 ulp, none agrees with another bit for bit: on an AVX-512 machine np.log1p and
math.log1p differ in the last bit on ~1.5% of inputs. The policies' scalar decode path (Python floats) and their
batched array path (numpy), the simulator and the runtime's telemetry must give the same bits, on any machine, so
they all call this module. It uses only IEEE basic operations, correctly rounded on every machine and in numpy's
SIMD loops alike, and exact scalings (frexp, ldexp, rint); neither CPython nor numpy contracts a * b + c into a
fused multiply-add (each operation is its own C call or ufunc). Each function has a scalar form (`log1p`) and an
array form (`log1p_array`) doing the same operations in the same order; tests/unit/radio/test_exactmath.py checks
them bit for bit against each other and against mpmath.

Accuracy (measured against 200-bit mpmath over the whole finite range, tests/unit/radio/test_exactmath.py): log
and log1p within 1 ulp, log10 within 2.5 ulp, exp within 1.5 ulp, exp10 within 2 ulp (subnormal results: to the
subnormal spacing). numpy's and the C library's own functions are within about 0.5-1 ulp.

Method: ln x = k ln 2 + ln(1 + f) with x = 2^k (1 + f), 1 + f in [sqrt(1/2), sqrt(2)) (frexp, exact);
ln(1 + f) = 2 atanh(s) with s = f / (2 + f), |s| <= 0.1716, written f - (f^2/2 - s (f^2/2 + R(s^2))) with
R(z) = sum_{j=1..9} 2 z^j / (2j + 1) (the series' tail is below 3e-17 of the result), the classic arrangement that
keeps the rounding of the small terms away from the leading f. ln(1 + y) takes k from frexp(u sqrt(1/2)), u = 1 + y
(no masked select: numpy's masked loops are slow), and adds the exact rounding error of u (TwoSum) as c / u.
e^x = 2^k e^r with k = rint(x / ln 2), r = x - k ln 2 in two parts, |r| <= 0.347, e^r by its Taylor series to r^13
(tail below 5e-18); 10^x = e^(x ln 10) with x ln 10 as an exact two-term product (Dekker), so the argument's
rounding does not grow with |x|.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

LN2 = 0.6931471805599453  # ln 2 correctly rounded (equals math.log(2.0)); the rate's and the solvers' constant
LOG2_E = 1.4426950408889634  # 1 / ln 2 correctly rounded (log2(e))
LN10 = 2.302585092994046  # ln 10 correctly rounded
_LN2_HI = 0.6931467056274414  # ln 2 with its last 32 significand bits cleared: k * _LN2_HI is exact for |k| < 2^32
_LN2_LO = 4.7493250390316726e-07  # ln 2 - _LN2_HI, rounded
_LN10_HI = 2.3025850653648376  # ln 10 in 26 bits (Dekker's split): products with a 26-bit half are exact
_LN10_LO = 2.7629208037533617e-08  # ln 10 - _LN10_HI, rounded
_SPLIT = 134217729.0  # 2^27 + 1, Veltkamp's splitter for doubles
_SQRT_HALF = 0.7071067811865476
_LOG_R = tuple(2.0 / (2 * j + 1) for j in range(9, 0, -1))  # R's coefficients, highest power first
_EXP_P = tuple(1.0 / math.factorial(j) for j in range(13, 1, -1))  # e^r's Taylor coefficients r^13 .. r^2
_R9, _R8, _R7, _R6, _R5, _R4, _R3, _R2, _R1 = _LOG_R
_P13, _P12, _P11, _P10, _P9, _P8, _P7, _P6, _P5, _P4, _P3, _P2 = _EXP_P
_EXP_MAX = 709.782712893384  # e^x overflows above (largest x with a finite e^x, to the printed digits)
_EXP_MIN = -745.1332191019412  # e^x rounds to 0 below
_EXP10_SPAN = 400.0  # 10^x is inf or 0 beyond (|x| > 308.3 or 323.6 already)
_INF = math.inf
_frexp, _ldexp = math.frexp, math.ldexp


def _ln_core(f: float, c: float, k: int) -> float:
    """k ln 2 + ln(1 + f) + c for |c| << |f| (module docstring); Horner's rule written out (a loop costs more)."""
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    z = s * s
    r = ((((((((_R9 * z + _R8) * z + _R7) * z + _R6) * z + _R5) * z + _R4) * z + _R3) * z + _R2) * z + _R1) * z
    dk = float(k)
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + (dk * _LN2_LO + c))) - f)


def _ln_special(x: float) -> float:
    """ln of 0, a negative number, inf or nan, as IEEE (numpy) gives it: -inf, nan, inf, nan."""
    if x == 0.0:
        return -_INF
    return x if x == _INF else math.nan


def log(x: float) -> float:
    """ln x of a Python float, within 1 ulp; the same bits as `log_array`. log(0) = -inf, log(x < 0) = nan."""
    if not 0.0 < x < _INF:
        return _ln_special(x)
    m, k = _frexp(x)
    if m < _SQRT_HALF:
        m, k = m + m, k - 1
    return _ln_core(m - 1.0, 0.0, k)


def log1p(y: float) -> float:
    """ln(1 + y) of a Python float, within 1 ulp for every y > -1 (also tiny y); the same bits as `log1p_array`.
    log1p(-1) = -inf, log1p(y < -1) = nan (no ValueError, unlike math.log1p: the array form's values)."""
    u = 1.0 + y
    if not 0.0 < u < _INF:
        return _ln_special(u)
    k = _frexp(u * _SQRT_HALF)[1]  # u = 2^k m, m in [sqrt(1/2), sqrt(2)) but for the product's rounding (harmless)
    m = _ldexp(u, -k)  # exact; u >= 2^-53 is never subnormal
    b = u - 1.0
    c = ((1.0 - (u - b)) + (y - b)) / u  # (1 + y) - u exactly (TwoSum), relative to u
    return _ln_core(m - 1.0, c, k)


def log10(x: float) -> float:
    """log10 x of a Python float, ln x / ln 10, within 2.5 ulp; the same bits as `log10_array`."""
    return log(x) / LN10


def _exp_core(hi: float, lo: float) -> float:
    """e^(hi + lo) for |lo| <= ulp(hi), hi within the finite range."""
    k = round(hi * LOG2_E)
    r = ((hi - k * _LN2_HI) + lo) - k * _LN2_LO
    p = ((((((((((_P13 * r + _P12) * r + _P11) * r + _P10) * r + _P9) * r + _P8) * r + _P7) * r + _P6) * r + _P5) * r
          + _P4) * r + _P3) * r + _P2
    return _ldexp((p * r + 1.0) * r + 1.0, k)


def exp(x: float) -> float:
    """e^x of a Python float, within 1.5 ulp; the same bits as `exp_array`. Overflow gives inf (no OverflowError)."""
    if not _EXP_MIN <= x <= _EXP_MAX:
        return x + _INF if x > 0.0 or x != x else 0.0  # inf, nan, or 0 for very negative x
    return _exp_core(x, 0.0)


def _times_ln10(x: float) -> tuple[float, float]:
    """x ln 10 as hi + lo, |lo| <= ulp(hi) (Dekker's exact product with Veltkamp's split of x)."""
    t = _SPLIT * x
    x_hi = t - (t - x)
    x_lo = x - x_hi
    hi = x * (_LN10_HI + _LN10_LO)
    lo = (((x_hi * _LN10_HI - hi) + x_hi * _LN10_LO + x_lo * _LN10_HI) + x_lo * _LN10_LO)
    return hi, lo


def exp10(x: float) -> float:
    """10^x of a Python float, within 2 ulp; the same bits as `exp10_array`. The radio's dB to linear."""
    if not -_EXP10_SPAN <= x <= _EXP10_SPAN:  # far outside the finite range (and keeps the split finite)
        return x + _INF if x > 0.0 or x != x else 0.0
    hi, lo = _times_ln10(x)
    if not _EXP_MIN <= hi <= _EXP_MAX:
        return _INF if hi > 0.0 else 0.0
    return _exp_core(hi, lo)


# Array forms: the same operations, elementwise. Arrays of a few elements go through the scalar form (numpy's
# per-call cost times ~45 operations exceeds a Python loop there); larger ones run in place on a few buffers, in
# blocks whose temporaries stay in cache (at 16k elements about twice as fast as one pass over the whole array).
# Special inputs are found by two reductions and patched afterwards.

_SMALL = 32  # up to this many elements, the scalar form element by element
_BLOCK = 8192  # elements per block (4096 and 16384 measured slower at 16k-32k elements)


def _by_element(function: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    return np.array([function(v) for v in x.ravel().tolist()], dtype=np.float64).reshape(x.shape)


def _elementwise(scalar: Callable[[float], float], block: Callable[[np.ndarray], np.ndarray],
                 x: np.ndarray) -> np.ndarray:
    """`scalar` on each element of a small array, else `block` on blocks of the flattened array."""
    x = np.asarray(x, dtype=np.float64)
    if x.size <= _SMALL:
        return _by_element(scalar, x)
    if x.size <= _BLOCK:
        return block(x)
    flat = x.reshape(-1)
    out = np.empty(flat.shape[0])
    for start in range(0, flat.shape[0], _BLOCK):
        out[start:start + _BLOCK] = block(flat[start:start + _BLOCK])
    return out.reshape(x.shape)


def _ln_core_array(f: np.ndarray, c: np.ndarray | None, k: np.ndarray, work: np.ndarray) -> np.ndarray:
    """`_ln_core` on arrays; overwrites `work` (a float buffer of f's shape) and returns a new array."""
    hfsq = np.multiply(f, 0.5)
    hfsq *= f
    s = np.add(f, 2.0, out=work)
    np.divide(f, s, out=s)
    z = np.multiply(s, s)
    r = np.multiply(z, _LOG_R[0])
    for coefficient in _LOG_R[1:-1]:
        r += coefficient
        r *= z
    r += _LOG_R[-1]
    r *= z
    r += hfsq
    r *= s  # s (hfsq + r)
    np.copyto(s, k)  # k as float64 (exact), in s's buffer
    dk = s
    low = np.multiply(dk, _LN2_LO, out=z)
    if c is not None:
        low += c
    r += low
    np.subtract(hfsq, r, out=r)
    r -= f
    dk *= _LN2_HI
    np.subtract(dk, r, out=r)
    return r


def _ln_special_array(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`_ln_special` where x is not in (0, inf), `out` elsewhere."""
    if x.min() > 0.0 and x.max() < _INF:  # nan fails both comparisons
        return out
    with np.errstate(invalid="ignore"):
        special = np.where(x == 0.0, -_INF, np.where(x == _INF, _INF, np.nan))
        return np.where((x > 0.0) & (x < _INF), out, special)


def _reduce(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x = 2^k m with m in [sqrt(1/2), sqrt(2)) (frexp, then m doubled and k lowered where m < sqrt(1/2))."""
    m, k = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m + m, m)  # not a masked add (out=, where=): numpy's masked loops are several times slower
    np.subtract(k, low, out=k)
    return m, k


def log_array(x: np.ndarray) -> np.ndarray:
    """`log` elementwise on a float64 array (any shape); the same bits as `log` on each element."""
    return _elementwise(log, _log_block, x)


def _log_block(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        m, k = _reduce(x)
        m -= 1.0
        return _ln_special_array(x, _ln_core_array(m, None, k, np.empty_like(m)))


def log1p_array(y: np.ndarray) -> np.ndarray:
    """`log1p` elementwise on a float64 array (any shape); the same bits as `log1p` on each element."""
    return _elementwise(log1p, _log1p_block, y)


def _log1p_block(y: np.ndarray) -> np.ndarray:
    u = np.add(y, 1.0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.multiply(u, _SQRT_HALF)
        k = np.frexp(m)[1]
        np.ldexp(u, np.negative(k), out=m)
        m -= 1.0
        c = np.subtract(u, 1.0)  # b = u - 1; c = ((1 - (u - b)) + (y - b)) / u
        work = np.subtract(u, c)
        np.subtract(1.0, work, out=work)
        np.subtract(y, c, out=c)
        c += work
        c /= u
        return _ln_special_array(u, _ln_core_array(m, c, k, work))


def log10_array(x: np.ndarray) -> np.ndarray:
    """`log10` elementwise on a float64 array (any shape); the same bits as `log10` on each element."""
    out = log_array(x)
    out /= LN10
    return out


def _exp_core_array(hi: np.ndarray, lo: np.ndarray | None) -> np.ndarray:
    """`_exp_core` on arrays."""
    k = np.multiply(hi, LOG2_E)
    np.rint(k, out=k)  # round half to even, as Python's round
    r = np.multiply(k, _LN2_HI)
    np.subtract(hi, r, out=r)
    if lo is not None:
        r += lo
    p = np.multiply(k, _LN2_LO)
    r -= p
    np.multiply(r, _EXP_P[0], out=p)
    for coefficient in _EXP_P[1:-1]:
        p += coefficient
        p *= r
    p += _EXP_P[-1]
    p *= r
    p += 1.0
    p *= r
    p += 1.0
    return np.ldexp(p, k.astype(np.int64), out=p)


def exp_array(x: np.ndarray) -> np.ndarray:
    """`exp` elementwise on a float64 array (any shape); the same bits as `exp` on each element."""
    return _elementwise(exp, _exp_block, x)


def _exp_block(x: np.ndarray) -> np.ndarray:
    if x.min() >= _EXP_MIN and x.max() <= _EXP_MAX:
        return _exp_core_array(x, None)
    inside = (x >= _EXP_MIN) & (x <= _EXP_MAX)
    with np.errstate(invalid="ignore", over="ignore"):
        out = _exp_core_array(np.where(inside, x, 0.0), None)
        return np.where(inside, out, np.where((x > 0.0) | np.isnan(x), x + _INF, 0.0))


def exp10_array(x: np.ndarray) -> np.ndarray:
    """`exp10` elementwise on a float64 array (any shape); the same bits as `exp10` on each element."""
    return _elementwise(exp10, _exp10_block, x)


def _exp10_block(x: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        fits = (x >= -_EXP10_SPAN) & (x <= _EXP10_SPAN)
        xs = np.where(fits, x, 0.0)
        t = np.multiply(xs, _SPLIT)  # Veltkamp: x_hi = t - (t - x), x_lo = x - x_hi
        x_hi = np.subtract(t, np.subtract(t, xs))
        x_lo = np.subtract(xs, x_hi)
        hi = np.multiply(xs, _LN10_HI + _LN10_LO)
        lo = np.multiply(x_hi, _LN10_HI)
        lo -= hi
        lo += np.multiply(x_hi, _LN10_LO, out=t)
        lo += np.multiply(x_lo, _LN10_HI, out=t)
        lo += np.multiply(x_lo, _LN10_LO, out=t)
        inside = fits & (hi >= _EXP_MIN) & (hi <= _EXP_MAX)
        if inside.all():
            return _exp_core_array(hi, lo)
        out = _exp_core_array(np.where(inside, hi, 0.0), np.where(inside, lo, 0.0))
        return np.where(inside, out, np.where(np.isnan(x), x, np.where(x > 0.0, _INF, 0.0)))
