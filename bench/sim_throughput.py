"""Simulator throughput: token-layer decisions per second for TopK, WLR and joint, against a plain per-token loop.

Workloads (synthetic Mixtral-8x7B-shaped traces: 32 MoE layers, 8 experts, top-2, Zipf 0.5 popularity, 8
devices, the default scenario with fading redrawn every step):
  decode: requests of one prompt token and 128 generated tokens, so every layer step routes one token (the
          steady state of generation, where per-call overhead dominates).
  mixed:  32-token prompts and 128 generated tokens: the prefill layer steps go through the per-state path.
For each policy, in one run: the simulator's default (batched) replay, and the plain Python loop over tokens
(`replay(..., batched=False)`: per token and layer, build the LayerState, `policy.decide`, radio.latency),
which gives the same numbers (tests/unit/sim); on the mixed workload that exact mode is the per-state reference.
Each rate is the best of `--repeats` timings, of wall time and of process CPU time (this is a shared 2-core
machine: the CPU-time rate is what an idle core sees); the loop runs on fewer requests (its rate per decision does
not depend on the count). `decisions_per_s` (wall) and `cpu_decisions_per_s` are the decode workload.

    python bench/sim_throughput.py [--json] [--repeats 3]
    python bench/sim_throughput.py --profile joint [--profile topk ...]   # cProfile of the batched decode replay
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from wdmoe.config import Scenario
from wdmoe.policy.factory import make_policy
from wdmoe.sim.simulate import replay
from wdmoe.sim.synthesize import synthesize_trace
from wdmoe.sim.trace import Trace

POLICIES = ("topk", "wlr", "joint")
LAYERS, EXPERTS, TOP_K, DEVICES, NEW_TOKENS = 32, 8, 2, 8, 128


def workload(requests: int, prompt_len: int) -> Trace:
    return synthesize_trace(np.random.default_rng(0), LAYERS, EXPERTS, TOP_K, requests, prompt_len, NEW_TOKENS,
                            popularity=0.5, num_devices=DEVICES)


def rate(trace: Trace, policy: str, batched: bool, repeats: int) -> tuple[float, float]:
    """Best decisions per second of wall time and of process CPU time over `repeats` replays (a fresh policy each
    time, as the grid does). On a shared machine the CPU-time rate is what an idle core would see."""
    scenario = Scenario.default(DEVICES)
    wall = cpu = float("inf")
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        replay(trace, scenario, make_policy(policy, theta=0.5), seed=0, batched=batched)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return trace.num_decisions / wall, trace.num_decisions / cpu


def profile(policy: str, top: int = 25) -> None:
    """cProfile of one batched replay of the decode workload (after a warm-up replay), by own time."""
    import cProfile
    import pstats

    trace, scenario = workload(64, 1), Scenario.default(DEVICES)
    replay(trace, scenario, make_policy(policy, theta=0.5), seed=0)
    profiler = cProfile.Profile()
    start = time.process_time()
    profiler.runcall(replay, trace, scenario, make_policy(policy, theta=0.5), seed=0)
    cpu = time.process_time() - start
    print(f"{policy}: {trace.num_decisions} decisions, {cpu:.3f} s CPU under the profiler")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="append", choices=POLICIES, default=[],
                        help="profile the batched decode replay of this policy instead of timing (repeatable)")
    args = parser.parse_args()
    if args.profile:
        for policy in args.profile:
            profile(policy)
        return
    decode, decode_small = workload(64, 1), workload(4, 1)
    mixed, mixed_small = workload(16, 32), workload(2, 32)
    keys = ("decisions_per_s", "loop_decisions_per_s", "speedup", "cpu_decisions_per_s", "cpu_loop_decisions_per_s",
            "mixed_decisions_per_s", "mixed_per_state_decisions_per_s")
    report: dict[str, dict[str, float]] = {key: {} for key in keys}
    for policy in POLICIES:
        sim, sim_cpu = rate(decode, policy, True, args.repeats)
        loop, loop_cpu = rate(decode_small, policy, False, 1)
        report["decisions_per_s"][policy], report["cpu_decisions_per_s"][policy] = sim, sim_cpu
        report["loop_decisions_per_s"][policy], report["cpu_loop_decisions_per_s"][policy] = loop, loop_cpu
        report["speedup"][policy] = sim / loop
        report["mixed_decisions_per_s"][policy] = rate(mixed, policy, True, args.repeats)[0]
        report["mixed_per_state_decisions_per_s"][policy] = rate(mixed_small, policy, False, 1)[0]
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({**report, "decode_decisions": decode.num_decisions, "mixed_decisions": mixed.num_decisions,
                          "load_average_1min": load, "cpus": os.cpu_count()}))
        return
    print(f"token-layer decisions per second ({LAYERS} layers, {EXPERTS} experts, top-{TOP_K}, {DEVICES} devices); "
          f"load average {load:.1f} on {os.cpu_count()} CPUs")
    print(f"{'policy':8} {'decode sim':>11} {'loop':>9} {'ratio':>6} {'sim (cpu)':>10} {'loop (cpu)':>10} "
          f"{'mixed sim':>10} {'per-state':>10}")
    for p in POLICIES:
        print(f"{p:8} {report['decisions_per_s'][p]:11.3g} {report['loop_decisions_per_s'][p]:9.3g} "
              f"{report['speedup'][p]:6.0f} {report['cpu_decisions_per_s'][p]:10.3g} "
              f"{report['cpu_loop_decisions_per_s'][p]:10.3g} {report['mixed_decisions_per_s'][p]:10.3g} "
              f"{report['mixed_per_state_decisions_per_s'][p]:10.3g}")


if __name__ == "__main__":
    main()
