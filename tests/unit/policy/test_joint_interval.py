"""The interval certificate of the joint policy (policy.joint_interval) is a true bound: its knapsack equals an
enumeration, its least shares bound the radio model's from below and tightly, and its UB is >= the brute-force
optimum (tests/unit/policy/test_joint_exact.py's, written from scratch) on random small blocks, with the heuristic's
decision <= the optimum <= UB; on the default scenario it brings 32- and 64-token blocks within 1%."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from tests.unit.policy.test_joint_exact import brute_force, make_state, policies, policy_metric
from wdmoe.config import Scenario
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.joint_counts import mandatory_pairs
from wdmoe.policy.joint_gap import device_tables
from wdmoe.policy.joint_interval import LeastShares, interval_bound, knapsack, knapsack_dual, least_share
from wdmoe.radio.channel import sample_links
from wdmoe.radio.exactmath import LN2
from wdmoe.radio.rate import time_and_inverse_slope
from wdmoe.sim.simulate import make_decider
from wdmoe.sim.synthesize import synthesize_trace


@pytest.mark.parametrize("seed", range(40))
def test_the_knapsack_equals_an_enumeration(seed: int) -> None:
    rng = np.random.default_rng(seed)
    devices, options = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    share = np.sort(rng.uniform(0.0, 1.0, (devices, options)), axis=1)
    share[rng.random(share.shape) < 0.1] = np.inf  # a load that cannot finish on any share
    gain = np.cumsum(rng.uniform(0.0, 1.0, (devices, options)), axis=1)
    for d in range(devices):
        gain[d, int(rng.integers(1, options + 1)):] = -np.inf  # fewer optional pairs on this device
    budget = float(rng.uniform(0.2, 2.0))
    best, best_x = -np.inf, None
    for x in itertools.product(range(options), repeat=devices):
        total_share = sum(share[d, x[d]] for d in range(devices))
        value = sum(gain[d, x[d]] for d in range(devices))
        if total_share <= budget and value > best:
            best, best_x = value, x
    value, chosen = knapsack(share, gain, budget)
    dual, _ = knapsack_dual(share, gain, budget)  # the bound that serves large fronts: never below the optimum
    if best_x is None:
        assert value == -np.inf and chosen is None
        return
    assert best - 1e-12 * abs(best) <= dual <= best + np.where(np.isfinite(gain), gain, 0.0).max() + 1e-9
    assert chosen is not None
    assert value == pytest.approx(best, rel=1e-12)
    assert sum(share[d, chosen[d]] for d in range(devices)) <= budget
    assert sum(gain[d, chosen[d]] for d in range(devices)) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_the_least_share_bounds_the_radio_models_from_below_and_tightly(seed: int) -> None:
    rng = np.random.default_rng(50 + seed)
    state = make_state(rng, 4, 3, 4, kind=str(rng.choice(["random", "fade"])))
    policy = JointSelectionBandwidth(rho=0.5)
    gain, tokens, pairs, compute, _, _ = device_tables(state, mandatory_pairs(policy, state.topk_weight))
    link, need = state.link, state.bits_per_token * LN2
    dl, ul = link.snr_dl_per_hz[:, None], link.snr_ul_per_hz[:, None]

    def time(b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return time_and_inverse_slope(b, need * tokens, need * pairs, compute, dl, ul, link.dl_psd_pool_hz)[0]

    full = time(np.full(tokens.shape, state.bandwidth_hz))
    loaded = (pairs > 0) & np.isfinite(gain)
    for tau in np.quantile(full[loaded & np.isfinite(full)], [0.1, 0.5, 0.9]):
        share = least_share(state, float(tau), tokens, pairs, compute)
        assert (share[~(pairs > 0)] == 0.0).all()
        late = loaded & ~(full <= tau)
        assert np.isinf(share[late]).all()  # the whole band is too little
        fits = loaded & (full <= tau) & (share > 0.0)
        assert (time(np.where(fits, share, 1.0))[fits] >= tau * (1.0 - 1e-12)).all()  # a lower bound
        assert (time(np.where(fits, share * (1.0 + 1e-6), 1.0))[fits] <= tau).all()  # and a tight one


@pytest.mark.parametrize("seed", range(8))
def test_the_tabled_least_shares_are_the_reference_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(70 + seed)
    state = make_state(rng, int(rng.integers(3, 40)), 3, 4, kind=str(rng.choice(["random", "fade"])))
    policy = JointSelectionBandwidth(rho=0.5)
    _, tokens, pairs, compute, _, _ = device_tables(state, mandatory_pairs(policy, state.topk_weight))
    tabled = LeastShares(state, tokens, pairs, compute, levels=8)
    t_full = tabled.t_full[np.isfinite(tabled.t_full) & (pairs > 0)]
    taus = [*np.quantile(t_full, [0.0, 0.2, 0.5, 0.9, 1.0]), float(t_full.min()) * 0.5, float(t_full.max()) * 2.0]

    for tau in taus:  # the bisection's every outcome: late everywhere, nowhere, and in between
        assert tabled(float(tau)).tobytes() == least_share(state, float(tau), tokens, pairs, compute).tobytes()
    assert len(tabled.table) == 8 and tabled.table[7].shape == (128, tokens.size)


@pytest.mark.parametrize("seed", range(10))
def test_the_interval_bound_holds_the_brute_force_optimum(seed: int) -> None:
    """decision <= optimum <= UB on random small blocks (adversarial kinds included), from the heuristic's
    metric and from a deliberately poor one (the router's top-k), which makes the intervals refine further."""
    rng = np.random.default_rng(700 + seed)
    for _ in range(4):
        tokens, k = int(rng.integers(2, 4)), int(rng.integers(1, 4))
        kind = str(rng.choice(["random", "fade", "slow-pair", "tie"]))
        state = make_state(rng, tokens, k, int(rng.integers(1, 5)), kind=kind)
        for exact in policies(rng):
            best, _ = brute_force(exact, state)
            ours = policy_metric(dataclasses.replace(exact, exact_masks=0), state)
            scale = max(abs(best), 1e-12)
            assert ours <= best + 1e-9 * scale
            top = exact.solve(state).metric_history[0]
            for metric in (ours, top):
                bound = interval_bound(exact, state, metric, target=0.0, max_evaluations=24)
                if bound is None:
                    continue
                assert bound.upper >= best - 1e-9 * scale, (kind, exact, metric, bound, best)


@pytest.mark.parametrize("tokens", [32, 64])
def test_small_prefill_blocks_are_certified_within_one_percent_on_the_default_scenario(tokens: int) -> None:
    """The blocks where the decomposition alone left up to 3.2% (ratio form): within 1% in both forms."""
    scenario = Scenario.default(8)
    trace = synthesize_trace(np.random.default_rng(0), 8, 8, 2, 1, tokens, 1, popularity=0.5, num_devices=8)
    rng = np.random.default_rng(1)
    for policy in (JointSelectionBandwidth(), JointSelectionBandwidth(form="lagrangian", lam=1e3)):
        decider = make_decider(trace, scenario, policy, 0)
        for layer in range(8):
            rows = trace.rows(0, layer)
            state = decider.state_on(sample_links(rng, decider.radio), layer, trace.topk_index[rows],
                                     trace.topk_weight[rows], None)
            gap = policy.decide(state).optimality_gap
            assert gap is not None and 0.0 <= gap <= 0.01, (policy.form, layer, gap)
