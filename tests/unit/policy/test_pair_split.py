"""The two-device split: its approximate-log start, the scalar and array forms bit for bit, and scipy's root."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from wdmoe.policy import split_arrays
from wdmoe.policy.bandwidth import pair_model_step, pair_split
from wdmoe.radio.rate import scalar_time


def _instances(seed: int, n: int) -> list[np.ndarray]:
    """n random two-device problems (a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, B): payloads over three decades,
    compute from none to dominant, SNRs per Hz over five decades, bands from 1 MHz to 100 MHz."""
    rng = np.random.default_rng(seed)
    bits = 10.0 ** rng.uniform(3.0, 6.0, (4, n)) * math.log(2.0)
    base = np.where(rng.random((2, n)) < 0.2, 0.0, 10.0 ** rng.uniform(-5.0, -1.5, (2, n)))
    snr = 10.0 ** rng.uniform(6.0, 11.0, (4, n))
    budget = 10.0 ** rng.uniform(6.0, 8.0, n)
    return [bits[0], bits[1], bits[2], bits[3], base[0], base[1], snr[0], snr[1], snr[2], snr[3], budget]


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), dl_pool=st.sampled_from([0.0, 2e7]))
def test_array_pair_split_equals_the_scalar_one_bit_for_bit(seed: int, dl_pool: float) -> None:
    args = _instances(seed, 400)
    split = split_arrays.pair_split(*args, dl_pool=dl_pool)

    for i in range(args[0].shape[0]):
        x = [float(a[i]) for a in args]
        reference = pair_split(x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7], x[8], x[9], x[10], dl_pool=dl_pool)
        assert reference is not None
        assert (split.b0[i], split.b1[i]) == reference
        assert (split.t0[i], split.inv0[i]) == scalar_time(reference[0], x[0], x[2], x[4], x[6], x[8], dl_pool)
        assert (split.t1[i], split.inv1[i]) == scalar_time(reference[1], x[1], x[3], x[5], x[7], x[9], dl_pool)


def _psd_time(b: float, need_dl: float, need_ul: float, base: float, snr_dl: float, snr_ul: float,
              pool: float) -> float:
    """Written from scratch: the BS's power at a constant PSD over `pool` Hz gives the downlink SNR snr_dl / pool
    on any share, so need_dl / (b ln(1 + snr_dl / pool)); the uplink spreads the device's power over its share."""
    return need_dl / (b * math.log1p(snr_dl / pool)) + need_ul / (b * math.log1p(snr_ul / b)) + base


def test_pair_split_under_shared_psd_finds_scipys_root_on_500_instances() -> None:
    args = _instances(11, 500)
    worst = 0.0
    for i in range(args[0].shape[0]):
        a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget = (float(a[i]) for a in args)
        split = pair_split(a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget, dl_pool=budget)

        def gap(b: float, x: tuple[float, ...] = (a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget)) -> float:
            return (_psd_time(b, x[0], x[2], x[4], x[6], x[8], x[10])
                    - _psd_time(x[10] - b, x[1], x[3], x[5], x[7], x[9], x[10]))

        root = brentq(gap, budget * 1e-12, budget * (1.0 - 1e-12), xtol=1e-300, rtol=1e-15)
        assert split is not None
        assert abs(split[0] + split[1] - budget) <= 1e-15 * budget
        assert abs(split[0] - root) <= 1e-8 * budget
        t0 = _psd_time(split[0], a0, c0, base0, d0, u0, budget)
        t1 = _psd_time(split[1], a1, c1, base1, d1, u1, budget)
        worst = max(worst, abs(t0 - t1) / max(t0, t1))
    assert worst <= 1e-9


def test_pair_split_finds_scipys_root() -> None:
    args = _instances(7, 200)
    for i in range(args[0].shape[0]):
        a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget = (float(a[i]) for a in args)
        split = pair_split(a0, a1, c0, c1, base0, base1, d0, d1, u0, u1, budget)

        def gap(
            b: float,
            a0: float = a0,
            a1: float = a1,
            c0: float = c0,
            c1: float = c1,
            base0: float = base0,
            base1: float = base1,
            d0: float = d0,
            d1: float = d1,
            u0: float = u0,
            u1: float = u1,
            budget: float = budget,
        ) -> float:
            return scalar_time(b, a0, c0, base0, d0, u0)[0] - scalar_time(budget - b, a1, c1, base1, d1, u1)[0]

        root = brentq(gap, budget * 1e-12, budget * (1.0 - 1e-12), xtol=1e-300, rtol=1e-15)
        assert split is not None
        assert split[0] + split[1] == budget or abs(split[0] + split[1] - budget) <= 1e-15 * budget
        assert abs(split[0] - root) <= 1e-8 * budget


def test_model_step_rejects_degenerate_tangents_in_both_forms() -> None:
    cases = [
        (1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0),  # no slope at all: no model
        (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0),  # balanced: stays at the middle
        (1.0, 1.0, math.nan, 1.0, 1.0, 1.0, 2.0),
        (1.0, 1.0, math.inf, 1.0, 1.0, 1.0, 2.0),
    ]
    for case in cases:
        scalar = pair_model_step(*case)
        array = float(split_arrays.pair_model_step(*(np.array([v]) for v in case))[0])
        inside = 0.0 < scalar < case[-1]
        assert inside == (0.0 < array < case[-1])
        if inside:
            assert scalar == array
    assert pair_model_step(*cases[1]) == 1.0


def test_array_pair_split_is_the_same_in_blocks(monkeypatch: object) -> None:
    args = _instances(11, 1000)
    whole = split_arrays.pair_split(*args)
    monkeypatch.setattr(split_arrays, "_BLOCK", 64)  # type: ignore[attr-defined]
    blocked = split_arrays.pair_split(*args)

    for field in ("b0", "b1", "t0", "inv0", "t1", "inv1"):
        np.testing.assert_array_equal(getattr(blocked, field), getattr(whole, field))
