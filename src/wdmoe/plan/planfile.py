"""plan.toml: a `Plan` on disk, written by hand (tomli_w is not installed) and read with the stdlib's tomllib.

Contract: `read_plan(write_plan(plan, path))` gives back a plan with the same devices, copies, bit widths, sizes,
popularity, latencies and tiers; floats are written with repr, so they round-trip exactly. A bad file raises
`PlanError` naming the field. Layout: top-level scalars, then one [[devices]] table per device (Placement device
k is the k-th), one [[layers]] table per MoE layer, and, for intra plans, one [[tiers]] table per memory tier.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from wdmoe.atomic import write_text_atomic
from wdmoe.plan.deployment import Candidate, Plan, PlanKind
from wdmoe.plan.errors import PlanError
from wdmoe.plan.intra import Tier
from wdmoe.plan.status import ResourceStatus
from wdmoe.radio.compute import DeviceProfile

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
    return write_text_atomic(path, plan_toml(plan))


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
    except (TypeError, ValueError) as exc:
        raise PlanError(f"{source}: malformed plan: {exc}") from None
    return plan


def read_plan(path: str | Path) -> Plan:
    """Read plan.toml; raises PlanError for a missing file, bad TOML or a malformed plan."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"plan file {path} does not exist; write one with `wdmoe plan --out {path}`") from None
    except tomllib.TOMLDecodeError as exc:
        raise PlanError(f"{path}: not valid TOML: {exc}") from None
    return parse_plan(data, source=str(path))
