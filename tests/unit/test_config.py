"""config: TOML scenarios load, defaults, and every error names the field, the value, the unit and the rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from wdmoe.config import Scenario, ScenarioError, load_scenario, parse_scenario
from wdmoe.radio.compute import PRESETS
from wdmoe.radio.link import DownlinkPower

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_toml_loads_and_matches_the_documented_cell() -> None:
    scenario = load_scenario(CONFIGS / "default.toml")
    assert scenario.num_devices == 8
    assert (scenario.distance_min_m, scenario.distance_max_m) == (50.0, 300.0)
    assert scenario.bandwidth_hz == 20e6
    assert scenario.channel.model == "uma"
    assert scenario.fading.model == "rayleigh"
    assert all(name.startswith("jetson-") for name in scenario.device_presets)
    assert len(set(scenario.device_presets)) > 1


def test_default_toml_opens_with_a_comment_saying_the_defaults_are_ours() -> None:
    text = (CONFIGS / "default.toml").read_text(encoding="utf-8")
    header = text.split("\n\n")[0]
    assert header.startswith("#")
    assert "OUR default" in header and "not" in header


@pytest.mark.parametrize("name", ["umi-dense.toml", "indoor-lab.toml"])
def test_example_configs_load(name: str) -> None:
    scenario = load_scenario(CONFIGS / name)
    assert scenario.channel.model in ("umi", "inh")
    assert (CONFIGS / name).read_text(encoding="utf-8").startswith("#")


def test_default_scenario_without_a_file() -> None:
    scenario = Scenario.default(num_devices=3)
    assert scenario.num_devices == 3
    assert (scenario.bs_tx_power_dbm, scenario.device_tx_power_dbm) == (43.0, 23.0)
    assert scenario.bandwidth_pool == "shared" and scenario.coherence == "step"
    assert scenario.activation_bits == 16
    assert scenario.bs_preset in PRESETS
    assert all(name in PRESETS for name in scenario.device_presets)


def test_downlink_power_defaults_to_a_constant_psd_and_names_a_bad_value() -> None:
    default = Scenario.default().radio
    full = parse_scenario({"downlink_power": "full_per_device"}).radio

    assert load_scenario(CONFIGS / "default.toml").downlink_power == "shared_psd"
    assert default.downlink is DownlinkPower.SHARED_PSD and default.dl_psd_pool_hz == 20e6
    assert full.downlink is DownlinkPower.FULL_PER_DEVICE and full.dl_psd_pool_hz == 0.0
    with pytest.raises(ScenarioError, match=r"'downlink_power' = 'full': must be 'shared_psd' or 'full_per_device'"):
        parse_scenario({"downlink_power": "full"})


def test_presets_are_cycled_over_the_devices() -> None:
    scenario = parse_scenario({"num_devices": 5, "device_presets": ["phone-soc", "jetson-orin-nx"]})
    names = [scenario.preset_of_device(i) for i in range(5)]
    assert names == ["phone-soc", "jetson-orin-nx", "phone-soc", "jetson-orin-nx", "phone-soc"]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bandwidth_hz": -5}, "scenario field 'bandwidth_hz' = -5 Hz: must be > 0"),
        ({"distance_min_m": 0.0}, "scenario field 'distance_min_m' = 0 m: must be > 0"),
        ({"channel": {"carrier_ghz": 0.1}}, "scenario field 'channel.carrier_ghz' = 0.1 GHz: must be >= 0.5"),
        ({"noise_figure_db": -1.0}, "scenario field 'noise_figure_db' = -1 dB: must be >= 0"),
        ({"bs_layer_time_s": 0}, "scenario field 'bs_layer_time_s' = 0 s: must be > 0"),
        ({"activation_bits": 128}, "scenario field 'activation_bits' = 128 bits: must be <= 64"),
        ({"bs_tx_power_dbm": "43"}, "scenario field 'bs_tx_power_dbm' = '43' dBm: must be a valid number"),
        (
            {"fading": {"model": "nakagami"}},
            "scenario field 'fading.model' = 'nakagami': must be 'rayleigh', 'rician' or 'none'",
        ),
        (
            {"channel": {"model": "rma"}},
            "scenario field 'channel.model' = 'rma': must be 'uma', 'umi', 'inh' or 'log_distance'",
        ),
        (
            {"distance_max_m": 40.0},
            "scenario field 'distance_max_m' = 40 m: must be > distance_min_m = 50 m",
        ),
    ],
)
def test_bad_values_name_field_value_unit_and_rule(data: dict[str, object], expected: str) -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(data)
    assert str(info.value) == expected


def test_file_errors_carry_the_file_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "bandwidth_hz = -5\n")
    with pytest.raises(ScenarioError, match=r"scenario.toml: scenario field 'bandwidth_hz' = -5 Hz: must be > 0"):
        load_scenario(path)
    assert issubclass(ScenarioError, ValueError)


def test_unknown_keys_are_refused_by_name(tmp_path: Path) -> None:
    path = _write(tmp_path, "num_devices = 4\nbandwith_hz = 1e6\n")
    with pytest.raises(ScenarioError, match=r"unknown key 'bandwith_hz' \(= 1000000.0\).*bandwidth_hz"):
        load_scenario(path)
    with pytest.raises(ScenarioError, match=r"unknown key 'fading.k_db'.*allowed keys here: model, k_factor_db"):
        parse_scenario({"fading": {"k_db": 3.0}})


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"device_presets": ["jetson-agx-orin", "jetson-tx9"]})
    message = str(info.value)
    assert message.startswith("scenario field 'device_presets' = ['jetson-agx-orin', 'jetson-tx9']")
    assert "unknown preset 'jetson-tx9'" in message
    assert all(name in message for name in PRESETS)
    with pytest.raises(ScenarioError, match=r"'bs_preset' = 'dgx': unknown preset 'dgx'"):
        parse_scenario({"bs_preset": "dgx"})


def test_distance_range_must_fit_the_channel_model() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"channel": {"model": "inh"}})
    assert str(info.value) == (
        "scenario field 'distance_max_m' = 300 m: channel.model 'inh' is defined for 1 m <= d_3D <= 150 m "
        "(TR 38.901 Table 7.4.1-1), here d_3D = 300 m"
    )
    with pytest.raises(ScenarioError, match=r"'distance_min_m' = 5 m: channel.model 'uma' .* 10 m <= d_2D"):
        parse_scenario({"distance_min_m": 5.0})
    assert parse_scenario({"distance_min_m": 5.0, "channel": {"model": "log_distance"}}).distance_min_m == 5.0


def test_heights_must_fit_the_channel_model() -> None:
    with pytest.raises(ScenarioError, match=r"'channel.ut_height_m' = 1 m: uma needs 1.5 m <= h_UT <= 22.5 m"):
        parse_scenario({"channel": {"ut_height_m": 1.0}})
    with pytest.raises(ScenarioError, match=r"'channel.bs_height_m' = 0.8 m: must be above channel.ut_height_m = 1 m"):
        parse_scenario({"channel": {"model": "inh", "bs_height_m": 0.8}, "distance_min_m": 2.0, "distance_max_m": 20.0})


def test_bs_compute_needs_a_time_or_a_preset() -> None:
    with pytest.raises(ScenarioError, match=r"'bs_layer_time_s' and 'bs_preset' are both unset"):
        parse_scenario({"bs_preset": None})
    assert parse_scenario({"bs_preset": None, "bs_layer_time_s": 1e-3}).bs_layer_time_s == 1e-3


def test_every_error_is_reported_at_once() -> None:
    with pytest.raises(ScenarioError) as info:
        parse_scenario({"num_devices": 0, "seed": -1})
    message = str(info.value)
    assert "'num_devices' = 0: must be >= 1" in message
    assert "'seed' = -1: must be >= 0" in message


def test_bad_toml_is_a_scenario_error(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"not valid TOML"):
        load_scenario(_write(tmp_path, "num_devices = = 3\n"))


def test_scenario_is_frozen() -> None:
    scenario = Scenario.default()
    with pytest.raises(ValueError, match="frozen"):
        scenario.num_devices = 3  # type: ignore[misc]
