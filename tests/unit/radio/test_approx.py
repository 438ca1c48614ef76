"""radio.approx: the presolve's cheap log and transfer time, accurate and the same bits on floats and arrays."""

from __future__ import annotations

import numpy as np
import pytest

from wdmoe.radio.approx import approx_log, approx_log_array, approx_time, approx_time_array
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import scalar_time


def test_approx_log_is_accurate_and_the_array_form_is_bit_identical() -> None:
    x = 1.0 + 10.0 ** np.random.default_rng(0).uniform(-9.0, 12.0, 20000)
    ours = approx_log_array(x)

    np.testing.assert_array_equal(ours, [approx_log(float(v)) for v in x])
    np.testing.assert_allclose(ours, np.log1p(x - 1.0), rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("dl_pool", [0.0, 2e7])  # the BS's full power per downlink; a constant PSD over 20 MHz
def test_approx_time_is_the_solver_time_and_the_array_form_is_bit_identical(dl_pool: float) -> None:
    rng = np.random.default_rng(1)
    m = 500
    b = 10.0 ** rng.uniform(5.0, 7.5, (2, m))  # two devices' shares, DL row first in need and snr
    need = 10.0 ** rng.uniform(2.0, 6.0, (2, 2, m)) * LN2
    snr = 10.0 ** rng.uniform(5.0, 11.0, (2, 2, m))
    base = rng.uniform(0.0, 1e-3, (2, m))

    t, slope = approx_time_array(b, need, base, snr, dl_pool)

    for d in range(2):
        for i in range(0, m, 7):
            args = (b[d, i], need[0, d, i], need[1, d, i], base[d, i], snr[0, d, i], snr[1, d, i], dl_pool)
            assert approx_time(*args) == (t[d, i], slope[d, i])
            exact_t, exact_inverse = scalar_time(*args)
            assert abs(t[d, i] - exact_t) <= 1e-9 * exact_t
            # the slope's ln(1 + y) - y / (1 + y) cancels for small y: the log's 5e-13 shows there, relative 1e-8
            assert abs(slope[d, i] * exact_inverse - 1.0) <= 1e-6
