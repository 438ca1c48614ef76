"""The light parts of wdmoe load without torch; the public surface is where the README says."""

from __future__ import annotations

import subprocess
import sys

LIGHT = ("wdmoe", "wdmoe.placement", "wdmoe.config", "wdmoe.errors", "wdmoe.runtime.wireless",
         "wdmoe.runtime.telemetry", "wdmoe.policy.factory")


def test_light_modules_do_not_import_torch() -> None:
    code = f"import sys; import {', '.join(LIGHT)}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_distributed_moe_is_exported_lazily() -> None:
    code = (
        "import sys, wdmoe; a = 'torch' in sys.modules; "
        "from wdmoe import DistributedMoE; print(a, DistributedMoE.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "DistributedMoE"]
