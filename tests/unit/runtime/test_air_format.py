"""One quantity, one number: the bits per device the telemetry reports are the bits the radio model charged.

The model computes in fp32; the scenario puts 16 bits per value on the air, air compression its own dtype. Before
issue 14 the record counted the compute dtype (twice the radio model's bits).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from wdmoe import DistributedMoE
from wdmoe.cli.main import app
from wdmoe.config import Scenario
from wdmoe.policy.wlr import WLRThreshold


def _charged(model: DistributedMoE) -> tuple[np.ndarray, np.ndarray]:
    """(D,) bits the radio model charged each device on the downlink and the uplink, over every recorded step."""
    down = sum(r.modeled.bits_dl for s in model.steps for r in s.layers)
    up = sum(r.modeled.bits_ul for s in model.steps for r in s.layers)
    return np.asarray(down), np.asarray(up)


@pytest.mark.parametrize(("air_dtype", "bits_per_value"), [(None, 16), ("fp16", 16), ("int8", 8), ("fp32", 32)])
def test_reported_bits_per_device_equal_the_radio_models(mixtral_split: Path, air_dtype: str | None,
                                                         bits_per_value: int) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, policy=WLRThreshold(theta=0.3))
    assert next(model.hf_model.parameters()).dtype == torch.float32
    model.set_compression(air_dtype)
    model.generate(torch.tensor([[5, 9, 2, 7]]), max_new_tokens=4, do_sample=False)
    summary = model.summary()
    down, up = _charged(model)
    assert summary["bits_down_per_device"] == down.tolist() and summary["bits_up_per_device"] == up.tolist()
    assert sum(summary["bits_down_per_device"]) == summary["bytes_down"] * 8
    assert sum(summary["bits_up_per_device"]) == summary["bytes_up"] * 8
    hidden = int(model.config.hidden_size)
    per_token = bits_per_value * hidden + (32 if air_dtype == "int8" else 0)
    assert sum(summary["bits_up_per_device"]) == per_token * sum(r.assignments.sum() for s in model.steps
                                                                 for r in s.layers)
    model.close()


def test_the_scenarios_activation_bits_set_the_air_format(mixtral_split: Path) -> None:
    scenario = Scenario.default(num_devices=3).model_copy(update={"activation_bits": 12})
    model = DistributedMoE.from_pretrained(mixtral_split, scenario=scenario)
    model(torch.tensor([[1, 2, 3]]))
    record = model.steps[-1].layers[0]
    np.testing.assert_array_equal(record.bits_down, record.tokens_down * 12 * model.config.hidden_size)
    np.testing.assert_array_equal(record.bits_down, record.modeled.bits_dl)
    model.close()


def test_run_json_reports_the_bits_the_radio_model_charged(mixtral_split: Path) -> None:
    result = CliRunner().invoke(app, ["run", "--model", str(mixtral_split), "--prompt-ids", "1,2,3,4",
                                      "--max-new-tokens", "4", "--policy", "wlr", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert sum(report["bits_down_per_device"]) == report["bytes_down"] * 8
    assert sum(report["bits_up_per_device"]) == report["bytes_up"] * 8
