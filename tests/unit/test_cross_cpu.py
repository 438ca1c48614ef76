"""The same numbers on every CPU: the policies, the two-device split, the channel and the simulator's replays (batched
and the runtime decider's exact calls) give the same bits with numpy's SIMD loops on (this CPU's best) and off.

numpy picks its float64 exp/log/log1p/power loops by CPU at import (AVX-512 where present); NPY_DISABLE_CPU_FEATURES
turns the dispatch targets off, which is what an older x86-64 CPU would run. The probe (cross_cpu_probe.py) runs in
two subprocesses, one per setting, and prints digests of raw output bytes. Before radio.exactmath, 2637 of 32768
joint layer latencies of a replay differed between the two settings on an AVX-512 EPYC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

PROBE = Path(__file__).with_name("cross_cpu_probe.py")
FOUND = sorted(name for name in __cpu_dispatch__ if __cpu_features__.get(name))
AVX512 = any(name.startswith(("AVX512", "X86_V4")) for name in FOUND)


def _probe(disable: list[str]) -> dict[str, Any]:
    env = dict(os.environ)  # the default run sees what this process sees (FOUND); the other adds FOUND to it
    if disable:
        env["NPY_DISABLE_CPU_FEATURES"] = " ".join([env.get("NPY_DISABLE_CPU_FEATURES", ""), *disable]).strip()
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2] / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.skipif(not FOUND, reason="numpy dispatches no SIMD targets beyond its baseline on this CPU")
def test_outputs_are_the_same_bits_with_numpys_simd_loops_off() -> None:
    default, plain = _probe([]), _probe(FOUND)

    assert default["enabled"] == FOUND
    assert plain["enabled"] == []  # the features really are off in the second run
    if AVX512:  # numpy's own transcendentals change with them: the comparison below is able to fail
        assert plain["control"] != default["control"]
    for part in ("pair_split", "minmax_split", "decisions", "channel", "replays"):
        assert plain[part] == default[part], part
