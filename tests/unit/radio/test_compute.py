"""radio.compute: the roofline by hand, presets, and fitting a profile back from its own timings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.radio.compute import (
    PRESETS,
    DeviceProfile,
    DeviceProfiles,
    expert_time_s,
    fit_profile,
    roofline_one_token_s,
    roofline_time_s,
)

PRESET_KEYS = ("jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "phone-soc", "rtx4090-edge")


def test_roofline_by_hand() -> None:
    # F = 1e6 FLOP/token, W = 1e6 bytes, C = 1e9 FLOP/s, M = 1e9 B/s, overhead 1e-4 s:
    # n=1: max(1e-3, 1e-3) + 1e-4; n=4: max(4e-3, 1e-3) + 1e-4; n=0: 0.
    t = roofline_time_s(np.array([0, 1, 4]), 1e6, 1e6, 1e9, 1e9, 1e-4)

    np.testing.assert_allclose(t, [0.0, 1.1e-3, 4.1e-3])


def test_roofline_per_device() -> None:
    profiles = DeviceProfiles.from_profiles([PRESETS["rtx4090-edge"], PRESETS["phone-soc"]])
    t = expert_time_s(np.array([1.0, 1.0]), profiles, 3.52e8, 3.52e8)

    # one token is memory-bound on both: 3.52e8 B / 1008e9 B/s + 20 us and 3.52e8 / 76.8e9 + 200 us
    np.testing.assert_allclose(t, [3.52e8 / 1008e9 + 20e-6, 3.52e8 / 76.8e9 + 200e-6])


def test_presets_exist_and_round_trip_through_the_struct_of_arrays() -> None:
    assert set(PRESETS) == set(PRESET_KEYS)
    profiles = DeviceProfiles.from_profiles([PRESETS[k] for k in PRESET_KEYS])

    assert profiles.num_devices == 5
    assert [profiles[i] for i in range(5)] == [PRESETS[k] for k in PRESET_KEYS]
    assert profiles.flops_per_s[4] > profiles.flops_per_s[0] > profiles.flops_per_s[2]


def test_fit_recovers_a_known_profile_from_exact_timings() -> None:
    truth = DeviceProfile("truth", 4.2e13, 2.0e11, 64e9, 0.2, 60.0, 7.5e-5)
    n = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    measured = roofline_time_s(n, 3.52e8, 3.52e8, truth.flops_per_s, truth.mem_bytes_per_s, truth.overhead_s)

    fitted = fit_profile(n, measured, 3.52e8, 3.52e8, name="truth", template=truth)

    assert fitted.flops_per_s == pytest.approx(truth.flops_per_s, rel=1e-9)
    assert fitted.mem_bytes_per_s == pytest.approx(truth.mem_bytes_per_s, rel=1e-9)
    assert fitted.overhead_s == pytest.approx(truth.overhead_s, rel=1e-6)
    assert fitted.compute_power_w == truth.compute_power_w


def test_fit_tolerates_noise() -> None:
    truth = PRESETS["jetson-agx-orin"]
    n = np.repeat(np.array([1, 4, 16, 64, 256, 1024, 4096]), 5)
    exact = roofline_time_s(n, 3.52e8, 3.52e8, truth.flops_per_s, truth.mem_bytes_per_s, truth.overhead_s)
    measured = exact * np.random.default_rng(0).normal(1.0, 0.01, n.shape)

    fitted = fit_profile(n, measured, 3.52e8, 3.52e8)

    assert fitted.flops_per_s == pytest.approx(truth.flops_per_s, rel=0.03)
    assert fitted.mem_bytes_per_s == pytest.approx(truth.mem_bytes_per_s, rel=0.03)


def test_fit_and_profile_errors() -> None:
    with pytest.raises(ValueError, match="distinct token counts"):
        fit_profile(np.array([1, 1, 2]), np.array([1.0, 1.0, 2.0]), 1.0, 1.0)
    with pytest.raises(ValueError, match="flops_per_s"):
        DeviceProfile("bad", 0.0, 1.0, 1.0, 1.0, 1.0)


@settings(max_examples=200, deadline=None)
@given(f=st.floats(1e3, 1e12), w=st.floats(1e3, 1e11), c=st.floats(1e9, 1e15), m=st.floats(1e9, 1e13),
       o=st.floats(0.0, 1e-3))
def test_one_token_roofline_is_the_array_form_bit_for_bit(f: float, w: float, c: float, m: float, o: float) -> None:
    assert roofline_one_token_s(f, w, c, m, o) == float(roofline_time_s(1.0, f, w, c, m, o))
