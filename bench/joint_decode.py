"""The joint policy's exact decode decision (one token) on 8 devices for top-k with k = 2, 4 and 8.

For each k, `--states` random decode states (policy_speed's radio and compute: UMa-like SNRs, the four edge
presets, Mixtral-sized experts and activations, a 20 MHz band; top-2 on 8 experts, one per device, as
bench/policy_speed.py; k = 4 and 8 on 16 experts, two per device, so a device may hold several of the token's
slots) are decided in both forms (ratio, and lagrangian with lam = 1000); each decision is timed as the best of
repeats of its mean process CPU time (policy_speed.time_call). Printed per k and form: the median and the worst
microseconds over the states. Run it with PYTHONPATH at another tree's src to compare trees on one machine.

    python bench/joint_decode.py [--json] [--states 5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from wdmoe.policy import JointSelectionBandwidth
from wdmoe.policy.base import LayerState

sys.path.insert(0, str(Path(__file__).resolve().parent))
from policy_speed import make_state, time_call  # a sibling script, not a package

DEVICES = 8


def decode_state(k: int, seed: int) -> LayerState:
    """policy_speed's state for one token, with 16 experts (two per device) and top-k when k > 2."""
    if k == 2:
        return make_state(1, DEVICES, seed)
    base = make_state(1, DEVICES, seed)
    rng = np.random.default_rng(1000 + seed)
    experts = 2 * DEVICES
    logits = rng.normal(size=experts)
    index = np.argsort(-logits)[:k][None, :]  # (1, k)
    top = logits[index]
    weight = np.exp(top - top.max())
    weight /= weight.sum()
    return LayerState(index, weight, np.arange(experts) % DEVICES, base.link, base.profiles,
                      expert_flops_per_token=base.expert_flops_per_token,
                      expert_weight_bytes=base.expert_weight_bytes, bits_per_token=base.bits_per_token,
                      bandwidth_hz=base.bandwidth_hz, bs_time_s=base.bs_time_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--states", type=int, default=5)
    args = parser.parse_args()
    forms = {"ratio": JointSelectionBandwidth(), "lagrangian": JointSelectionBandwidth(form="lagrangian", lam=1e3)}
    report: dict[str, dict[str, dict[str, float]]] = {}
    for k in (2, 4, 8):
        report[str(k)] = {}
        for name, policy in forms.items():
            states = [decode_state(k, seed) for seed in range(args.states)]
            us = np.array([time_call(lambda p=policy, s=s: p.decide(s)) * 1e6 for s in states])  # type: ignore[misc]
            report[str(k)][name] = {"median_us": float(np.median(us)), "worst_us": float(us.max())}
    if args.json:
        print(json.dumps({"devices": DEVICES, "decode_us": report}, indent=2))
        return
    print(f"{'k':>3} {'form':>10} {'median us':>10} {'worst us':>10}")
    for k, row in report.items():
        for name, s in row.items():
            print(f"{k:>3} {name:>10} {s['median_us']:>10.1f} {s['worst_us']:>10.1f}")


if __name__ == "__main__":
    main()
