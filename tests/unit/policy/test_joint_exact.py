"""The joint policy reaches the optimum of its own objective: checked against a brute force written here from
scratch (every keep mask, the min-max split of each by nested bisection on the common finish time), on random small
instances (decode steps with k up to 8, blocks of up to 3 tokens; both downlink power models) and adversarial ones
(a token's two experts on two slow devices, deep fades, ties), in both forms; and the heuristic's certified gap on
larger blocks is a true bound.

The brute force shares no code with the policy: its loads, roofline, Shannon times and split are its own numpy. The
guard is read as the policy reads it (kept weight summed in slot order >= rho x the top-k weight summed in slot
order), so that a tie at the guard is decided alike."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from wdmoe.config import Scenario
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.base import LayerState
from wdmoe.policy.evaluate import layer_breakdown
from wdmoe.policy.selection import one_token_steps
from wdmoe.radio.channel import sample_links
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.link import LinkState
from wdmoe.sim.simulate import make_decider
from wdmoe.sim.synthesize import synthesize_trace

RTOL = 1e-9


def _time(b: np.ndarray, tokens: np.ndarray, pairs: np.ndarray, compute: np.ndarray, state: LayerState
          ) -> np.ndarray:
    """Seconds of each device on share b (broadcast over a leading axis): Shannon DL + compute + UL."""
    bits, link = state.bits_per_token, state.link
    pool = link.dl_psd_pool_hz
    with np.errstate(divide="ignore", invalid="ignore"):
        rate_dl = b * np.log1p(link.snr_dl_per_hz / (pool if pool > 0.0 else b)) / np.log(2.0)
        rate_ul = b * np.log1p(link.snr_ul_per_hz / b) / np.log(2.0)
        dl = np.where(tokens > 0, tokens * bits / rate_dl, 0.0)
        ul = np.where(pairs > 0, pairs * bits / rate_ul, 0.0)
    return dl + compute + ul


def _minmax_time(tokens: np.ndarray, pairs: np.ndarray, compute: np.ndarray, state: LayerState) -> np.ndarray:
    """(L,) min over splits of the slowest active device, for L loads (L, D): bisection on the finish time T; for
    each T, each device's least share by bisection on log b; T is feasible when the shares fit in the band."""
    budget = state.bandwidth_hz
    active = pairs > 0
    if state.bits_per_token == 0.0:
        return np.where(active, compute, 0.0).max(axis=1)
    full = np.broadcast_to(budget, tokens.shape)
    lo_t = np.where(active, _time(full, tokens, pairs, compute, state), 0.0).max(axis=1)
    hi_t = lo_t * 2.0 + 1e-12
    for _ in range(200):  # grow until the equal split... or any T fits
        fits = _fits(hi_t, tokens, pairs, compute, state)
        if fits.all():
            break
        hi_t = np.where(fits, hi_t, hi_t * 4.0)
    for _ in range(64):
        mid = 0.5 * (lo_t + hi_t)
        fits = _fits(mid, tokens, pairs, compute, state)
        lo_t, hi_t = np.where(fits, lo_t, mid), np.where(fits, mid, hi_t)
    return hi_t


def _fits(target: np.ndarray, tokens: np.ndarray, pairs: np.ndarray, compute: np.ndarray,
          state: LayerState) -> np.ndarray:
    budget = state.bandwidth_hz
    active = pairs > 0
    log_lo, log_hi = np.full(tokens.shape, np.log(budget) - 60.0), np.full(tokens.shape, np.log(budget))
    t = target[:, None]
    ok_full = _time(np.full(tokens.shape, budget), tokens, pairs, compute, state) <= t
    for _ in range(58):
        mid = 0.5 * (log_lo + log_hi)
        fast = _time(np.exp(mid), tokens, pairs, compute, state) <= t
        log_lo, log_hi = np.where(fast, log_lo, mid), np.where(fast, mid, log_hi)
    need = np.where(active, np.where(ok_full, np.exp(log_hi), np.inf), 0.0)
    return need.sum(axis=1) <= budget


