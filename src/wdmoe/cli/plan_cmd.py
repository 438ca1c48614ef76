"""`wdmoe plan`: place a model's experts on a cluster (CoEL deployment, wdmoe.plan) and write plan.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wdmoe.cli.common import JsonOut, console, offline, print_json, user_errors


def plan(
    cluster: Annotated[Path, typer.Option(help="A cluster TOML file (configs/clusters/*.toml).")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="A Hugging Face model directory (default: the shipped model).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The plan file to write.")] = Path("plan.toml"),
    json_out: JsonOut = False,
    bits: Annotated[
        int | None, typer.Option(help="Bit width of every expert: 32, 16, 8 or 4 (default: the model's dtype).")
    ] = None,
    calibration_tokens: Annotated[
        int, typer.Option(min=0, help="Held-out tokens for expert popularity (0: uniform popularity).")
    ] = 2048,
    samples: Annotated[int | None, typer.Option(min=1, help="Channel samples (default: the cluster's).")] = None,
    max_copies: Annotated[int, typer.Option(min=1, help="Copies per expert, primary included (1: no replicas).")] = 2,
    exact: Annotated[
        bool, typer.Option("--exact/--no-exact", metavar="",
                           help="Solve the inter-server placement exactly (by layers or a MILP); small clusters.")
    ] = False,
    time_limit: Annotated[
        float, typer.Option(min=0.1, help="With --exact: the exact solver's time limit, seconds (it reports its gap).")
    ] = 60.0,
) -> None:
    """Plan where the model's experts live on the cluster's devices, minimizing the expected per-token latency
    (one objective, the radio model: BS + link + device in every MoE layer) under their memory limits; write
    plan.toml (use it with `wdmoe split --plan`)."""
    offline()
    with user_errors():
        import dataclasses

        import numpy as np

        from wdmoe.model.shipped import default_model_dir
        from wdmoe.plan.calibrate import calibrate, requirement_of
        from wdmoe.plan.cluster import load_cluster
        from wdmoe.plan.exact import ExactLimits
        from wdmoe.plan.inter import SearchConfig
        from wdmoe.plan.planfile import write_plan
        from wdmoe.plan.planner import PlannerConfig, check_fits, plan_deployment

        loaded = load_cluster(cluster)
        radio = loaded.radio if samples is None else dataclasses.replace(loaded.radio, channel_samples=samples)
        model_dir = model or default_model_dir()
        from wdmoe.model.split import load_hf_model

        requirement = requirement_of(load_hf_model(model_dir), str(model_dir))
        widths = None if bits is None else requirement.check_bits(np.array(bits))
        check_fits(requirement, loaded.statuses, widths)  # before the calibration run: fail fast with the sizes
        source = "none (uniform popularity)"
        if calibration_tokens > 0:
            requirement, source = calibrate(model_dir, calibration_tokens)
        limits = ExactLimits(time_limit_s=time_limit) if exact else None
        config = PlannerConfig(SearchConfig(max_copies=max_copies), exact=limits)
        result = plan_deployment(requirement, loaded.statuses, radio, widths, config)
        write_plan(result, out)
    report = _report(result, out, source, radio.bs_layer_time_s * len(result.moe_layers))
    if json_out:
        print_json(report)
        return
    console.print(_table(report))
    for line in _summary(report, str(cluster), len(report["devices"])):
        console.print(line)


def _summary(report: dict[str, Any], cluster: str, num_devices: int) -> list[str]:
    """The chosen plan and every alternative, each under the one objective (never a ratio across two models)."""
    bs_ms = report["bs_latency_s"] * 1e3
    lines = [
        f"{report['kind']}-server plan for {report['model']} on {cluster}; expected ms per token, one objective "
        f"(the radio model: BS {bs_ms:.3f} ms + link + device in every MoE layer):"
    ]
    for c in report["candidates"]:
        chosen = " (chosen)" if c["label"].startswith(report["kind"]) else ""
        lines.append(f"  {c['label']:<32} {c['latency_s'] * 1e3:9.4f} ms{chosen}")
    over = "" if report["round_robin_fits"] else " (over memory: it does not fit)"
    lines.append(
        f"  {'round-robin, e on device e mod ' + str(num_devices):<32} {report['round_robin_latency_s'] * 1e3:9.4f} ms"
        + over
    )
    gap = report["optimality_gap"]
    if gap is not None:
        lines.append("  exact: proven optimal" if gap == 0.0 else
                     f"  exact: stopped at its time limit; optimality gap {gap:.2%} (the optimum is at most "
                     f"this much below the plan)")
    lines.append(f"popularity from {report['popularity_source']}; wrote {report['out']}")
    return lines


def _report(result: Any, out: Path, source: str, bs_s: float) -> dict[str, Any]:
    from wdmoe.plan.deployment import copies_memory_bytes, round_robin_copies

    used = result.memory_used_bytes()
    rr = copies_memory_bytes(
        round_robin_copies(len(result.moe_layers), result.num_experts, len(result.devices)),
        result.expert_bytes,
        len(result.devices),
    )
    devices = []
    for k, s in enumerate(result.devices):
        held = [
            (result.moe_layers[p], e) for p, row in enumerate(result.copies) for e, ids in enumerate(row) if k in ids
        ]
        primary = sum(1 for row in result.copies for ids in row if ids[0] == k)
        devices.append(
            {
                "device": s.device,
                "profile": s.profile.name,
                "free_memory_bytes": s.free_memory_bytes,
                "used_bytes": int(used[k]),
                "primaries": primary,
                "replicas": len(held) - primary,
            }
        )
    return {
        "out": str(out),
        "kind": result.kind.value,
        "model": result.model_id,
        "popularity_source": source,
        "expected_latency_s": result.expected_latency_s,
        "round_robin_latency_s": result.round_robin_latency_s,
        "candidates": [{"label": c.label, "latency_s": c.latency_s} for c in result.candidates],
        "optimality_gap": result.optimality_gap,
        "bs_latency_s": bs_s,
        "round_robin_fits": bool(all(rr[k] <= s.free_memory_bytes for k, s in enumerate(result.devices))),
        "devices": devices,
        "tiers": [
            {"name": t.name, "experts": len(t.experts), "used_bytes": t.used_bytes, "expected_s": t.expected_s}
            for t in result.tiers
        ],
    }


def _table(report: dict[str, Any]) -> Table:
    table = Table(title=f"{report['kind']}-server plan")
    for column in ("device", "profile", "free MB", "used MB", "primaries", "replicas"):
        table.add_column(column, justify="right")
    for d in report["devices"]:
        table.add_row(
            d["device"],
            d["profile"],
            f"{d['free_memory_bytes'] / 1e6:.2f}",
            f"{d['used_bytes'] / 1e6:.2f}",
            str(d["primaries"]),
            str(d["replicas"]),
        )
    return table
