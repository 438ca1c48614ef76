"""wdmoe.validation: one message format for every config file (scenario, cluster)."""

from __future__ import annotations

import pytest

from wdmoe.config import ScenarioError, parse_scenario
from wdmoe.plan.cluster import parse_cluster
from wdmoe.plan.errors import ClusterError
from wdmoe.validation import unit_of

DEVICE = {"name": "x", "preset": "jetson-orin-nano", "free_memory_bytes": 10, "link_rate_bps": 1e6}


def test_units_from_names() -> None:
    assert [unit_of(n) for n in ("bandwidth_hz", "bs_tx_power_dbm", "noise_figure_db", "mem_bytes_per_s",
                                 "flops_per_s", "free_memory_bytes", "overhead_s", "activation_bits", "load")] == [
        "Hz", "dBm", "dB", "bytes/s", "FLOP/s", "bytes", "s", "bits", ""]


def test_scenario_and_cluster_say_a_bound_the_same_way() -> None:
    with pytest.raises(ScenarioError, match=r"^scenario field 'bandwidth_hz' = -5 Hz: must be > 0$"):
        parse_scenario({"bandwidth_hz": -5.0})
    with pytest.raises(ClusterError, match=r"cluster field 'bandwidth_hz' = -5 Hz: must be > 0$"):
        parse_cluster({"bandwidth_hz": -5.0, "devices": [DEVICE]})


def test_unknown_key_in_a_list_lists_that_tables_keys() -> None:
    with pytest.raises(ClusterError, match=r"unknown key 'devices\[0\]\.colour' \(= 'red'\); allowed keys here: "
                                           r"name, preset, free_memory_bytes"):
        parse_cluster({"devices": [{**DEVICE, "colour": "red"}]})


def test_missing_field_is_named() -> None:
    with pytest.raises(ClusterError, match=r"cluster field 'devices' is missing"):
        parse_cluster({})
