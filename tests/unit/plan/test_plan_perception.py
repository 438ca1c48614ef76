"""Perception: the registry's expiry, and cluster files whose errors name the field, the value and the unit."""

from __future__ import annotations

from pathlib import Path

import pytest

from wdmoe.plan.cluster import load_cluster, parse_cluster
from wdmoe.plan.errors import ClusterError
from wdmoe.plan.status import Registry, ResourceStatus
from wdmoe.radio.compute import PRESETS


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def status(device: str, at_s: float, free: int = 1_000_000) -> ResourceStatus:
    return ResourceStatus(device, PRESETS["jetson-orin-nx"], free, at_s, link_rate_bps=50e6)


def test_registry_expires_stale_devices_and_keeps_the_newest() -> None:
    clock = FakeClock()
    registry = Registry(ttl_s=3.0, clock=clock)
    registry.publish(status("a", 100.0))
    registry.publish(status("b", 100.0))
    registry.publish(status("a", 101.0, free=5))
    registry.publish(status("a", 100.5, free=7))  # older than what is held: ignored

    clock.now_s = 103.5
    live = registry.live()

    assert [s.device for s in live] == ["a"]  # b is 3.5 s old
    assert live[0].free_memory_bytes == 5
    clock.now_s = 104.0
    assert [s.device for s in registry.live()] == ["a"]  # exactly ttl old: still live
    clock.now_s = 104.1
    assert registry.live() == ()


def test_registry_remove_forgets_at_once() -> None:
    registry = Registry(ttl_s=10.0, clock=FakeClock())
    registry.publish(status("a", 100.0))
    registry.remove("a")
    assert registry.live() == ()


def test_cluster_error_names_field_value_and_unit() -> None:
    data = {"devices": [{"name": "x", "preset": "jetson-orin-nano", "free_memory_bytes": -1, "link_rate_bps": 1e6}]}
    with pytest.raises(ClusterError, match=r"devices\[0\]\.free_memory_bytes' = -1 bytes: must be >= 0"):
        parse_cluster(data)
    data["devices"][0].update(free_memory_bytes=10, link_rate_bps=-3.0)
    with pytest.raises(ClusterError, match=r"link_rate_bps' = -3 bit/s: must be > 0"):
        parse_cluster(data)


def test_cluster_refuses_unknown_keys_presets_and_missing_links() -> None:
    device = {"name": "x", "preset": "jetson-orin-nano", "free_memory_bytes": 10, "link_rate_bps": 1e6}
    with pytest.raises(ClusterError, match=r"unknown key 'devices\[0\]\.colour'"):
        parse_cluster({"devices": [{**device, "colour": "red"}]})
    with pytest.raises(ClusterError, match="unknown; known presets"):
        parse_cluster({"devices": [{**device, "preset": "cray-1"}]})
    with pytest.raises(ClusterError, match="exactly one of link_rate_bps"):
        parse_cluster({"devices": [{**device, "link_rate_bps": None}]})
    with pytest.raises(ClusterError, match="appears twice"):
        parse_cluster({"devices": [device, device]})


def test_shipped_cluster_files_load(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[3] / "configs" / "clusters"
    lab = load_cluster(root / "lab.toml")
    small = load_cluster(root / "too-small.toml")

    assert len(lab.statuses) == 7 and len({s.profile.name for s in lab.statuses}) == 4
    assert lab.radio.scenario is not None and lab.radio.scenario.channel.model == "inh"
    assert [s.device for s in small.statuses] == ["nano-0", "nano-1"]
    bad = tmp_path / "bad.toml"
    bad.write_text("devices = [", encoding="utf-8")
    with pytest.raises(ClusterError, match="not valid TOML"):
        load_cluster(bad)


def test_plan_package_imports_without_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, wdmoe.plan, wdmoe.plan.planner, wdmoe.plan.replan, wdmoe.plan.planfile, wdmoe.plan.cluster; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
