"""The column-wise one-token latency equals the (n, k) array form it replaced, and batched replays equal exact ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.policy.steps import BatchDecision, OneTokenSteps, slot_groups
from wdmoe.radio.exactmath import LN2, log1p_array
from wdmoe.radio.one_token import OneTokenLatency, _row_sum, one_token_latency
from wdmoe.radio.rate import PoolMode, pool_shares, share_time_s, transfer_time_s
from wdmoe.sim.simulate import one_token_load, replay
from wdmoe.sim.synthesize import synthesize_trace


def reference_latency(steps: OneTokenSteps, decision: BatchDecision, tx_power_w: np.ndarray,
                      compute_power_w: np.ndarray, bs_tx_power_w: float, pool: PoolMode) -> OneTokenLatency:
    """The (n, k) array form of one_token_latency (commit 257a320), reductions along the slot axis; with the BS's
    power at a constant spectral density over steps.dl_psd_pool_hz, the DL rate b log2(1 + snr / pool) and the BS
    power b / pool of its whole."""
    groups = slot_groups(steps, decision.keep)
    active = groups.first
    bits = steps.bits_per_token[:, None]
    bits_dl = np.where(active, bits, 0.0)
    bits_ul = np.where(active, groups.pairs * bits, 0.0)
    shares = pool_shares(pool, decision.slot_share_hz)
    device = steps.slot_device
    psd_pool = steps.dl_psd_pool_hz
    if psd_pool > 0.0:
        nats = log1p_array(steps.snr_dl_per_hz / psd_pool)  # the DL SNR snr / pool on any share
        dl_rate = np.where(shares.dl_hz > 0.0, shares.dl_hz * nats * (1.0 / LN2), 0.0)
        dl_s = transfer_time_s(bits_dl, dl_rate)
        bs_power_w = bs_tx_power_w * (shares.dl_hz / psd_pool)
    else:
        dl_s = share_time_s(bits_dl, shares.dl_hz, steps.snr_dl_per_hz)
        bs_power_w = np.full(dl_s.shape, bs_tx_power_w)
    ul_s = share_time_s(bits_ul, shares.ul_hz, steps.snr_ul_per_hz)
    compute_s = np.where(active, groups.compute_s, 0.0)
    total = np.where(active, dl_s + compute_s + ul_s, 0.0)

    def per_slot(per_device: np.ndarray) -> np.ndarray:
        return per_device[device] if per_device.ndim == 1 else np.take_along_axis(per_device, device, axis=1)

    energy = ((per_slot(tx_power_w) * ul_s).sum(axis=1) + (per_slot(compute_power_w) * compute_s).sum(axis=1)
              + (bs_power_w * dl_s).sum(axis=1))
    return OneTokenLatency(steps.bs_time_s + total.max(axis=1, initial=0.0), bits_dl.sum(axis=1),
                           bits_ul.sum(axis=1), energy)


def random_batch(seed: int, n: int, k: int, devices: int, kept: float,
                 psd_pool_hz: float = 0.0) -> tuple[OneTokenSteps, BatchDecision]:
    rng = np.random.default_rng(seed)
    device = rng.integers(0, devices, (n, k))
    keep = rng.random((n, k)) < kept
    share = np.where(keep, 10.0 ** rng.uniform(4.0, 7.0, (n, k)), 0.0)
    share[rng.random((n, k)) < 0.05] = 0.0  # a kept slot with no band: infinite time
    bits = 10.0 ** rng.uniform(3.0, 5.0, n)
    bits[rng.random(n) < 0.05] = 0.0
    steps = OneTokenSteps(device, rng.random((n, k)), 10.0 ** rng.uniform(-5.0, -2.0, (n, k)),
                          10.0 ** rng.uniform(6.0, 11.0, (n, k)), 10.0 ** rng.uniform(6.0, 11.0, (n, k)), bits,
                          np.full(n, 1e7), rng.uniform(0.0, 1e-3, n), np.arange(n), devices, psd_pool_hz)
    decision = BatchDecision(keep, steps.weight, share, np.zeros(n, dtype=bool), device, devices)
    return steps, decision


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), k=st.integers(1, 9), devices=st.integers(1, 8),
       kept=st.sampled_from([0.4, 0.9, 1.0]), per_step_power=st.booleans(), separate=st.booleans(),
       psd_pool_hz=st.sampled_from([0.0, 1e7]))
def test_one_token_latency_equals_the_array_form_bit_for_bit(seed: int, k: int, devices: int, kept: float,
                                                             per_step_power: bool, separate: bool,
                                                             psd_pool_hz: float) -> None:
    """Also across the compacted columns (few active slots) and the full ones (_share_times), under either
    downlink power model."""
    n = 300
    steps, decision = random_batch(seed, n, k, devices, kept, psd_pool_hz)
    rng = np.random.default_rng(seed + 1)
    tx = rng.uniform(0.1, 2.0, (n, devices) if per_step_power else devices)
    compute = rng.uniform(1.0, 30.0, (n, devices) if per_step_power else devices)
    pool = PoolMode.SEPARATE if separate else PoolMode.SHARED

    with np.errstate(invalid="ignore"):  # inf * 0 W where a slot has no band: nan, in both forms
        got = one_token_latency(one_token_load(steps, decision), tx, compute, 20.0, pool)
        want = reference_latency(steps, decision, tx, compute, 20.0, pool)

    for field in ("layer_s", "bits_dl", "bits_ul", "energy_j"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.parametrize("k", range(1, 12))
def test_row_sum_is_numpys_sum_over_the_slot_axis(k: int) -> None:
    rng = np.random.default_rng(k)
    values = rng.random((5000, k)) * 10.0 ** rng.integers(-6, 6, (5000, k))
    values[rng.random((5000, k)) < 0.1] = -0.0
    got = _row_sum([np.ascontiguousarray(values[:, j]) for j in range(k)])
    want = values.sum(axis=1)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("coherence", ["step", "layer"])
@pytest.mark.parametrize("policy", ["topk", "wlr", "joint"])
def test_batched_replay_equals_exact_replay_bit_for_bit(policy: str, coherence: str) -> None:
    trace = synthesize_trace(np.random.default_rng(3), 4, 8, 2, 3, 2, 12, popularity=0.5, num_devices=4)
    scenario = Scenario.default(4).model_copy(update={"coherence": coherence})

    fast = replay(trace, scenario, make_policy(policy, theta=0.5), seed=7)
    exact = replay(trace, scenario, make_policy(policy, theta=0.5), seed=7, batched=False)

    for field in ("layer_s", "energy_j", "bits_dl", "bits_ul", "kept"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(exact, field), err_msg=field)
