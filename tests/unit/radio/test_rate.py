"""radio.rate: the Shannon rate of a share by hand, its limits, transfer times, and pool modes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.radio.exactmath import LN2, log1p_array
from wdmoe.radio.link import DownlinkPower, LinkState
from wdmoe.radio.rate import (
    PoolMode,
    bs_tx_power_per_share_w,
    dl_rate_bps,
    dl_share_time_s,
    max_rate_bps,
    pool_shares,
    psd_dl_nats,
    rate_dl_bps,
    rate_ul_bps,
    scalar_time,
    shannon_rate_bps,
    share_time_s,
    time_and_inverse_slope,
    time_only,
    transfer_and_slope_into,
    transfer_time_s,
)


def test_rate_by_hand_and_zero_share() -> None:
    # 1 MHz with snr_per_hz 3e6: SNR = 3, log2(4) = 2 bit/s/Hz -> 2 Mbit/s; 0 Hz -> 0 bit/s.
    rate = shannon_rate_bps(np.array([1e6, 0.0, 2e6]), np.array([3e6, 3e6, 2e6]))

    np.testing.assert_allclose(rate, [2e6, 0.0, 2e6], rtol=1e-15)


def test_dl_and_ul_use_their_own_snr() -> None:
    link = LinkState(np.ones(2), np.zeros(2), np.ones(2), np.ones(2), np.array([3e6, 7e6]), np.array([1e6, 1e6]))

    assert link.downlink is DownlinkPower.FULL_PER_DEVICE
    np.testing.assert_allclose(rate_dl_bps(link, np.full(2, 1e6)), [2e6, 3e6])
    np.testing.assert_allclose(rate_ul_bps(link, np.full(2, 1e6)), [1e6, 1e6])


def test_shared_psd_downlink_by_hand() -> None:
    # The BS spreads its power over a 4 MHz pool: snr_per_hz 1.2e7 gives SNR 1.2e7 / 4e6 = 3 on any share, so
    # log2(1 + 3) = 2 bit/s/Hz: 1 MHz -> 2 Mbit/s, 2 MHz -> 4 Mbit/s (linear in b), 0 Hz -> 0. The uplink keeps the
    # device's full power on its share: b log2(1 + snr / b).
    link = LinkState(np.ones(3), np.zeros(3), np.ones(3), np.ones(3), np.full(3, 1.2e7), np.full(3, 3e6), 4e6)
    shares = np.array([1e6, 2e6, 0.0])

    assert link.downlink is DownlinkPower.SHARED_PSD
    np.testing.assert_allclose(rate_dl_bps(link, shares), [2e6, 4e6, 0.0], rtol=1e-15)
    np.testing.assert_allclose(rate_ul_bps(link, shares), [2e6, 2e6 * np.log2(2.5), 0.0], rtol=1e-15)
    np.testing.assert_array_equal(dl_share_time_s(np.array([4e6, 0.0, 1.0]), shares, link.snr_dl_per_hz, 4e6),
                                  [2.0, 0.0, np.inf])
    # full power per device: the uplink's formula on the downlink's SNR
    np.testing.assert_allclose(dl_rate_bps(1e6, 3e6, 0.0), 2e6, rtol=1e-15)


def test_bs_power_per_share_sums_to_the_bs_power() -> None:
    shares = np.array([1e6, 3e6, 16e6])

    np.testing.assert_allclose(bs_tx_power_per_share_w(20.0, shares, 20e6), [1.0, 3.0, 16.0], rtol=1e-15)
    assert bs_tx_power_per_share_w(20.0, shares, 20e6).sum() == pytest.approx(20.0, rel=1e-15)
    np.testing.assert_array_equal(bs_tx_power_per_share_w(20.0, shares, 0.0), [20.0, 20.0, 20.0])


@settings(max_examples=100)
@given(b=st.floats(1.0, 1e9), extra=st.floats(1e-3, 1e9), snr=st.floats(1e3, 1e13), pool=st.floats(1e3, 1e9))
def test_shared_psd_rate_is_linear_and_below_full_power(b: float, extra: float, snr: float, pool: float) -> None:
    rate = dl_rate_bps(b, snr, pool)

    assert dl_rate_bps(b + extra, snr, pool) == pytest.approx(rate * (b + extra) / b, rel=1e-12)
    if b <= pool:  # a share of the pool gets a part of the power: never faster than with all of it
        assert rate <= shannon_rate_bps(b, snr) * (1 + 1e-12)


@settings(max_examples=200)
@given(b=st.floats(1.0, 1e9), extra=st.floats(1e-3, 1e9), snr=st.floats(1e3, 1e13))
def test_rate_rises_with_bandwidth_below_the_power_limit(b: float, extra: float, snr: float) -> None:
    low, high = shannon_rate_bps(b, snr), shannon_rate_bps(b + extra, snr)

    assert high >= low * (1 - 1e-12)  # flat to rounding in the power-limited regime
    assert high <= max_rate_bps(snr) * (1 + 1e-12)


def test_transfer_times() -> None:
    times = transfer_time_s(np.array([0.0, 0.0, 4e6, 4e6]), np.array([0.0, 1e6, 2e6, 0.0]))
    np.testing.assert_array_equal(times, [0.0, 0.0, 2.0, np.inf])
    np.testing.assert_allclose(share_time_s(2e6, 1e6, 3e6), 1.0)


def test_pool_modes() -> None:
    dl = np.array([1e6, 3e6])
    shared = pool_shares(PoolMode.SHARED, dl)
    separate = pool_shares(PoolMode.SEPARATE, dl, np.array([2e6, 2e6]))

    np.testing.assert_array_equal(shared.ul_hz, dl)
    np.testing.assert_array_equal(separate.ul_hz, [2e6, 2e6])
    np.testing.assert_array_equal(pool_shares(PoolMode.SEPARATE, dl).ul_hz, dl)
    with pytest.raises(ValueError, match=r"PoolMode\.SEPARATE"):
        pool_shares(PoolMode.SHARED, dl, dl)
    with pytest.raises(ValueError, match="shape"):
        pool_shares(PoolMode.SEPARATE, dl, np.ones(3))


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_solver_forms_are_the_share_time(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 16
    b = 10.0 ** rng.uniform(4.0, 7.5, n)
    bits_dl, bits_ul = 10.0 ** rng.uniform(2.0, 6.0, n), 10.0 ** rng.uniform(2.0, 6.0, n)
    s_dl, s_ul = 10.0 ** rng.uniform(5.0, 11.0, n), 10.0 ** rng.uniform(5.0, 11.0, n)
    base = rng.uniform(0.0, 1e-3, n)
    need_dl, need_ul = bits_dl * LN2, bits_ul * LN2

    t, inverse = time_and_inverse_slope(b, need_dl, need_ul, base, s_dl, s_ul)
    buffers = [np.empty((2, n)) for _ in range(4)]
    transfer_and_slope_into(b, np.stack([need_dl, need_ul]), np.stack([s_dl, s_ul]), *buffers)
    transfer, b_slope = buffers[2], buffers[3]

    reference = share_time_s(bits_dl, b, s_dl) + share_time_s(bits_ul, b, s_ul) + base
    np.testing.assert_allclose(t, reference, rtol=1e-13)
    for i in range(n):  # the scalar form: the same bits as the array form
        assert scalar_time(b[i], need_dl[i], need_ul[i], base[i], s_dl[i], s_ul[i]) == (t[i], inverse[i])
    np.testing.assert_allclose(transfer[0] + transfer[1] + base, t, rtol=1e-14)
    np.testing.assert_allclose(b / (b_slope[0] + b_slope[1]), inverse, rtol=1e-12)
    step = b * 1e-6  # the slope is the derivative of the share time
    numeric = (share_time_s(bits_dl, b - step, s_dl) + share_time_s(bits_ul, b - step, s_ul)
               - share_time_s(bits_dl, b + step, s_dl) - share_time_s(bits_ul, b + step, s_ul)) / (2 * step)
    np.testing.assert_allclose(1.0 / inverse, numeric, rtol=1e-5)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_solver_forms_are_the_share_time_under_shared_psd(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 16
    pool = float(10.0 ** rng.uniform(5.0, 8.0))
    b = pool * rng.uniform(0.01, 1.0, n)
    bits_dl, bits_ul = 10.0 ** rng.uniform(2.0, 6.0, n), 10.0 ** rng.uniform(2.0, 6.0, n)
    s_dl, s_ul = 10.0 ** rng.uniform(5.0, 11.0, n), 10.0 ** rng.uniform(5.0, 11.0, n)
    base = rng.uniform(0.0, 1e-3, n)
    need_dl, need_ul = bits_dl * LN2, bits_ul * LN2

    t, inverse = time_and_inverse_slope(b, need_dl, need_ul, base, s_dl, s_ul, pool)

    def reference(share: np.ndarray) -> np.ndarray:
        return dl_share_time_s(bits_dl, share, s_dl, pool) + share_time_s(bits_ul, share, s_ul) + base

    np.testing.assert_allclose(t, reference(b), rtol=1e-13)
    for i in range(n):  # the scalar form: the same bits as the array form
        assert scalar_time(b[i], need_dl[i], need_ul[i], base[i], s_dl[i], s_ul[i], pool) == (t[i], inverse[i])
    step = b * 1e-6
    numeric = (reference(b - step) - reference(b + step)) / (2 * step)
    np.testing.assert_allclose(1.0 / inverse, numeric, rtol=1e-5)


def test_the_memoised_downlink_nats_are_log1p_of_the_link_bit_for_bit() -> None:
    rng = np.random.default_rng(7)
    s_dl = 10.0 ** rng.uniform(5.0, 11.0, 8)
    pool = 2e7
    reference = log1p_array(s_dl / pool)

    first, again = psd_dl_nats(s_dl, pool), psd_dl_nats(s_dl.copy(), pool)  # a copy: memoised by value
    column = psd_dl_nats(s_dl[:, None], pool)  # (D, 1), as the gap's bound asks it
    other_pool = psd_dl_nats(s_dl, pool * 2.0)

    assert first.tobytes() == reference.tobytes() and again.tobytes() == reference.tobytes()
    assert column.shape == (8, 1) and column.tobytes() == reference.tobytes()
    assert other_pool.tobytes() == log1p_array(s_dl / (pool * 2.0)).tobytes()
    assert not first.flags.writeable  # shared between callers: none may write into it


@pytest.mark.parametrize("pool", [0.0, 3e7])
def test_the_time_alone_is_the_time_of_the_time_and_slope_bit_for_bit(pool: float) -> None:
    rng = np.random.default_rng(11)
    shape = (6, 9)  # loads x options, as the interval bound's searches ask it
    b = 10.0 ** rng.uniform(-6.0, 8.0, shape)
    need_dl, need_ul = 10.0 ** rng.uniform(2.0, 6.0, shape), 10.0 ** rng.uniform(2.0, 6.0, shape)
    base = rng.uniform(0.0, 1e-3, shape)
    s_dl, s_ul = 10.0 ** rng.uniform(5.0, 11.0, (6, 1)), 10.0 ** rng.uniform(5.0, 11.0, (6, 1))

    t, _ = time_and_inverse_slope(b, need_dl, need_ul, base, s_dl, s_ul, pool)

    assert time_only(b, need_dl, need_ul, base, s_dl, s_ul, pool).tobytes() == t.tobytes()
