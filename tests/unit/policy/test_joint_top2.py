"""The joint policy's top-2 fast path (joint_top2) decides bit for bit what the generic batched search
(joint_pairs) and the per-state policy decide, degenerate steps included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.policy.states import random_state
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.joint_pairs import decide_two_devices as decide_rounds
from wdmoe.policy.joint_top2 import decide_top2
from wdmoe.policy.selection import one_token_steps
from wdmoe.policy.steps import BatchDecision, OneTokenSteps

# dead links (zero SNR) give inf and nan times: the generic search warns on them, and so would the fast path
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

POLICIES = [JointSelectionBandwidth(), JointSelectionBandwidth(rho=0.0), JointSelectionBandwidth(rho=1.0),
            JointSelectionBandwidth(rho=0.3, max_iter=1), JointSelectionBandwidth(max_iter=0),
            JointSelectionBandwidth(form="lagrangian", lam=0.0), JointSelectionBandwidth(form="lagrangian", lam=300.0),
            JointSelectionBandwidth(form="lagrangian", lam=3e4, rho=0.2),
            JointSelectionBandwidth(form="lagrangian", lam=1e7, rho=0.7)]


def random_steps(seed: int, n: int, devices: int = 4, blocks: int = 40) -> OneTokenSteps:
    """n top-2 steps over `blocks` channel blocks (equal key: equal links, payload and band, as in a replay), with
    degenerate cases: both slots on one device, dead (zero-SNR) links, zero and tied weights, equal rooflines, no
    BS time."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, blocks, n)
    snr = 10.0 ** rng.uniform(5.0, 11.0, (2, blocks, devices))  # DL, UL per block and device
    snr[rng.random(snr.shape) < 0.05] = 0.0
    bits = (10.0 ** rng.uniform(3.0, 5.0, blocks))[block]
    band = (10.0 ** rng.uniform(5.0, 8.0, blocks))[block]
    roof_d = np.where(rng.random(devices) < 0.3, 1e-3, 10.0 ** rng.uniform(-5.0, -2.0, devices))
    device = rng.integers(0, devices, (n, 2))
    device[:, 1] = np.where(rng.random(n) < 0.25, device[:, 0], device[:, 1])  # more shared devices
    weight = rng.random((n, 2))
    kind = rng.integers(0, 6, n)
    weight[kind == 1] = 0.5  # ties
    weight[kind == 2, 0] = 0.0
    weight[kind == 3, 1] = 0.0
    weight[kind == 4] = 0.0
    weight[kind == 5] = rng.choice([0.25, 0.75], (int((kind == 5).sum()), 2))  # 1:3 splits and ties
    bs = np.where(rng.random(n) < 0.2, 0.0, rng.uniform(0.0, 1e-3, n))
    rows = block[:, None] * devices + device
    return OneTokenSteps(device, weight, roof_d[device], snr[0].ravel()[rows], snr[1].ravel()[rows], bits, band, bs,
                         block, devices)


def assert_bitwise_equal(a: BatchDecision, b: BatchDecision) -> None:
    np.testing.assert_array_equal(a.keep, b.keep)
    np.testing.assert_array_equal(a.fallback, b.fallback)
    for x, y in ((a.weight, b.weight), (a.slot_share_hz, b.slot_share_hz)):
        assert x.dtype == y.dtype == np.float64 and x.shape == y.shape
        np.testing.assert_array_equal(x.view(np.uint64), y.view(np.uint64))  # nan and -0.0 included


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.form}-{p.lam}-{p.rho}-{p.max_iter}")
@pytest.mark.parametrize("seed", range(4))
def test_top2_equals_the_generic_search_bit_for_bit(policy: JointSelectionBandwidth, seed: int) -> None:
    steps = random_steps(seed, 3000)
    fast, generic = decide_top2(steps, policy), decide_rounds(steps, policy)

    assert_bitwise_equal(fast, generic)
    distinct = steps.subset(np.flatnonzero(steps.slot_device[:, 0] != steps.slot_device[:, 1]))  # no same-device
    assert_bitwise_equal(decide_top2(distinct, policy), decide_rounds(distinct, policy))
    if policy.max_iter >= 1 and policy.rho < 1.0 and policy.lam > 0.0:
        assert 0 < (~fast.keep).sum(axis=1).astype(bool).sum() < steps.size  # both outcomes are exercised


def test_the_cases_are_exercised() -> None:
    steps = random_steps(0, 3000)
    same = steps.slot_device[:, 0] == steps.slot_device[:, 1]
    dead = (steps.snr_dl_per_hz == 0.0) | (steps.snr_ul_per_hz == 0.0)
    assert same.any() and (~same).any() and dead[same].any() and dead[~same].any()
    assert (steps.weight == 0.0).any() and (steps.weight[:, 0] == steps.weight[:, 1]).any()
    batch = decide_top2(steps, JointSelectionBandwidth())
    assert batch.fallback.any() or np.isfinite(batch.slot_share_hz).all()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), devices=st.integers(1, 8), n=st.integers(1, 300),
       policy=st.sampled_from(POLICIES))
def test_top2_equals_the_generic_search_on_random_batches(seed: int, devices: int, n: int,
                                                          policy: JointSelectionBandwidth) -> None:
    steps = random_steps(seed, n, devices, blocks=max(n // 4, 1))
    assert_bitwise_equal(decide_top2(steps, policy), decide_rounds(steps, policy))


def test_decide_steps_dispatches_top2_and_keeps_zero_payload_steps_for_the_fallback() -> None:
    steps = random_steps(5, 500)
    bits = steps.bits_per_token.copy()
    bits[::7] = 0.0
    steps = OneTokenSteps(steps.slot_device, steps.weight, steps.roof_s, steps.snr_dl_per_hz, steps.snr_ul_per_hz,
                          bits, steps.bandwidth_hz, steps.bs_time_s, np.arange(steps.size), steps.num_devices)
    policy = JointSelectionBandwidth()
    batch = policy.decide_steps(steps)
    assert batch is not None
    ok = np.flatnonzero(bits > 0.0)

    assert batch.fallback[bits == 0.0].all()
    assert_bitwise_equal(decide_top2(steps.subset(ok), policy), decide_rounds(steps.subset(ok), policy))
    np.testing.assert_array_equal(batch.keep[ok], decide_rounds(steps.subset(ok), policy).keep)


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: f"{p.form}-{p.lam}-{p.rho}-{p.max_iter}")
@pytest.mark.parametrize("devices", [1, 2, 5])
def test_top2_equals_the_per_state_policy(policy: JointSelectionBandwidth, devices: int) -> None:
    states = [random_state(i, 1, 2, num_experts=6, num_devices=devices, weight_scale=(1.0, 2.5)[i % 2])
              for i in range(150)]
    batch = policy.decide_steps(one_token_steps(states))

    assert batch is not None and not batch.fallback.any()
    for i, state in enumerate(states):
        reference = policy.decide(state)
        np.testing.assert_array_equal(batch.keep[i], reference.keep[0])
        np.testing.assert_array_equal(batch.weight[i], reference.weight[0])
        np.testing.assert_array_equal(batch.bandwidth_hz[i], reference.bandwidth_hz)
