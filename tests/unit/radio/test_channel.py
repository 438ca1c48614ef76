"""radio.channel: TR 38.901 path loss and LoS probability by hand, fading statistics, replay, SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.config import ChannelConfig, FadingConfig, Scenario
from wdmoe.radio.channel import (
    breakpoint_distance_m,
    draw_distances_2d_m,
    draw_environment_height_m,
    draw_fading,
    draw_los,
    draw_shadowing_db,
    los_probability,
    noise_psd_w_per_hz,
    pathloss_38901_db,
    pathloss_log_distance_db,
    redraw_fading,
    sample_large_scale,
    sample_links,
    shadowing_std_db,
    snr_per_hz,
    uma_c,
)

# Hand computations below use f_c = 3.5 GHz, so 20 log10(3.5) = 20 * 0.544068 = 10.88136 dB.


def test_uma_los_below_breakpoint() -> None:
    # h_BS = 25 m, h_UT = 1.5 m, d_2D = 50 m: d_3D = sqrt(50^2 + 23.5^2) = sqrt(3052.25) = 55.24717 m,
    # log10(55.24717) = 1.742310; d'_BP = 4 * 24 * 0.5 * 3.5e9 / 3e8 = 560 m > 50 m, so PL1:
    # 28.0 + 22 * 1.742310 + 10.88136 = 28.0 + 38.33082 + 10.88136 = 77.21218 dB.
    pl = pathloss_38901_db("uma", np.array([50.0]), 3.5, True)
    assert pl[0] == pytest.approx(77.2122, abs=1e-3)


def test_uma_breakpoint_distance() -> None:
    # 4 * (25 - 1) * (1.5 - 1) * 3.5e9 / 3e8 = 560 m; UMi: 4 * 9 * 0.5 * 3.5e9 / 3e8 = 210 m.
    assert breakpoint_distance_m(25.0, 1.5, 3.5) == pytest.approx(560.0)
    assert breakpoint_distance_m(10.0, 1.5, 3.5) == pytest.approx(210.0)


def test_uma_los_beyond_breakpoint() -> None:
    # d_2D = 1000 m > 560 m, PL2: d_3D = sqrt(1e6 + 552.25) = 1000.2761 m, 40 log10(d_3D) = 120.00480;
    # 9 log10(560^2 + 23.5^2) = 9 log10(314152.25) = 9 * 5.497140 = 49.47426;
    # 28.0 + 120.00480 + 10.88136 - 49.47426 = 109.41190 dB.
    pl = pathloss_38901_db("uma", np.array([1000.0]), 3.5, True)
    assert pl[0] == pytest.approx(109.4119, abs=1e-3)


def test_uma_nlos() -> None:
    # d_2D = 200 m: d_3D = sqrt(40000 + 552.25) = 201.37589 m, log10 = 2.304007;
    # PL'_NLoS = 13.54 + 39.08 * 2.304007 + 10.88136 - 0.6 * 0 = 13.54 + 90.04061 + 10.88136 = 114.46197 dB,
    # above PL_LoS = 28 + 22 * 2.304007 + 10.88136 = 89.57 dB, so the max is PL'_NLoS.
    pl = pathloss_38901_db("uma", np.array([200.0]), 3.5, False)
    assert pl[0] == pytest.approx(114.4620, abs=1e-3)


def test_umi_los_and_nlos() -> None:
    # h_BS = 10 m, h_UT = 1.5 m, d_2D = 100 m: d_3D = sqrt(10000 + 72.25) = 100.36060 m, log10 = 2.001563;
    # d'_BP = 210 m > 100 m, PL1 = 32.4 + 21 * 2.001563 + 10.88136 = 32.4 + 42.03282 + 10.88136 = 85.31418 dB;
    # PL'_NLoS = 22.4 + 35.3 * 2.001563 + 21.3 * 0.544068 = 22.4 + 70.65517 + 11.58865 = 104.64382 dB.
    assert pathloss_38901_db("umi", np.array([100.0]), 3.5, True)[0] == pytest.approx(85.3142, abs=1e-3)
    assert pathloss_38901_db("umi", np.array([100.0]), 3.5, False)[0] == pytest.approx(104.6438, abs=1e-3)


def test_inh_los_and_nlos() -> None:
    # h_BS = 3 m, h_UT = 1 m, d_2D = 10 m: d_3D = sqrt(100 + 4) = 10.19804 m, log10 = 1.008517;
    # LoS: 32.4 + 17.3 * 1.008517 + 10.88136 = 32.4 + 17.44734 + 10.88136 = 60.72870 dB;
    # NLoS': 17.3 + 38.3 * 1.008517 + 24.9 * 0.544068 = 17.3 + 38.62620 + 13.54729 = 69.47349 dB.
    assert pathloss_38901_db("inh", np.array([10.0]), 3.5, True)[0] == pytest.approx(60.7287, abs=1e-3)
    assert pathloss_38901_db("inh", np.array([10.0]), 3.5, False)[0] == pytest.approx(69.4735, abs=1e-3)


def test_nlos_takes_los_where_nlos_formula_is_lower() -> None:
    # InH at d_2D = 1 m: d_3D = sqrt(1 + 4) = 2.236 m, log10 = 0.349485; LoS = 32.4 + 6.04609 + 10.88136 = 49.33 dB,
    # NLoS' = 17.3 + 13.38527 + 13.54729 = 44.23 dB < LoS, so NLoS = max(...) = LoS.
    los = pathloss_38901_db("inh", np.array([1.0]), 3.5, True)
    nlos = pathloss_38901_db("inh", np.array([1.0]), 3.5, False)
    assert los[0] == pytest.approx(49.3275, abs=1e-3)
    assert nlos[0] == los[0]


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["uma", "umi", "inh"]),
    distance=st.floats(min_value=10.0, max_value=140.0),
    carrier_ghz=st.floats(min_value=0.5, max_value=100.0),
)
def test_nlos_never_below_los(model: str, distance: float, carrier_ghz: float) -> None:
    los = pathloss_38901_db(model, np.array([distance]), carrier_ghz, True)  # type: ignore[arg-type]
    nlos = pathloss_38901_db(model, np.array([distance]), carrier_ghz, False)  # type: ignore[arg-type]
    assert nlos[0] >= los[0]


def test_pathloss_grows_with_distance() -> None:
    d = np.linspace(10.0, 4000.0, 500)
    for model in ("uma", "umi"):
        for los in (True, False):
            assert np.all(np.diff(pathloss_38901_db(model, d, 3.5, los)) > 0.0)  # type: ignore[arg-type]


def test_pathloss_refuses_distances_outside_the_table() -> None:
    with pytest.raises(ValueError, match=r"uma path loss is defined for 10 m <= d_2D <= 5000 m"):
        pathloss_38901_db("uma", np.array([5.0, 100.0]), 3.5, True)
    with pytest.raises(ValueError, match=r"d_3D"):
        pathloss_38901_db("inh", np.array([200.0]), 3.5, True)


def test_log_distance_default_is_the_papers_placeholder() -> None:
    # 128.1 + 37.6 log10(d / 1 km): 1 km -> 128.1 dB; 100 m -> 128.1 - 37.6 = 90.5 dB; 316.2 m -> 109.3 dB.
    pl = pathloss_log_distance_db(np.array([1000.0, 100.0, 10**2.5]))
    np.testing.assert_allclose(pl, [128.1, 90.5, 109.3], atol=1e-9)
    # PL0 = 40 dB at 1 m with n = 2: 40 + 20 log10(50) = 40 + 33.9794 = 73.9794 dB.
    assert pathloss_log_distance_db(np.array([50.0]), 40.0, 1.0, 2.0)[0] == pytest.approx(73.9794, abs=1e-4)


def test_los_probability_limits() -> None:
    near = np.array([1.0, 10.0, 18.0])
    assert np.all(los_probability("uma", near) == 1.0)
    assert np.all(los_probability("umi", near) == 1.0)
    assert los_probability("inh", np.array([1.2]))[0] == 1.0
    # Far away UMa (h_UT <= 13 m) and UMi tend to 18/d: at 5 km 18/5000 = 0.0036 (exp terms ~ 1e-35, 1e-60).
    assert los_probability("uma", np.array([5000.0]))[0] == pytest.approx(0.0036, rel=1e-9)
    assert los_probability("umi", np.array([5000.0]))[0] == pytest.approx(0.0036, rel=1e-9)
    # UMi at 100 m: 0.18 + exp(-100/36) * 0.82 = 0.18 + 0.062177 * 0.82 = 0.230985.
    assert los_probability("umi", np.array([100.0]))[0] == pytest.approx(0.230985, abs=1e-6)
    # InH mixed at 3 m: exp(-1.8 / 4.7) = 0.681827; at 50 m: 0.32 exp(-43.5 / 32.6) = 0.32 * 0.263328 = 0.084265.
    np.testing.assert_allclose(los_probability("inh", np.array([3.0, 50.0])), [0.681827, 0.084265], atol=1e-6)


def test_los_probability_decreases_and_stays_in_unit_interval() -> None:
    d = np.linspace(0.5, 5000.0, 20001)
    for model in ("uma", "umi", "inh"):
        p = los_probability(model, d)  # type: ignore[arg-type]
        assert np.all((p >= 0.0) & (p <= 1.0))
        assert np.all(np.diff(p) <= 1e-12)


def test_tall_ut_raises_uma_los_probability() -> None:
    # C'(h_UT = 23 m) = (10/10)^1.5 = 1; at 100 m the factor is
    # 1 + 1.25 * 1 * (100/100)^3 * exp(-100/150) = 1 + 1.25 * 0.513417 = 1.641771.
    low = los_probability("uma", np.array([100.0]), 1.5)[0]
    tall = los_probability("uma", np.array([100.0]), 23.0)[0]
    assert tall == pytest.approx(low * 1.641771, rel=1e-6)


def test_draw_los_frequency_matches_probability() -> None:
    rng = np.random.default_rng(11)
    n = 40_000
    los = draw_los(rng, "umi", np.full(n, 100.0))
    p = 0.230985
    # Binomial mean: standard error sqrt(p (1 - p) / n) = 0.0021; allow 5 standard errors.
    assert abs(los.mean() - p) < 5.0 * math.sqrt(p * (1.0 - p) / n)
    assert np.all(draw_los(rng, "umi", np.full(5, 4000.0), mode="los"))
    assert not np.any(draw_los(rng, "umi", np.full(5, 12.0), mode="nlos"))


def test_shadowing_std_per_model_and_state() -> None:
    los = np.array([True, False])
    np.testing.assert_array_equal(shadowing_std_db("uma", los), [4.0, 6.0])
    np.testing.assert_array_equal(shadowing_std_db("umi", los), [4.0, 7.82])
    np.testing.assert_array_equal(shadowing_std_db("inh", los), [3.0, 8.03])
    n = 50_000
    draws = draw_shadowing_db(np.random.default_rng(3), np.full(n, 6.0))
    # Sample std of n normals has standard error ~ sigma / sqrt(2 n) = 0.019 dB; mean ~ sigma / sqrt(n) = 0.027.
    assert abs(draws.std() - 6.0) < 5.0 * 6.0 / math.sqrt(2 * n)
    assert abs(draws.mean()) < 5.0 * 6.0 / math.sqrt(n)


@pytest.mark.parametrize(("fading", "k_db"), [("rayleigh", 0.0), ("rician", 0.0), ("rician", 9.0)])
def test_fading_has_unit_mean(fading: str, k_db: float) -> None:
    n = 200_000
    gains = draw_fading(np.random.default_rng(5), fading, n, k_db)  # type: ignore[arg-type]
    k = 10.0 ** (k_db / 10.0)
    # Var |h|^2 = (2K + 1) / (K + 1)^2 for Rician (1 for Rayleigh, K = 0); allow 5 standard errors of the mean.
    std_err = math.sqrt((2.0 * k + 1.0) / (k + 1.0) ** 2 / n) if fading == "rician" else 1.0 / math.sqrt(n)
    assert np.all(gains >= 0.0)
    assert abs(gains.mean() - 1.0) < 5.0 * std_err


def test_rayleigh_power_is_exponential() -> None:
    gains = draw_fading(np.random.default_rng(6), "rayleigh", 100_000)
    # P(|h|^2 > 1) = exp(-1) = 0.367879 for Exp(1); binomial standard error 0.0015.
    assert abs((gains > 1.0).mean() - math.exp(-1.0)) < 5.0 * math.sqrt(0.3679 * 0.6321 / 100_000)


def test_rician_with_huge_k_is_deterministic() -> None:
    gains = draw_fading(np.random.default_rng(7), "rician", 10_000, k_factor_db=60.0)
    # K = 1e6: |h|^2 = 1 + O(2 / sqrt(K)) = 1 +- ~2e-3 at most a few sigma.
    np.testing.assert_allclose(gains, 1.0, atol=1e-2)
    np.testing.assert_array_equal(draw_fading(np.random.default_rng(7), "none", 4), np.ones(4))


def test_device_drop_fills_the_annulus_uniformly_in_area() -> None:
    n = 40_000
    d = draw_distances_2d_m(np.random.default_rng(8), n, 50.0, 300.0)
    assert d.min() >= 50.0 and d.max() <= 300.0
    # Half the area lies inside r_half = sqrt((50^2 + 300^2) / 2) = 215.06 m.
    inside = (d < math.sqrt((50.0**2 + 300.0**2) / 2.0)).mean()
    assert abs(inside - 0.5) < 5.0 * math.sqrt(0.25 / n)


def test_snr_per_hz_matches_an_independent_derivation() -> None:
    # 43 dBm = 19.9526 W; PL 100 dB = 1e10; N0 = 1e-17.4 mW/Hz = 10^-20.4 W/Hz; NF 7 dB = 5.01187.
    pathloss_db, gain = np.array([100.0, 120.0]), np.array([1.0, 0.5])
    p_tx_w = 10.0 ** (43.0 / 10.0) / 1000.0
    expected = p_tx_w * gain / (10.0 ** (pathloss_db / 10.0) * 10.0**-20.4 * 10.0**0.7)
    np.testing.assert_allclose(snr_per_hz(43.0, pathloss_db, gain, 7.0), expected, rtol=1e-12)
    # In dB-Hz: 43 - 100 + 174 - 7 = 110 dB-Hz, i.e. 1e11 Hz.
    assert snr_per_hz(43.0, pathloss_db, gain, 7.0)[0] == pytest.approx(1e11, rel=1e-12)
    assert noise_psd_w_per_hz(0.0) == pytest.approx(3.98107e-21, rel=1e-5)


def _scenario(**changes: object) -> Scenario:
    return Scenario.model_validate({"num_devices": 64, **changes})


def test_same_seed_replays_the_same_links() -> None:
    scenario = _scenario()
    first = sample_links(np.random.default_rng(42), scenario.radio)
    again = sample_links(np.random.default_rng(42), scenario.radio)
    other = sample_links(np.random.default_rng(43), scenario.radio)
    for name in ("distance_m", "pathloss_db", "gain_dl", "gain_ul", "snr_dl_per_hz", "snr_ul_per_hz"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.distance_m, other.distance_m)


def test_sample_links_composes_pathloss_and_snr() -> None:
    channel = ChannelConfig(model="umi", los="los", shadowing=False)
    scenario = Scenario(num_devices=32, distance_min_m=20.0, distance_max_m=150.0, channel=channel)
    links = sample_links(np.random.default_rng(1), scenario.radio)
    assert links.num_devices == 32
    # Without shadowing the loss is the UMi LoS path loss at the devices' ground distance (h_BS 10, h_UT 1.5).
    d2d = np.sqrt(links.distance_m**2 - 8.5**2)
    np.testing.assert_allclose(links.pathloss_db, pathloss_38901_db("umi", d2d, 3.5, True), atol=1e-9)
    assert np.all((d2d >= 20.0 - 1e-9) & (d2d <= 150.0 + 1e-9))
    # The DL is 43 dBm from the BS, the UL 23 dBm from the device: SNR per Hz in dB-Hz follows.
    dl_db = 43.0 - links.pathloss_db + 174.0 - 7.0 + 10.0 * np.log10(links.gain_dl)
    ul_db = 23.0 - links.pathloss_db + 174.0 - 7.0 + 10.0 * np.log10(links.gain_ul)
    np.testing.assert_allclose(10.0 * np.log10(links.snr_dl_per_hz), dl_db, atol=1e-9)
    np.testing.assert_allclose(10.0 * np.log10(links.snr_ul_per_hz), ul_db, atol=1e-9)
    assert not np.array_equal(links.gain_dl, links.gain_ul)


def test_shadowing_spreads_the_loss_around_the_path_loss() -> None:
    channel = ChannelConfig(model="uma", los="nlos", shadowing=True)
    # 5 draws of 4,000 devices (a scenario holds at most 4,096): 20,000 samples of the shadowing.
    scenario = Scenario(num_devices=4_000, channel=channel, fading=FadingConfig(model="none"))
    rng = np.random.default_rng(2)
    shadows = []
    for _ in range(5):
        links = sample_links(rng, scenario.radio)
        d2d = np.sqrt(links.distance_m**2 - 23.5**2)
        shadows.append(links.pathloss_db - pathloss_38901_db("uma", d2d, 3.5, False))
        np.testing.assert_array_equal(links.gain_dl, 1.0)
    shadow = np.concatenate(shadows)
    # UMa NLoS sigma_SF = 6 dB; standard error of the sample std ~ 6 / sqrt(40000) = 0.03 dB.
    assert abs(shadow.std() - 6.0) < 5.0 * 6.0 / math.sqrt(2 * 20_000)


def test_reciprocal_fading_gives_equal_gains() -> None:
    scenario = _scenario(fading=FadingConfig(model="rayleigh", reciprocal=True))
    links = sample_links(np.random.default_rng(4), scenario.radio)
    np.testing.assert_array_equal(links.gain_dl, links.gain_ul)


def test_redraw_fading_keeps_the_large_scale_state() -> None:
    scenario = _scenario()
    links = sample_links(np.random.default_rng(9), scenario.radio)
    block = redraw_fading(np.random.default_rng(10), links, scenario.radio)
    np.testing.assert_array_equal(block.distance_m, links.distance_m)
    np.testing.assert_array_equal(block.pathloss_db, links.pathloss_db)
    assert not np.array_equal(block.gain_dl, links.gain_dl)
    np.testing.assert_allclose(block.snr_dl_per_hz, snr_per_hz(43.0, block.pathloss_db, block.gain_dl, 7.0))
    np.testing.assert_allclose(block.snr_ul_per_hz, snr_per_hz(23.0, block.pathloss_db, block.gain_ul, 7.0))
    assert block.dl_psd_pool_hz == links.dl_psd_pool_hz == 20e6  # the default: a constant PSD over the band


def test_links_carry_the_scenarios_downlink_power_model() -> None:
    # 8 devices at a constant PSD over 20 MHz: an equal 2.5 MHz share gets 1/8 of the BS's 43 dBm, so its DL SNR is
    # 10 log10(8) = 9.03 dB below the full-power model's snr_per_hz / 2.5 MHz (issue 15's "about 9 dB").
    shared = sample_links(np.random.default_rng(3), Scenario(num_devices=8).radio)
    full = sample_links(np.random.default_rng(3), Scenario(num_devices=8, downlink_power="full_per_device").radio)
    np.testing.assert_array_equal(shared.snr_dl_per_hz, full.snr_dl_per_hz)
    assert (shared.dl_psd_pool_hz, full.dl_psd_pool_hz) == (20e6, 0.0)
    gap_db = 10.0 * np.log10((full.snr_dl_per_hz / 2.5e6) / (shared.snr_dl_per_hz / shared.dl_psd_pool_hz))
    np.testing.assert_allclose(gap_db, 10.0 * math.log10(8.0), rtol=1e-12)


def test_log_distance_scenario_uses_the_papers_formula() -> None:
    channel = ChannelConfig(model="log_distance", shadowing=False)
    scenario = Scenario(num_devices=16, channel=channel, fading=FadingConfig(model="none"))
    links = sample_links(np.random.default_rng(12), scenario.radio)
    np.testing.assert_allclose(links.pathloss_db, 128.1 + 37.6 * np.log10(links.distance_m / 1000.0))


def test_tall_uma_pathloss_by_hand_with_the_drawn_environment_height() -> None:
    # h_UT 22.5 m, d_2D 3 km, 3.5 GHz, LoS. h_E = 21 m: d'_BP = 4 (25 - 21)(22.5 - 21) 3.5e9 / 3e8 = 280 m < d_2D,
    # so PL2 = 28 + 40 log10(d_3D) + 20 log10(3.5) - 9 log10(280^2 + 2.5^2); h_E = 1 m: d'_BP = 4 * 24 * 21.5 *
    # 11.667 = 24080 m > d_2D, PL1 = 28 + 22 log10(d_3D) + 20 log10(3.5). d_3D = sqrt(3000^2 + 2.5^2).
    d3d = math.hypot(3000.0, 2.5)
    pl2 = 28.0 + 40.0 * math.log10(d3d) + 20.0 * math.log10(3.5) - 9.0 * math.log10(280.0**2 + 2.5**2)
    pl1 = 28.0 + 22.0 * math.log10(d3d) + 20.0 * math.log10(3.5)
    ours = pathloss_38901_db("uma", np.full(2, 3000.0), 3.5, True, 25.0, 22.5, np.array([21.0, 1.0]))

    np.testing.assert_allclose(ours, [pl2, pl1], atol=1e-9)
    assert breakpoint_distance_m(25.0, 22.5, 3.5, 21.0) == pytest.approx(280.0)
    with pytest.raises(ValueError, match=r"h_UT = 22.5 m needs the environment height h_E.*draw_environment_height_m"):
        pathloss_38901_db("uma", np.array([3000.0]), 3.5, True, 25.0, 22.5)


def test_uma_c_by_hand() -> None:
    # h_UT 22.5 m, d_2D 300 m: ((22.5 - 13) / 10)^1.5 * 5/4 * 3^3 * exp(-2) = 0.92594 * 4.5676 = 4.2293
    np.testing.assert_allclose(uma_c(np.array([300.0, 18.0]), 22.5),
                               [0.95**1.5 * 1.25 * 27.0 * math.exp(-2.0), 0.0], rtol=1e-12)
    np.testing.assert_array_equal(uma_c(np.array([300.0]), 13.0), [0.0])


def test_environment_height_draw_follows_the_standard() -> None:
    """1 m with probability 1 / (1 + C), else uniform over {12, 15, 18, 21} m (h_UT 22.5 m), within 5 standard
    errors on 40,000 links at 300 m."""
    n = 40_000
    h_e = draw_environment_height_m(np.random.default_rng(8), "uma", np.full(n, 300.0), 22.5)
    p_one = 1.0 / (1.0 + 0.95**1.5 * 1.25 * 27.0 * math.exp(-2.0))

    assert set(np.unique(h_e)) == {1.0, 12.0, 15.0, 18.0, 21.0}
    assert abs(np.mean(h_e == 1.0) - p_one) <= 5.0 * math.sqrt(p_one * (1 - p_one) / n)
    for height in (12.0, 15.0, 18.0, 21.0):
        p = (1.0 - p_one) / 4.0
        assert abs(np.mean(h_e == height) - p) <= 5.0 * math.sqrt(p * (1 - p) / n)
    # h_UT 13.5 m: h_UT - 1.5 = 12, so the drawn height is 12 m (h'_UT = 1.5 m)
    low = draw_environment_height_m(np.random.default_rng(8), "uma", np.full(1000, 100.0), 13.5)
    assert set(np.unique(low)) <= {1.0, 12.0} and np.any(low == 12.0)


def test_environment_height_is_drawn_only_where_the_standard_draws_it() -> None:
    # UMa at h_UT <= 13 m, UMi and InH: h_E = 1 m without touching the generator, so those scenarios replay their
    # old draws; a tall UMa UT draws it, reproducibly from the scenario's seed.
    for model, ut_h in (("uma", 1.5), ("uma", 13.0), ("umi", 20.0), ("inh", 1.0)):
        rng = np.random.default_rng(4)
        before = rng.bit_generator.state
        h_e = draw_environment_height_m(rng, model, np.full(5, 100.0), ut_h)  # type: ignore[arg-type]
        np.testing.assert_array_equal(h_e, 1.0)
        assert rng.bit_generator.state == before
    tall = Scenario(num_devices=64, channel=ChannelConfig(ut_height_m=22.5), distance_max_m=1500.0, seed=3).radio
    first = sample_large_scale(np.random.default_rng(3), tall)
    again = sample_large_scale(np.random.default_rng(3), tall)
    np.testing.assert_array_equal(first.environment_height_m, again.environment_height_m)
    np.testing.assert_array_equal(first.pathloss_db, again.pathloss_db)
    assert np.any(first.environment_height_m > 1.0)
    expected = pathloss_38901_db("uma", first.distance_2d_m, 3.5, first.los, 25.0, 22.5, first.environment_height_m)
    np.testing.assert_array_equal(first.pathloss_db, expected)
