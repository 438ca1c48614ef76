"""The joint policy's certified optimality gap on prefill blocks of the default scenario: its distribution.

A Mixtral-shaped synthetic trace (8 experts, top-2, Zipf 0.5 popularity, `--layers` MoE layers) over
`Scenario.default(8)`; for each block size (32, 64, 128, 512 tokens: one prompt of that length) and each layer,
`--draws` fresh channel draws (radio.channel.sample_links); each state is decided by the joint policy in both forms
(ratio, and lagrangian with lam = `--lam`), and the decision's certified gap (`Decision.optimality_gap`: the relative
distance to an upper bound on the optimum, policy.joint_gap / policy.joint_interval) is collected. Printed per block
size and form: the number of states, the max, p99 and median gap, and the mean CPU milliseconds per decision.

    python bench/joint_gap.py [--json] [--layers 32] [--draws 2] [--sizes 32 64 128 512]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from wdmoe.config import Scenario
from wdmoe.policy import JointSelectionBandwidth
from wdmoe.radio.channel import sample_links
from wdmoe.sim.simulate import make_decider
from wdmoe.sim.synthesize import synthesize_trace

EXPERTS, TOP_K, DEVICES = 8, 2, 8


def gaps(tokens: int, policy: JointSelectionBandwidth, layers: int, draws: int) -> tuple[np.ndarray, float]:
    """(layers * draws,) certified gaps of the policy's decisions, and the mean CPU seconds per decision."""
    trace = synthesize_trace(np.random.default_rng(0), layers, EXPERTS, TOP_K, 1, tokens, 1, popularity=0.5,
                             num_devices=DEVICES)
    decider = make_decider(trace, Scenario.default(DEVICES), policy, 0)
    rng = np.random.default_rng(1)  # the same draws for both forms
    out, cpu = [], 0.0
    for layer in range(layers):
        rows = trace.rows(0, layer)
        for _ in range(draws):
            state = decider.state_on(sample_links(rng, decider.radio), layer, trace.topk_index[rows],
                                     trace.topk_weight[rows], None)
            start = time.process_time()
            gap = policy.decide(state).optimality_gap
            cpu += time.process_time() - start
            out.append(np.inf if gap is None else gap)
    return np.array(out), cpu / max(len(out), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--draws", type=int, default=2, help="channel draws per layer")
    parser.add_argument("--lam", type=float, default=1e3, help="lam of the lagrangian form (weight per second)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 512], help="block sizes (tokens)")
    args = parser.parse_args()
    forms = {"ratio": JointSelectionBandwidth(), "lagrangian": JointSelectionBandwidth(form="lagrangian", lam=args.lam)}
    report: dict[str, dict[str, dict[str, float]]] = {}
    for tokens in args.sizes:
        report[str(tokens)] = {}
        for name, policy in forms.items():
            values, cpu_s = gaps(tokens, policy, args.layers, args.draws)
            report[str(tokens)][name] = {
                "states": float(values.size), "max": float(values.max()), "p99": float(np.quantile(values, 0.99)),
                "median": float(np.median(values)), "cpu_ms_per_decision": cpu_s * 1e3}
    if args.json:
        print(json.dumps({"lam": args.lam, "layers": args.layers, "draws": args.draws, "gap": report}, indent=2))
        return
    print(f"{'tokens':>6} {'form':>10} {'states':>6} {'max':>9} {'p99':>9} {'median':>9} {'ms/decision':>11}")
    for tokens, row in report.items():
        for name, s in row.items():
            print(f"{tokens:>6} {name:>10} {int(s['states']):>6} {s['max']:>9.2e} {s['p99']:>9.2e} "
                  f"{s['median']:>9.2e} {s['cpu_ms_per_decision']:>11.1f}")


if __name__ == "__main__":
    main()
