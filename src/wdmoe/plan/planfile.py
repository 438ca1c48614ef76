"""plan.toml: a `Plan` on disk, written by hand (tomli_w is not installed) and read with the stdlib's tomllib.

Contract: `read_plan(write_plan(plan, path))` gives back a plan with the same devices, copies, bit widths, sizes,
popularity, latencies and tiers; floats are written with repr, so they round-trip exactly. A bad file raises
`PlanError` naming the file, the field, the value and the rule (the `PlanFile` schema: finite numbers, bit widths
of the stored formats, device indices inside the file's devices). Layout: top-level scalars, then one [[devices]]
table per device (Placement device k is the k-th), one [[layers]] table per MoE layer, and, for intra plans, one
[[tiers]] table per memory tier.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError

from wdmoe.atomic import write_text_atomic
from wdmoe.input_files import load_toml
from wdmoe.plan.deployment import Candidate, Plan, PlanKind
from wdmoe.plan.errors import PlanError
from wdmoe.plan.intra import Tier
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import DeviceProfile
from wdmoe.validation import MAX_DEVICES, Strict, describe_errors

FORMAT = "wdmoe-plan/1"
_STATUS_FIELDS = (
    "free_memory_bytes",
    "timestamp_s",
    "link_rate_bps",
    "distance_m",
    "load",
    "host_memory_bytes",
    "host_bytes_per_s",
)
_PROFILE_FIELDS = ("flops_per_s", "mem_bytes_per_s", "overhead_s", "tx_power_w", "compute_power_w")


PlanBits = Literal[4, 8, 16, 32]  # the stored widths `wdmoe split` writes
NonNegative = Annotated[float, Field(ge=0.0)]


class _DeviceRow(Strict):
    device: str
    profile: str
    flops_per_s: Annotated[float, Field(gt=0.0)]  # FLOP/s
    mem_bytes_per_s: Annotated[float, Field(gt=0.0)]  # bytes/s
    overhead_s: NonNegative  # s
    tx_power_w: NonNegative  # W
    compute_power_w: NonNegative  # W
    free_memory_bytes: Annotated[int, Field(ge=0)]
    timestamp_s: float = 0.0
    link_rate_bps: Annotated[float, Field(gt=0.0)] | None = None
    distance_m: Annotated[float, Field(gt=0.0)] | None = None
    load: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    host_memory_bytes: Annotated[int, Field(ge=0)] = 0
    host_bytes_per_s: NonNegative = 0.0
    used_bytes: Annotated[int, Field(ge=0)] = 0


class _LayerRow(Strict):
    layer: Annotated[int, Field(ge=0)]
    copies: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]]
    bits: list[PlanBits]
    expert_bytes: list[Annotated[int, Field(ge=0)]]
    popularity: list[NonNegative]


class _CandidateRow(Strict):
    label: str
    latency_s: NonNegative


class _TierRow(Strict):
    name: str
    experts: list[tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]]
    capacity_bytes: Annotated[int, Field(ge=0)]
    used_bytes: Annotated[int, Field(ge=0)]
    bytes_per_s: NonNegative
    expected_s: NonNegative


class PlanFile(Strict):
    """The shape of plan.toml (module docstring); `parse_plan` checks a file against it before building the Plan."""

    format: str
    kind: Literal["intra", "inter"]
    model: str
    moe_layers: list[Annotated[int, Field(ge=0)]]
    num_experts: Annotated[int, Field(ge=1)]
    expected_latency_s: NonNegative
    round_robin_latency_s: NonNegative | None = None
    server: Annotated[int, Field(ge=0)] | None = None
    optimality_gap: NonNegative | None = None
    devices: Annotated[list[_DeviceRow], Field(min_length=1, max_length=MAX_DEVICES)]
    layers: Annotated[list[_LayerRow], Field(min_length=1)]
    candidates: tuple[_CandidateRow, ...] = ()
    tiers: tuple[_TierRow, ...] = ()


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        return repr(float(v))
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple | np.ndarray):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _table(header: str, fields: dict[str, Any]) -> list[str]:
    return [f"\n[[{header}]]", *(f"{k} = {_value(v)}" for k, v in fields.items() if v is not None)]


def plan_toml(plan: Plan) -> str:
    """The text of plan.toml."""
    top = {
        "format": FORMAT,
        "kind": plan.kind.value,
        "model": plan.model_id,
        "moe_layers": list(plan.moe_layers),
        "num_experts": plan.num_experts,
        "expected_latency_s": plan.expected_latency_s,
        "round_robin_latency_s": plan.round_robin_latency_s,
        "server": plan.server,
        "optimality_gap": plan.optimality_gap,
    }
    lines = [
        f"# wdmoe deployment plan ({plan.kind.value}-server), written by `wdmoe plan`; Placement device k is the",
        "# k-th [[devices]] table; copies list each expert's devices, primary first. Sizes in bytes, times in s.",
        *(f"{k} = {_value(v)}" for k, v in top.items() if v is not None),
    ]
    used = plan.memory_used_bytes()
    for k, s in enumerate(plan.devices):
        fields = {
            "device": s.device,
            "profile": s.profile.name,
            **{f: getattr(s.profile, f) for f in _PROFILE_FIELDS},
            **{f: getattr(s, f) for f in _STATUS_FIELDS},
            "used_bytes": int(used[k]),
        }
        lines += _table("devices", fields)
    for pos, layer in enumerate(plan.moe_layers):
        lines += _table(
            "layers",
            {
                "layer": layer,
                "copies": [list(ids) for ids in plan.copies[pos]],
                "bits": plan.bits[pos],
                "expert_bytes": plan.expert_bytes[pos],
                "popularity": plan.popularity[pos],
            },
        )
    for c in plan.candidates:
        lines += _table("candidates", {"label": c.label, "latency_s": c.latency_s})
    for t in plan.tiers:
        lines += _table(
            "tiers",
            {
                "name": t.name,
                "experts": [list(p) for p in t.experts],
                "capacity_bytes": t.capacity_bytes,
                "used_bytes": t.used_bytes,
                "bytes_per_s": t.bytes_per_s,
                "expected_s": t.expected_s,
            },
        )
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, path: str | Path) -> Path:
    return write_text_atomic(path, plan_toml(plan))  # a kill mid-write keeps the old plan whole


def _status(d: dict[str, Any]) -> ResourceStatus:
    profile = DeviceProfile(
        d["profile"],
        float(d["flops_per_s"]),
        float(d["mem_bytes_per_s"]),
        float(d["free_memory_bytes"]),
        float(d["tx_power_w"]),
        float(d["compute_power_w"]),
        float(d["overhead_s"]),
    )
    return ResourceStatus(
        d["device"],
        profile,
        int(d["free_memory_bytes"]),
        float(d["timestamp_s"]),
        d.get("link_rate_bps"),
        d.get("distance_m"),
        float(d["load"]),
        int(d["host_memory_bytes"]),
        float(d["host_bytes_per_s"]),
    )


def parse_plan(data: dict[str, Any], source: str = "plan") -> Plan:
    if data.get("format") != FORMAT:
        raise PlanError(f"{source}: field 'format' = {data.get('format')!r}; expected {FORMAT!r} (a `wdmoe plan` file)")
    try:
        PlanFile.model_validate(data)
    except ValidationError as exc:
        raise PlanError(f"{source}: " + describe_errors(exc, "plan", PlanFile)) from None
    num_devices, num_experts = len(data["devices"]), int(data["num_experts"])
    for pos, row in enumerate(data["layers"]):
        for name in ("copies", "bits", "expert_bytes", "popularity"):
            if len(row[name]) != num_experts:
                raise PlanError(f"{source}: plan field 'layers[{pos}].{name}' lists {len(row[name])} experts; "
                                f"num_experts = {num_experts}")
        bad = [d for ids in row["copies"] for d in ids if d >= num_devices]
        if bad:
            raise PlanError(f"{source}: plan field 'layers[{pos}].copies' puts an expert on device {bad[0]}; the "
                            f"file's [[devices]] tables number {num_devices} (indices 0..{num_devices - 1})")
    try:
        layers = sorted(data["layers"], key=lambda t: t["layer"])
        copies = tuple(tuple(tuple(int(d) for d in ids) for ids in t["copies"]) for t in layers)
        tiers = tuple(
            Tier(
                t["name"],
                tuple((int(a), int(b)) for a, b in t["experts"]),
                int(t["capacity_bytes"]),
                int(t["used_bytes"]),
                float(t["bytes_per_s"]),
                float(t["expected_s"]),
            )
            for t in data.get("tiers", [])
        )
        plan = Plan(
            PlanKind(data["kind"]),
            str(data["model"]),
            tuple(_status(d) for d in data["devices"]),
            tuple(int(t["layer"]) for t in layers),
            copies,
            np.array([t["bits"] for t in layers], dtype=np.int64),
            np.array([t["expert_bytes"] for t in layers], dtype=np.int64),
            np.array([t["popularity"] for t in layers], dtype=float),
            float(data["expected_latency_s"]),
            data.get("round_robin_latency_s"),
            tiers,
            data.get("server"),
            tuple(Candidate(str(c["label"]), float(c["latency_s"])) for c in data.get("candidates", [])),
            data.get("optimality_gap"),
        )
        plan.to_placement()  # validates device ids and expert counts
    except KeyError as exc:
        raise PlanError(f"{source}: field {exc.args[0]!r} is missing") from None
    except (TypeError, ValueError) as exc:  # PlacementError included
        raise PlanError(f"{source}: malformed plan: {exc}") from None
    return plan


def read_plan(path: str | Path) -> Plan:
    """Read plan.toml; raises PlanError for a missing file, bad TOML or a malformed plan."""
    path = Path(path)
    if not path.exists():
        raise PlanError(f"plan file {path} does not exist; write one with `wdmoe plan --out {path}`")
    return parse_plan(load_toml(path, "plan", PlanError), source=str(path))
