"""Policy decision time per layer step, and the min-max bandwidth solver against cvxpy, side by side in one run.

For decode (1 token) and prefill (512 tokens) with 8 and 64 devices (E = D experts, top-2, Mixtral-sized experts
and activations, a 20 MHz band, UMa-like SNRs), each policy's `decide` is timed (best of 15 repeats of the mean
CPU time over many calls). Then the min-max bandwidth problem of the active devices of the decode instance with
8 devices (2 active) and of each prefill instance is given to cvxpy (exponential cone, CLARABEL, bandwidth in
MHz and time in ms for its accuracy) and to `minmax_split`, timed in alternating slices. The report gives the
speed ratios against a re-solve of the built cvxpy problem (its fastest path, as with parameters re-solved on
new numbers) and against build + solve, and the relative gap of the optimal layer times.
`minmax_speedup_vs_cvxpy` is the smallest re-solve ratio, `minmax_max_rel_gap` the largest gap.

    python bench/policy_speed.py [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time
import timeit
import warnings
from collections.abc import Callable

import numpy as np

from wdmoe.policy import (
    FastestDevices,
    JointSelectionBandwidth,
    MinMaxBandwidth,
    RandomDrop,
    TopK,
    WLRThreshold,
    minmax_split,
)
from wdmoe.policy.base import LayerState, Policy
from wdmoe.policy.selection import DeviceCosts, device_costs
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.link import LinkState
from wdmoe.radio.rate import share_time_s

POLICIES: list[Policy] = [TopK(), WLRThreshold(0.5), MinMaxBandwidth(), JointSelectionBandwidth(),
                          FastestDevices(), RandomDrop(0.3, seed=0)]
PREFILL_TOKENS = 512


def make_state(num_tokens: int, num_devices: int, seed: int = 0) -> LayerState:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(num_tokens, num_devices))
    index = np.argsort(-logits, axis=1)[:, :2]  # (T, 2)
    top = np.take_along_axis(logits, index, axis=1)
    weight = np.exp(top - top.max(axis=1, keepdims=True))
    weight /= weight.sum(axis=1, keepdims=True)
    # UMa-like: UE 23 dBm and BS 43 dBm over 128.1 + 37.6 log10(d / km), d in 50..500 m, Rayleigh, NF 9 dB
    distance_km = rng.uniform(0.05, 0.5, num_devices)
    gain = 10.0 ** (-(128.1 + 37.6 * np.log10(distance_km)) / 10.0)
    noise_w_per_hz = 10.0 ** ((-174.0 + 9.0 - 30.0) / 10.0)
    fading_dl, fading_ul = rng.exponential(1.0, num_devices), rng.exponential(1.0, num_devices)
    link = LinkState(distance_km * 1e3, np.zeros(num_devices), fading_dl, fading_ul,
                     20.0 * gain * fading_dl / noise_w_per_hz, 0.2 * gain * fading_ul / noise_w_per_hz)
    names = ["jetson-agx-orin", "jetson-orin-nx", "jetson-orin-nano", "rtx4090-edge"]
    profiles = DeviceProfiles.from_profiles([PRESETS[names[k % len(names)]] for k in range(num_devices)])
    return LayerState(index, weight, np.arange(num_devices), link, profiles, expert_flops_per_token=0.352e9,
                      expert_weight_bytes=0.352e9, bits_per_token=4096 * 16, bandwidth_hz=20e6, bs_time_s=1e-4)


def time_call(fn: Callable[[], object], budget_s: float = 0.3, repeats: int = 15) -> float:
    """Best of `repeats` repeats of the mean CPU seconds per call (process time, so that other processes on a
    shared machine do not count), each repeat about budget_s / repeats long."""
    once = min(timeit.repeat(fn, number=1, repeat=3, timer=time.process_time))
    number = max(1, int(budget_s / repeats / max(once, 1e-6)))
    return min(timeit.repeat(fn, number=number, repeat=repeats, timer=time.process_time)) / number


def time_side_by_side(ours: Callable[[], object], theirs: Callable[[], object], repeats: int = 25,
                      slice_s: float = 0.02) -> tuple[float, float]:
    """Best-of-repeats mean CPU seconds per call of two functions, timed in alternating slices of about slice_s,
    so that both see the same conditions of a shared machine."""
    counts = []
    for fn in (ours, theirs):
        once = min(timeit.repeat(fn, number=1, repeat=3, timer=time.process_time))
        counts.append(max(1, int(slice_s / max(once, 1e-6))))
    best = [math.inf, math.inf]
    for _ in range(repeats):
        for side, fn in enumerate((ours, theirs)):
            spent = timeit.timeit(fn, number=counts[side], timer=time.process_time) / counts[side]
            best[side] = min(best[side], spent)
    return best[0], best[1]


def cvxpy_minmax(bits_dl: np.ndarray, bits_ul: np.ndarray, compute_s: np.ndarray, snr_dl: np.ndarray,
                 snr_ul: np.ndarray, budget_hz: float) -> tuple[Callable[[], float], Callable[[], float]]:
    """(build and solve, solve the built problem again): each returns the optimal layer time in seconds."""
    import cvxpy as cp

    def build() -> tuple[cp.Problem, cp.Variable]:
        b = cp.Variable(bits_dl.shape[0], nonneg=True)  # MHz
        t = cp.Variable()  # ms
        rate_dl = -cp.rel_entr(b, b + snr_dl / 1e6) / math.log(2.0)  # Mbit/s = b log2(1 + s / b)
        rate_ul = -cp.rel_entr(b, b + snr_ul / 1e6) / math.log(2.0)
        finish = (cp.multiply(bits_dl / 1e3, cp.inv_pos(rate_dl)) + cp.multiply(bits_ul / 1e3, cp.inv_pos(rate_ul))
                  + compute_s * 1e3)  # kbit / (Mbit/s) = ms
        return cp.Problem(cp.Minimize(t), [finish <= t, cp.sum(b) == budget_hz / 1e6]), t

    options = {"solver": cp.CLARABEL, "tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
    problem, t = build()

    def build_and_solve() -> float:
        fresh, fresh_t = build()
        with warnings.catch_warnings():  # "may be inaccurate" at these tight tolerances; the gap is reported
            warnings.simplefilter("ignore", UserWarning)
            fresh.solve(**options)
        return float(fresh_t.value) / 1e3

    def solve_again() -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            problem.solve(**options)
        return float(t.value) / 1e3

    return build_and_solve, solve_again


def our_layer_time(costs: DeviceCosts, link: LinkState, bandwidth_hz: np.ndarray) -> float:
    """The slowest active device's DL + compute + UL seconds (radio.rate) on the given shares."""
    finish = (share_time_s(costs.bits_dl, bandwidth_hz, link.snr_dl_per_hz) + costs.compute_s
              + share_time_s(costs.bits_ul, bandwidth_hz, link.snr_ul_per_hz))
    return float(np.where(costs.active, finish, 0.0).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    decision_us: dict[str, dict[str, float]] = {}
    for devices in (8, 64):
        for phase, tokens in (("decode", 1), ("prefill", PREFILL_TOKENS)):
            state = make_state(tokens, devices)
            decision_us[f"{phase}_{devices}dev"] = {
                p.name: time_call(lambda p=p, s=state: p.decide(s)) * 1e6 for p in POLICIES}  # type: ignore[misc]

    solver: dict[str, dict[str, float]] = {}
    for devices, tokens in ((8, 1), (8, PREFILL_TOKENS), (64, PREFILL_TOKENS)):
        state = make_state(tokens, devices)
        costs = device_costs(state, np.ones(state.topk_index.shape, dtype=bool))
        link = state.link
        on = costs.active  # both solvers see the active devices only (idle ones get 0 Hz by definition)
        problem = (costs.bits_dl[on], costs.bits_ul[on], costs.compute_s[on], link.snr_dl_per_hz[on],
                   link.snr_ul_per_hz[on], state.bandwidth_hz)
        everyone = np.ones(int(on.sum()), dtype=bool)
        ours_layer_s = our_layer_time(costs, link, minmax_split(costs.bits_dl, costs.bits_ul, costs.compute_s,
                                                                link.snr_dl_per_hz, link.snr_ul_per_hz,
                                                                state.bandwidth_hz, on))
        build_and_solve, solve_again = cvxpy_minmax(*problem)
        cvx_layer_s = build_and_solve()
        ours_s, cvx_solve_s = time_side_by_side(
            lambda pr=problem, a=everyone: minmax_split(*pr, a), solve_again)  # type: ignore[misc]
        cvx_build_s = time_call(build_and_solve, budget_s=2.0)
        solver[f"{'decode' if tokens == 1 else 'prefill'}_{devices}dev"] = {
            "ours_us": ours_s * 1e6, "cvxpy_solve_us": cvx_solve_s * 1e6, "cvxpy_build_solve_us": cvx_build_s * 1e6,
            "speedup_vs_solve": cvx_solve_s / ours_s, "speedup_vs_build_solve": cvx_build_s / ours_s,
            "ours_layer_s": ours_layer_s, "cvxpy_layer_s": cvx_layer_s,
            "rel_gap": abs(ours_layer_s - cvx_layer_s) / cvx_layer_s}

    report = {
        "decode_decision_us": decision_us["decode_8dev"],
        "decision_us": decision_us,
        "minmax_vs_cvxpy": solver,
        "minmax_speedup_vs_cvxpy": min(s["speedup_vs_solve"] for s in solver.values()),
        "minmax_max_rel_gap": max(s["rel_gap"] for s in solver.values()),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    names = [p.name for p in POLICIES]
    print(f"{'decision time (us)':<22}" + "".join(f"{n:>10}" for n in names))
    for key, row in decision_us.items():
        print(f"{key:<22}" + "".join(f"{row[n]:>10.1f}" for n in names))
    for key, s in solver.items():
        print(f"min-max {key}: ours {s['ours_us']:.0f} us, cvxpy {s['cvxpy_solve_us']:.0f} us "
              f"({s['speedup_vs_solve']:.0f}x; {s['speedup_vs_build_solve']:.0f}x with the build), "
              f"relative gap {s['rel_gap']:.2e}")


if __name__ == "__main__":
    main()
