"""Importing the pure-numpy parts (radio, policy) must not import torch (the Petals habit)."""

from __future__ import annotations

import subprocess
import sys


def test_radio_and_policy_import_without_torch() -> None:
    code = ("import sys, wdmoe.radio, wdmoe.radio.rate, wdmoe.radio.compute, wdmoe.radio.latency, wdmoe.policy; "
            "print(sorted(m for m in ('torch', 'transformers', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"


def test_the_runtime_core_imports_without_pydantic() -> None:
    # The GPU machine's image holds torch and transformers but no pydantic (docs/gpu.md): the model and its layer
    # step must import there; only the radio scenario (wdmoe.config) needs pydantic, and it is imported lazily.
    code = ("import sys, wdmoe.runtime.model, wdmoe.runtime.moe_layer; "
            "print(sorted(m for m in ('pydantic', 'wdmoe.config', 'fastapi') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