def brute_force(policy: JointSelectionBandwidth, state: LayerState) -> tuple[float, np.ndarray]:
    """(best metric, a best keep mask) over every feasible keep mask."""
    weight = state.topk_weight.astype(float)
    t, k = weight.shape
    device = state.expert_device[state.topk_index]
    p = state.profiles
    masks, kept = [], []
    for bits in itertools.product((False, True), repeat=t * k):
        keep = np.array(bits).reshape(t, k)
        ok = True
        total_w = 0.0
        for j in range(t):
            kept_j = total_j = 0.0
            for s in range(k):
                total_j += weight[j, s]
                if keep[j, s]:
                    kept_j += weight[j, s]
            ok &= bool(keep[j].any()) and kept_j >= policy.rho * total_j
            total_w += kept_j
        if ok:
            masks.append(keep)
            kept.append(total_w)
    masks_a = np.array(masks)  # (M, T, k)
    num_devices = state.num_devices
    tokens = np.zeros((len(masks), num_devices))
    pairs = np.zeros((len(masks), num_devices))
    compute = np.zeros((len(masks), num_devices))
    for i, keep in enumerate(masks_a):
        for d in range(num_devices):
            on = keep & (device == d)
            tokens[i, d] = on.any(axis=1).sum()
            pairs[i, d] = on.sum()
            for e in np.unique(state.topk_index[on]):
                n = float((state.topk_index[on] == e).sum())
                compute[i, d] += max(n * state.expert_flops_per_token / p.flops_per_s[d],
                                     state.expert_weight_bytes / p.mem_bytes_per_s[d]) + p.overhead_s[d]
    load = np.concatenate([tokens, pairs, compute], axis=1)
    unique, back = np.unique(load, axis=0, return_inverse=True)  # masks of equal load: one split
    d = num_devices
    layer = state.bs_time_s + _minmax_time(unique[:, :d], unique[:, d:2 * d], unique[:, 2 * d:], state)[back.ravel()]
    kept_a = np.array(kept)
    metric = kept_a / layer if policy.form == "ratio" else kept_a - policy.lam * layer
    best = int(np.argmax(metric))
    return float(metric[best]), masks_a[best]


def policy_metric(policy: JointSelectionBandwidth, state: LayerState) -> float:
    """The metric of the policy's decision under the radio model (its own split, layer_breakdown's time)."""
    decision = policy.decide(state)
    kept = float(np.where(decision.keep, state.topk_weight, 0.0).sum())
    layer_s = layer_breakdown(state, decision).layer_s
    return kept / layer_s if policy.form == "ratio" else kept - policy.lam * layer_s


def make_state(rng: np.random.Generator, tokens: int, k: int, devices: int, experts: int | None = None,
               kind: str = "random") -> LayerState:
    experts = experts or max(k, int(rng.integers(k, 2 * k + 2)))
    index = np.stack([rng.permutation(experts)[:k] for _ in range(tokens)])
    weight = rng.dirichlet(np.ones(k) * 0.7, size=tokens) * rng.choice([1.0, 2.5])
    snr_dl = 10.0 ** rng.uniform(6.0, 11.0, devices)
    snr_ul = 10.0 ** rng.uniform(5.0, 10.0, devices)
    names = list(PRESETS)
    chosen = [names[i] for i in rng.integers(0, len(names), devices)]
    expert_device = rng.integers(0, devices, experts)
    if kind == "slow-pair" and devices >= 3 and k >= 2:
        # the token's two heaviest experts sit on two slow devices of the same speed
        slow = rng.choice(devices, 2, replace=False)
        expert_device[index[0, 0]], expert_device[index[0, 1]] = slow
        snr_dl[slow], snr_ul[slow] = 10.0 ** 4.5, 10.0 ** 3.5
        chosen[slow[0]] = chosen[slow[1]] = "jetson-orin-nano" if "jetson-orin-nano" in PRESETS else names[0]
    if kind == "fade":
        faded = rng.random(devices) < 0.4
        snr_dl[faded] *= 10.0 ** rng.uniform(-5.0, -3.0, int(faded.sum()))
        snr_ul[faded] *= 10.0 ** rng.uniform(-5.0, -3.0, int(faded.sum()))
    if kind == "tie":
        weight = np.full((tokens, k), 1.0 / k)
        snr_dl[:] = snr_dl[0]
        snr_ul[:] = snr_ul[0]
        chosen = [chosen[0]] * devices
    ones = np.ones(devices)
    band = float(10.0 ** rng.uniform(5.5, 7.5))
    # both downlink models: the BS's power at a constant spectral density over the band, or full per downlink
    link = LinkState(ones * 100.0, ones * 100.0, ones, ones, snr_dl, snr_ul,
                     dl_psd_pool_hz=band if rng.random() < 0.5 else 0.0)
    profiles = DeviceProfiles.from_profiles([PRESETS[n] for n in chosen])
    return LayerState(index, weight, expert_device, link, profiles,
                      expert_flops_per_token=float(10.0 ** rng.uniform(7.0, 9.0)),
                      expert_weight_bytes=float(10.0 ** rng.uniform(6.5, 8.5)),
                      bits_per_token=float(10.0 ** rng.uniform(3.0, 5.0)),
                      bandwidth_hz=band, bs_time_s=float(rng.uniform(0.0, 1e-3)))


