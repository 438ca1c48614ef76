"""Importing the pure-numpy parts (radio, policy) must not import torch (the Petals habit)."""

from __future__ import annotations

import subprocess
import sys


def test_radio_and_policy_import_without_torch() -> None:
    code = ("import sys, wdmoe.radio, wdmoe.radio.rate, wdmoe.radio.compute, wdmoe.radio.latency, wdmoe.policy; "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
