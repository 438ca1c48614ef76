"""Run by tests/unit/test_cross_cpu.py in a subprocess: prints, as JSON, sha256 digests of real outputs of the
policies, the two-device split, the channel and the simulator, and which of numpy's CPU dispatch targets are on.

Inputs are built without numpy's transcendentals (uniform draws, radio.exactmath), so they are the same bits under
any NPY_DISABLE_CPU_FEATURES; `control` digests np.log1p / np.exp themselves, which do change with the features.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import numpy as np
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

from wdmoe.config import Scenario
from wdmoe.policy import split_arrays
from wdmoe.policy.bandwidth import minmax_split, pair_split
from wdmoe.policy.base import LayerState
from wdmoe.policy.factory import make_policy
from wdmoe.radio.channel import sample_links
from wdmoe.radio.compute import PRESETS, DeviceProfiles
from wdmoe.radio.exactmath import exp10_array, exp_array
from wdmoe.radio.link import LinkState
from wdmoe.sim.blocks import draw_blocks
from wdmoe.sim.simulate import replay
from wdmoe.sim.synthesize import synthesize_trace


def _digest(arrays: Iterable[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _split_instances(n: int) -> list[np.ndarray]:
    """n two-device problems as in tests/unit/policy/test_pair_split.py, with exactmath's 10^x."""
    rng = np.random.default_rng(3)
    bits = exp10_array(rng.uniform(3.0, 6.0, (4, n))) * 0.6931471805599453
    base = np.where(rng.random((2, n)) < 0.2, 0.0, exp10_array(rng.uniform(-5.0, -1.5, (2, n))))
    snr = exp10_array(rng.uniform(6.0, 11.0, (4, n)))
    budget = exp10_array(rng.uniform(6.0, 8.0, n))
    return [bits[0], bits[1], bits[2], bits[3], base[0], base[1], snr[0], snr[1], snr[2], snr[3], budget]


def pair_splits() -> str:
    args = _split_instances(300)
    out = []
    for pool in (0.0, 2e7):  # the BS's full power per downlink; a constant spectral density over 20 MHz
        split = split_arrays.pair_split(*args, dl_pool=pool)
        scalar = [pair_split(*(float(a[i]) for a in args), dl_pool=pool) for i in range(args[0].shape[0])]
        out += [split.b0, split.b1, split.t0, split.inv0, split.t1, split.inv1,
                np.array([s if s is not None else (np.nan, np.nan) for s in scalar])]
    return _digest(out)


def minmax_splits() -> str:
    rng = np.random.default_rng(4)
    out = []
    for _ in range(40):  # 3-8 devices: the Newton path on arrays
        d = int(rng.integers(3, 9))
        bits = exp10_array(rng.uniform(3.0, 6.0, (2, d)))
        args = (bits[0], bits[1], rng.uniform(0.0, 1e-2, d), exp10_array(rng.uniform(6.0, 11.0, d)),
                exp10_array(rng.uniform(6.0, 11.0, d)), 2e7, np.ones(d, dtype=bool))
        out += [minmax_split(*args), minmax_split(*args, dl_pool_hz=2e7)]
    return _digest(out)


def _state(seed: int, tokens: int, dl_psd_pool_hz: float = 0.0) -> LayerState:
    rng = np.random.default_rng(seed)
    experts, devices, k = 8, 8, 2
    logits = rng.normal(size=(tokens, experts)) * 2.0
    index = np.argsort(-logits, axis=1)[:, :k]
    top = np.take_along_axis(logits, index, axis=1)
    weight = exp_array(top - top.max(axis=1, keepdims=True))
    weight = weight / weight.sum(axis=1, keepdims=True)
    ones = np.ones(devices)
    link = LinkState(ones * 100.0, ones * 100.0, ones, ones, exp10_array(rng.uniform(6.0, 11.0, devices)),
                     exp10_array(rng.uniform(6.0, 11.0, devices)), dl_psd_pool_hz)
    names = list(PRESETS)
    profiles = DeviceProfiles.from_profiles([PRESETS[names[i]] for i in rng.integers(0, len(names), devices)])
    flops, weight_bytes, bits = exp10_array(rng.uniform([7.0, 7.0, 3.0], [9.0, 9.0, 5.0])).tolist()
    return LayerState(topk_index=index, topk_weight=weight, expert_device=rng.integers(0, devices, experts),
                      link=link, profiles=profiles, expert_flops_per_token=flops, expert_weight_bytes=weight_bytes,
                      bits_per_token=bits, bandwidth_hz=2e7, bs_time_s=float(rng.uniform(0.0, 1e-3)))


def decisions() -> dict[str, str]:
    states = [_state(seed, tokens, pool) for seed in range(12) for tokens in (1, 5) for pool in (0.0, 2e7)]
    out = {}
    for name in ("topk", "wlr", "joint", "fastest", "prune"):
        policy = make_policy(name, theta=0.5)
        made = [policy.decide(state) for state in states]
        out[name] = _digest(x for d in made for x in (d.keep, d.weight, d.bandwidth_hz))
    return out


def channel() -> str:
    radio = Scenario.default(num_devices=8).radio
    rng = np.random.default_rng(5)
    first = sample_links(rng, radio)
    blocks = draw_blocks(rng, first, radio, 200)
    return _digest([first.pathloss_db, first.snr_dl_per_hz, blocks.snr_dl_per_hz, blocks.snr_ul_per_hz])


def replays() -> dict[str, str]:
    trace = synthesize_trace(np.random.default_rng(6), 4, 8, 2, 3, 6, 12, popularity=0.5, num_devices=8)
    scenario = Scenario.default(num_devices=8)
    out = {"trace": _digest([trace.topk_index, trace.topk_weight])}
    for name in ("topk", "wlr", "joint"):
        for batched in (True, False):  # the simulator's batched path and the runtime decider's own calls
            run = replay(trace, scenario, make_policy(name, theta=0.5), seed=2, batched=batched)
            out[f"{name}_{'batched' if batched else 'exact'}"] = _digest(
                [run.layer_s, run.energy_j, run.bits_dl, run.bits_ul, run.kept])
    return out


def control() -> str:
    """numpy's own SIMD transcendentals: these do change when the AVX-512 loops are off."""
    x = np.random.default_rng(7).uniform(-5.0, 12.0, 20000)
    return _digest([np.log1p(np.exp(x)), np.exp(x)])


def main() -> None:
    enabled = sorted(name for name in __cpu_dispatch__ if __cpu_features__.get(name))
    print(json.dumps({"enabled": enabled, "control": control(), "pair_split": pair_splits(),
                      "minmax_split": minmax_splits(), "decisions": decisions(), "channel": channel(),
                      "replays": replays()}))


if __name__ == "__main__":
    main()