def policies(rng: np.random.Generator) -> list[JointSelectionBandwidth]:
    rho = float(rng.choice([0.0, 0.2, 0.5, 0.8, 1.0]))
    return [JointSelectionBandwidth(rho=rho), JointSelectionBandwidth(form="lagrangian", rho=rho,
                                                                      lam=float(10.0 ** rng.uniform(1.0, 4.0)))]


def assert_optimal(policy: JointSelectionBandwidth, state: LayerState) -> None:
    best, _ = brute_force(policy, state)
    ours = policy_metric(policy, state)
    scale = max(abs(best), 1e-12)
    assert ours >= best - RTOL * scale, (policy, ours, best)
    assert ours <= best + RTOL * scale, (policy, ours, best)  # the brute force's split is the optimum


@pytest.mark.parametrize("chunk", range(5))
def test_decode_steps_reach_the_brute_force_optimum(chunk: int) -> None:
    """60 one-token instances per chunk (300), k 1..8 on 1..8 devices, both forms."""
    rng = np.random.default_rng(100 + chunk)
    for _ in range(60):
        k = int(rng.integers(1, 9))
        state = make_state(rng, 1, k, int(rng.integers(1, 9)), kind=str(rng.choice(["random", "fade", "tie"])))
        for policy in policies(rng):
            assert_optimal(policy, state)


@pytest.mark.parametrize("chunk", range(2))
def test_decode_steps_with_several_slots_per_device_reach_the_brute_force_optimum(chunk: int) -> None:
    """50 one-token instances per chunk (100) where the staged search of policy.joint_decode has the most to prune:
    k 5..8 on 3..8 devices holding two experts each (devices share the token's slots, up to 255 count vectors,
    splits of three or more devices), every adversarial kind, both forms."""
    rng = np.random.default_rng(300 + chunk)
    for _ in range(50):
        devices = int(rng.integers(3, 9))
        state = make_state(rng, 1, int(rng.integers(5, 9)), devices, experts=max(8, 2 * devices),
                           kind=str(rng.choice(["random", "fade", "tie", "slow-pair"])))
        for policy in policies(rng):
            assert_optimal(policy, state)


@pytest.mark.parametrize("chunk", range(5))
def test_small_blocks_reach_the_brute_force_optimum(chunk: int) -> None:
    """50 blocks per chunk (250): 2..3 tokens, k 1..4 (at most 12 pairs), 1..4 devices, both forms."""
    rng = np.random.default_rng(200 + chunk)
    done = 0
    while done < 50:
        tokens, k = int(rng.integers(2, 4)), int(rng.integers(1, 5))
        if tokens * k > 12:
            continue
        state = make_state(rng, tokens, k, int(rng.integers(1, 5)), kind=str(rng.choice(["random", "fade", "tie"])))
        for policy in policies(rng):
            assert_optimal(policy, state)
        done += 1


def test_two_experts_on_two_slow_devices_are_dropped_together() -> None:
    """The case the old one-at-a-time heuristic missed: dropping either slow expert alone does not shorten the
    layer (the other slow device still sets it), dropping both does. The optimum drops both; so does the policy."""
    rng = np.random.default_rng(7)
    found = 0
    for _ in range(400):
        if found == 6:
            break
        state = make_state(rng, 1, 4, 5, kind="slow-pair")
        policy = JointSelectionBandwidth(rho=0.2)
        _, mask = brute_force(policy, state)
        if mask[0, 0] or mask[0, 1]:
            continue
        found += 1
        assert_optimal(policy, state)
        assert not policy.decide(state).keep[0, :2].any()
    assert found == 6


