"""wdmoe.sim and the batched policies are pure numpy: importing them loads no torch (the Petals habit)."""

from __future__ import annotations

import subprocess
import sys


def test_sim_imports_without_torch() -> None:
    code = ("import sys, wdmoe.sim, wdmoe.sim.grid, wdmoe.sim.report, wdmoe.sim.cell, wdmoe.sim.cell_report, "
            "wdmoe.runtime.admission, wdmoe.policy.steps, "
            "wdmoe.policy.joint_pairs, wdmoe.cli.sim_cmd; "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
