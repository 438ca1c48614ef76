"""Cluster files: a TOML description of the devices (and radio) a model is planned onto, validated.

Contract: `load_cluster(path)` reads a TOML file into a `Cluster` (one `ResourceStatus` per device, and the
`RadioSettings`) or raises `ClusterError` naming the field, the value and its unit
(`cluster field 'devices[2].free_memory_bytes' = -1 bytes: must be >= 0`); unknown keys are refused by name.

    description = "..."            # what the cluster is for
    bandwidth_hz = 40e6            # Hz, split equally among the active devices of a layer step
    activation_bits = 16           # bits per hidden value on the air
    bs_layer_time_s = 0.0004       # s per MoE layer at the BS
    channel_samples = 8            # channel realizations (devices given by distance only)
    seed = 0
    [scenario]                     # optional: a wdmoe scenario's channel/fading/power keys (configs/*.toml)
    [[devices]]
    name = "agx-0"                 # unique
    preset = "jetson-agx-orin"     # a wdmoe.radio.compute preset, or give flops_per_s and mem_bytes_per_s
    free_memory_bytes = 5_000_000  # bytes free for experts
    distance_m = 6.0               # m, through [scenario]; or link_rate_bps (bit/s over the whole band)
    count = 1                      # this many identical devices, named name-0, name-1, ... when > 1
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError

from wdmoe.config import ScenarioError, parse_scenario
from wdmoe.input_files import load_toml
from wdmoe.plan.errors import ClusterError
from wdmoe.plan.links import RadioSettings
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import PRESETS, DeviceProfile
from wdmoe.validation import MAX_DEVICES, ActivationBits, BandwidthHz, Seed, Strict, describe_errors

_PROFILE_FIELDS = ("flops_per_s", "mem_bytes_per_s", "overhead_s", "tx_power_w", "compute_power_w")


class DeviceEntry(Strict):
    """One [[devices]] table (module docstring); None fields come from the preset."""

    name: Annotated[str, Field(min_length=1)]
    preset: str | None = None
    free_memory_bytes: Annotated[int, Field(ge=0)]  # bytes free for expert weights
    link_rate_bps: Annotated[float, Field(gt=0.0)] | None = None  # bit/s over the whole band
    distance_m: Annotated[float, Field(gt=0.0)] | None = None  # m, ground distance to the BS
    load: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0  # utilisation
    host_memory_bytes: Annotated[int, Field(ge=0)] = 0  # bytes, intra-server host tier
    host_bytes_per_s: Annotated[float, Field(ge=0.0)] = 0.0  # bytes/s of that tier
    flops_per_s: Annotated[float, Field(gt=0.0)] | None = None  # FLOP/s
    mem_bytes_per_s: Annotated[float, Field(gt=0.0)] | None = None  # bytes/s
    overhead_s: Annotated[float, Field(ge=0.0)] | None = None  # s per expert call
    tx_power_w: Annotated[float, Field(ge=0.0)] | None = None  # W
    compute_power_w: Annotated[float, Field(ge=0.0)] | None = None  # W
    count: Annotated[int, Field(ge=1, le=MAX_DEVICES)] = 1


class ClusterFile(Strict):
    """The whole file (module docstring)."""

    description: str = ""
    bandwidth_hz: BandwidthHz = 20e6  # Hz
    activation_bits: ActivationBits = 16  # bits
    bs_layer_time_s: Annotated[float, Field(ge=0.0)] = 0.0  # s
    channel_samples: Annotated[int, Field(ge=1, le=1024)] = 8
    seed: Seed = 0
    scenario: dict[str, Any] | None = None
    devices: Annotated[list[DeviceEntry], Field(min_length=1, max_length=MAX_DEVICES)]


@dataclass(frozen=True)
class Cluster:
    """A validated cluster: its devices' statuses (in file order) and the shared radio settings."""

    source: str
    description: str
    statuses: tuple[ResourceStatus, ...]
    radio: RadioSettings


def _profile(entry: DeviceEntry, where: str) -> DeviceProfile:
    if entry.preset is not None and entry.preset not in PRESETS:
        raise ClusterError(
            f"cluster field '{where}.preset' = {entry.preset!r}: unknown; known presets: {', '.join(sorted(PRESETS))}"
        )
    base = PRESETS[entry.preset] if entry.preset else None
    if base is None and (entry.flops_per_s is None or entry.mem_bytes_per_s is None):
        raise ClusterError(
            f"cluster field '{where}': give a preset, or both flops_per_s (FLOP/s) and mem_bytes_per_s (bytes/s)"
        )
    base = base or DeviceProfile(entry.name, 1.0, 1.0, 0.0, 0.2, 0.0)
    explicit = {f: getattr(entry, f) for f in _PROFILE_FIELDS if getattr(entry, f) is not None}
    return dataclasses.replace(
        base, name=entry.preset or entry.name, memory_bytes=float(entry.free_memory_bytes), **explicit
    )


def parse_cluster(data: dict[str, Any], source: str = "cluster", now_s: float = 0.0) -> Cluster:
    """Validate a TOML-shaped dict into a Cluster; statuses get timestamp `now_s`."""
    try:
        spec = ClusterFile.model_validate(data)
    except ValidationError as exc:
        raise ClusterError(f"{source}: " + describe_errors(exc, "cluster", ClusterFile)) from None
    total = sum(entry.count for entry in spec.devices)
    if total > MAX_DEVICES:
        raise ClusterError(f"{source}: cluster field 'devices' describes {total} devices (count included); the limit "
                           f"is {MAX_DEVICES}")
    scenario = None
    if spec.scenario is not None:
        try:
            scenario = parse_scenario(spec.scenario, source=f"{source} [scenario]").radio
        except ScenarioError as exc:
            raise ClusterError(str(exc)) from None
    statuses = []
    for i, entry in enumerate(spec.devices):
        where = f"devices[{i}]"
        profile = _profile(entry, where)
        names = [entry.name] if entry.count == 1 else [f"{entry.name}-{k}" for k in range(entry.count)]
        for name in names:
            try:
                statuses.append(
                    ResourceStatus(
                        name,
                        profile,
                        entry.free_memory_bytes,
                        now_s,
                        entry.link_rate_bps,
                        entry.distance_m,
                        entry.load,
                        entry.host_memory_bytes,
                        entry.host_bytes_per_s,
                    )
                )
            except ClusterError as exc:
                raise ClusterError(f"{source}: cluster field '{where}': {exc}") from None
    seen: set[str] = set()
    for s in statuses:
        if s.device in seen:
            raise ClusterError(f"{source}: device name {s.device!r} appears twice; names must be unique")
        seen.add(s.device)
    radio = RadioSettings(
        spec.bandwidth_hz, spec.activation_bits, spec.bs_layer_time_s, scenario, spec.channel_samples, spec.seed
    )
    return Cluster(source, spec.description, tuple(statuses), radio)


def load_cluster(path: str | Path, now_s: float = 0.0) -> Cluster:
    """Read a TOML cluster file; raises ClusterError for bad TOML, bad values or unknown keys."""
    return parse_cluster(load_toml(path, "cluster", ClusterError), source=str(path), now_s=now_s)