@pytest.mark.parametrize("kind", ["slow-pair", "fade", "tie"])
def test_adversarial_cases_and_the_batched_form(kind: str) -> None:
    rng = np.random.default_rng({"slow-pair": 1, "fade": 2, "tie": 3}[kind])
    states = [make_state(rng, 1, int(rng.integers(2, 5)), 4, experts=8, kind=kind) for _ in range(40)]
    for i, state in enumerate(states):  # one band per batch (OneTokenSteps holds one downlink model)
        states[i] = dataclasses.replace(state, bandwidth_hz=1e7, link=dataclasses.replace(
            state.link, dl_psd_pool_hz=1e7 if state.link.dl_psd_pool_hz > 0.0 else 0.0))
    for shape in {(s.topk_index.shape[1], s.link.dl_psd_pool_hz > 0.0) for s in states}:
        same_k = [s for s in states if (s.topk_index.shape[1], s.link.dl_psd_pool_hz > 0.0) == shape]
        for policy in policies(rng):
            for state in same_k:
                assert_optimal(policy, state)
            batch = policy.decide_steps(one_token_steps(same_k))
            assert batch is not None
            for i, state in enumerate(same_k):
                if batch.fallback[i]:
                    continue
                reference = policy.decide(state)
                np.testing.assert_array_equal(batch.keep[i], reference.keep[0])
                np.testing.assert_array_equal(batch.weight[i], reference.weight[0])
                np.testing.assert_array_equal(batch.bandwidth_hz[i], reference.bandwidth_hz)


def test_ties_are_broken_the_same_way_in_any_slot_order() -> None:
    """Identical devices and equal weights: many masks tie; the decision keeps the earlier slots, per state."""
    rng = np.random.default_rng(11)
    state = make_state(rng, 1, 4, 4, experts=4, kind="tie")
    state = dataclasses.replace(state, expert_device=np.arange(4), topk_index=np.array([[0, 1, 2, 3]]))
    policy = JointSelectionBandwidth(rho=0.5)
    keep = policy.decide(state).keep[0]
    assert keep.sum() >= 2
    assert (np.flatnonzero(keep) == np.arange(keep.sum())).all()  # a prefix: the earlier slots win the ties


@pytest.mark.parametrize("seed", range(12))
def test_the_certified_gap_bounds_the_optimum(seed: int) -> None:
    """Forced onto the heuristic (exact_masks=0), a small block's decision carries a gap g that bounds the true
    optimum: M* <= M / (1 - g) (ratio) or M* <= M + g |UB| with UB >= M* (lagrangian: M* - M <= g |UB|)."""
    rng = np.random.default_rng(300 + seed)
    for _ in range(6):
        tokens, k = int(rng.integers(2, 4)), int(rng.integers(1, 4))
        state = make_state(rng, tokens, k, int(rng.integers(1, 5)), kind=str(rng.choice(["random", "fade"])))
        for exact in policies(rng):
            heuristic = dataclasses.replace(exact, exact_masks=0)
            gap = heuristic.decide(state).optimality_gap
            assert gap is not None and gap >= 0.0
            best, _ = brute_force(exact, state)
            ours = policy_metric(heuristic, state)
            assert best <= implied_upper(ours, gap) + 1e-9 * max(abs(best), 1e-12)


def implied_upper(metric: float, gap: float) -> float:
    """The UB with UB - M = g |UB| (the gap's definition): M / (1 - g) for M >= 0, M / (1 + g) below."""
    if gap >= 1.0:
        return np.inf
    return metric / (1.0 - gap) if metric >= 0.0 else metric / (1.0 + gap)


@pytest.mark.parametrize("tokens", [128, 512])
def test_the_certified_gap_is_within_one_percent_on_the_default_scenario(tokens: int) -> None:
    """Prefill blocks of a Mixtral-shaped trace (8 experts, top-2) over the default scenario's 8 devices, each layer on
    its own channel draw: the heuristic's decision carries its gap, and the gap is at most 1% in both forms."""
    scenario = Scenario.default(8)
    trace = synthesize_trace(np.random.default_rng(0), 8, 8, 2, 1, tokens, 1, popularity=0.5, num_devices=8)
    rng = np.random.default_rng(1)
    for policy in (JointSelectionBandwidth(), JointSelectionBandwidth(form="lagrangian", lam=1e3)):
        decider = make_decider(trace, scenario, policy, 0)
        for layer in range(0, 8, 2):
            rows = trace.rows(0, layer)
            state = decider.state_on(sample_links(rng, decider.radio), layer, trace.topk_index[rows],
                                     trace.topk_weight[rows], None)
            gap = policy.decide(state).optimality_gap
            assert gap is not None and 0.0 <= gap <= 0.01, (policy.form, layer, gap)
