"""radio.params and the coherence rule: the plain values Scenario builds, dBm -> W, one rule for fading blocks."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from wdmoe.config import ChannelConfig, FadingConfig, Scenario
from wdmoe.radio.channel import block_schedule, redraws_at
from wdmoe.radio.params import DEFAULT_BS_TX_POWER_W, ChannelParams, FadingParams, RadioParams, dbm_to_w
from wdmoe.radio.rate import PoolMode


def test_dbm_to_w_by_hand() -> None:
    assert dbm_to_w(30.0) == pytest.approx(1.0, rel=1e-15)
    assert dbm_to_w(23.0) == pytest.approx(0.19952623149688797, rel=1e-15)
    assert dbm_to_w(43.0) == DEFAULT_BS_TX_POWER_W == pytest.approx(19.952623149688797, rel=1e-15)  # the default


def test_default_scenario_builds_the_default_radio_value() -> None:
    assert Scenario.default().radio == RadioParams()


def test_scenario_radio_resolves_heights_and_pool() -> None:
    scenario = Scenario(channel=ChannelConfig(model="umi", carrier_ghz=6.0), fading=FadingConfig(model="rician"),
                        bandwidth_pool="separate", bs_tx_power_dbm=40.0, coherence="layer")
    radio = scenario.radio

    assert radio.channel == ChannelParams(model="umi", carrier_ghz=6.0, bs_height_m=10.0, ut_height_m=1.5)
    assert radio.fading == FadingParams(model="rician")
    assert radio.pool is PoolMode.SEPARATE and radio.coherence == "layer"
    assert radio.bs_tx_power_w == pytest.approx(10.0, rel=1e-15)


def _live_blocks(request_start: np.ndarray, num_layers: int, coherence: str) -> np.ndarray:
    """The block each layer step sees when the runtime applies `redraws_at` event by event."""
    block, out = 0, np.zeros((request_start.shape[0], num_layers), dtype=np.int64)
    for step, starts in enumerate(request_start.tolist()):
        block += starts and redraws_at(coherence, "request")  # type: ignore[arg-type]
        block += redraws_at(coherence, "step")  # type: ignore[arg-type]
        for layer in range(num_layers):
            block += redraws_at(coherence, "layer")  # type: ignore[arg-type]
            out[step, layer] = block
    return out


@pytest.mark.parametrize("coherence", ["request", "step", "layer"])
def test_block_schedule_is_the_live_rule_over_a_replay(coherence: str) -> None:
    request_start = np.array([True, False, False, True, False, True, True, False])

    got = block_schedule(request_start, 3, coherence)  # type: ignore[arg-type]

    np.testing.assert_array_equal(got, _live_blocks(request_start, 3, coherence))


def test_unknown_coherence_is_refused() -> None:
    with pytest.raises(ValueError, match="scenario field 'coherence' = 'token'"):
        block_schedule(np.array([True]), 2, "token")  # type: ignore[arg-type]


def test_radio_imports_without_config_or_pydantic() -> None:
    """config.py builds the radio values; radio/ never imports it back (the config <-> channel cycle is gone)."""
    code = ("import sys, wdmoe.radio, wdmoe.radio.channel, wdmoe.radio.latency, wdmoe.radio.one_token, "
            "wdmoe.radio.params, wdmoe.radio.costs; "
            "print(sorted(m for m in ('wdmoe.config', 'pydantic') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
