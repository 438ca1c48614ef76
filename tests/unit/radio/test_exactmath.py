"""radio.exactmath: within a couple of ulps of 200-bit mpmath, and the scalar and array forms bit for bit."""

from __future__ import annotations

import math
from collections.abc import Callable

import mpmath
import numpy as np
import pytest

from wdmoe.radio import exactmath

mpmath.mp.prec = 200


def _ulps(got: np.ndarray, exact: Callable[[mpmath.mpf], mpmath.mpf], x: np.ndarray) -> np.ndarray:
    """|got - f(x)| in units of the last place of f(x) rounded to double (f by 200-bit mpmath)."""
    out = np.empty(x.shape[0])
    for i, (g, v) in enumerate(zip(got.tolist(), x.tolist(), strict=True)):
        reference = exact(mpmath.mpf(v))
        rounded = float(reference)
        out[i] = float(abs(mpmath.mpf(g) - reference) / math.ulp(rounded))
    return out


def _scalar(function: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    return np.array([function(v) for v in x.tolist()])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return bool((a.view(np.int64) == b.view(np.int64)).all())


RNG = np.random.default_rng(14)
N = 3000
LOG1P_INPUTS = np.concatenate([
    10.0 ** RNG.uniform(-300.0, 300.0, N),  # tiny to huge, positive
    -(10.0 ** RNG.uniform(-300.0, -1e-9, N // 2)),  # (-1, 0)
    RNG.uniform(-0.5, 3.0, N),  # around the reduction's boundaries (1 + y near sqrt(1/2), sqrt(2), 2)
    10.0 ** RNG.uniform(-3.0, 5.0, N),  # the rate's snr / b
    np.array([0.0, 1e-310, 5e-324, np.sqrt(2.0) - 1.0, np.sqrt(0.5) - 1.0, 1.0, 2.0**53, 1.7976931348623157e308]),
])
LOG_INPUTS = np.concatenate([10.0 ** RNG.uniform(-307.0, 308.0, N), RNG.uniform(0.5, 2.0, N),
                             np.array([5e-324, 1e-310, 1.0, 2.0, 1.7976931348623157e308])])
EXP_INPUTS = np.concatenate([RNG.uniform(-745.0, 709.78, N), RNG.uniform(-1.0, 1.0, N),
                             10.0 ** RNG.uniform(-300.0, 0.0, N // 2), -(10.0 ** RNG.uniform(-300.0, 0.0, N // 2)),
                             np.array([0.0, 709.782712893384, -708.0])])
EXP10_INPUTS = np.concatenate([RNG.uniform(-307.0, 308.25, N), RNG.uniform(-3.0, 3.0, N),
                               RNG.uniform(-20.0, 5.0, N), np.arange(-20.0, 21.0)])
CASES = [
    ("log1p", exactmath.log1p, exactmath.log1p_array, mpmath.log1p, LOG1P_INPUTS, 1.0),
    ("log", exactmath.log, exactmath.log_array, mpmath.log, LOG_INPUTS, 1.0),
    ("log10", exactmath.log10, exactmath.log10_array, mpmath.log10, LOG_INPUTS, 2.5),
    ("exp", exactmath.exp, exactmath.exp_array, mpmath.exp, EXP_INPUTS, 1.5),
    ("exp10", exactmath.exp10, exactmath.exp10_array, lambda v: mpmath.power(10, v), EXP10_INPUTS, 2.0),
]


@pytest.mark.parametrize(("name", "scalar", "array", "exact", "x", "bound"), CASES, ids=[c[0] for c in CASES])
def test_within_the_stated_ulps_of_mpmath(name: str, scalar: Callable[[float], float],
                                          array: Callable[[np.ndarray], np.ndarray],
                                          exact: Callable[[mpmath.mpf], mpmath.mpf], x: np.ndarray,
                                          bound: float) -> None:
    normal = x[np.abs(_scalar(scalar, x)) >= 2.2250738585072014e-308]  # ulps of subnormal results mean little
    errors = _ulps(array(normal), exact, normal)

    assert errors.max() <= bound, f"{name}: {errors.max():.3f} ulp at x = {normal[errors.argmax()]!r}"


@pytest.mark.parametrize(("name", "scalar", "array", "exact", "x", "bound"), CASES, ids=[c[0] for c in CASES])
def test_array_form_is_the_scalar_form_bit_for_bit(name: str, scalar: Callable[[float], float],
                                                   array: Callable[[np.ndarray], np.ndarray],
                                                   exact: Callable[[mpmath.mpf], mpmath.mpf], x: np.ndarray,
                                                   bound: float) -> None:
    assert _same_bits(array(x), _scalar(scalar, x))
    for size in (1, 5, 32, 33, 200):  # both sides of the small-array path, and 2-D arrays
        part = x[:size * 2].reshape(2, size)
        assert _same_bits(array(part).ravel(), _scalar(scalar, part.ravel()))
    many = np.resize(x, (3, 7001))  # blocks of 8192 across rows, a partial last block
    assert _same_bits(array(many).ravel(), _scalar(scalar, many.ravel()))


def test_special_values_follow_numpy_in_both_forms() -> None:
    with np.errstate(all="ignore"):
        cases: list[tuple[Callable[[float], float], Callable[[np.ndarray], np.ndarray], np.ndarray]] = [
            (exactmath.log, exactmath.log_array, np.log),
            (exactmath.log1p, exactmath.log1p_array, np.log1p),
            (exactmath.exp, exactmath.exp_array, np.exp),
            (exactmath.exp10, exactmath.exp10_array, lambda v: np.power(10.0, v)),
        ]
        x = np.array([0.0, -1.0, -2.0, np.inf, -np.inf, np.nan, 800.0, -800.0, 308.26, -400.0, 1e300, -1e300])
        x = np.tile(x, 4)  # above the small-array size too
        for scalar, array, reference in cases:
            expected = reference(x)
            special = ~np.isfinite(expected) | (expected == 0.0)
            np.testing.assert_array_equal(array(x)[special], expected[special])
            np.testing.assert_array_equal(_scalar(scalar, x)[special], expected[special])


def test_constants() -> None:
    assert math.log(2.0) == exactmath.LN2
    assert 1.0 / math.log(2.0) == exactmath.LOG2_E
    assert exactmath.log(2.0) == exactmath.LN2 and exactmath.exp(0.0) == 1.0 and exactmath.exp10(3.0) == 1000.0
