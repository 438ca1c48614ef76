"""`wdmoe split` (HF model directory -> BS part + device shards) and `wdmoe make-tiny` (a tiny random model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wdmoe.atomic import write_dir_atomic
from wdmoe.cli.common import JsonOut, console, offline, print_json, user_errors


def split(
    model_dir: Annotated[Path, typer.Argument(help="A Hugging Face model directory (save_pretrained).")],
    devices: Annotated[
        int | None, typer.Option("--devices", "-n", help="Number of expert devices (default 8, or the plan's).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="The split directory to write.")] = Path("split"),
    json_out: JsonOut = False,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="A plan.toml from `wdmoe plan`: use its placement.")
    ] = None,
    bits: Annotated[int | None, typer.Option(help="Store every expert at 8 or 4 bits (weight-only quantized).")] = None,
    bits_file: Annotated[
        Path | None, typer.Option(help='Per-expert widths, TOML/JSON: default = 8, [experts] "0:3" = 4.')
    ] = None,
) -> None:
    """Split MODEL_DIR into the BS part, one safetensors shard per device, and a manifest with sha256 sums."""
    offline()
    with user_errors():
        from wdmoe.model.split import ExpertBits, read_bits_file
        from wdmoe.model.stream_split import split_checkpoint
        from wdmoe.placement import Placement

        planned: Placement | None = None
        plan_bits: dict[tuple[int, int], int] | None = None
        if plan is not None:
            from wdmoe.plan.planfile import read_plan

            the_plan = read_plan(plan)
            planned = the_plan.to_placement()
            plan_bits = {
                (layer, expert): int(the_plan.bits[pos, expert])
                for pos, layer in enumerate(the_plan.moe_layers)
                for expert in range(the_plan.num_experts)
            }
            if all(b == 32 for b in plan_bits.values()):
                plan_bits = None  # planned at the stored width: nothing to quantize
            if devices is not None and devices != planned.num_devices:
                raise ValueError(f"--devices = {devices}, but {plan} places experts on {planned.num_devices} devices")
        devices = planned.num_devices if planned is not None else (8 if devices is None else devices)
        if devices < 1:
            raise ValueError(f"--devices = {devices}: need at least 1 device")
        if bits is not None and bits_file is not None:
            raise ValueError("give --bits or --bits-file, not both")
        widths: ExpertBits = read_bits_file(bits_file) if bits_file is not None else bits
        if widths is None:
            widths = plan_bits  # the plan's per-expert widths, unless --bits/--bits-file overrides them
        manifest = split_checkpoint(model_dir, out, devices, planned, bits=widths)
    if json_out:
        print_json(manifest.to_json())
        return
    placement: Placement = manifest.placement
    console.print(
        f"split [bold]{manifest.family}[/bold] into {out}: BS part + {devices} devices, "
        f"{len(placement.moe_layers)} MoE layers x {placement.num_experts} experts"
    )
    for device in range(devices):
        held = placement.experts_on(device)
        console.print(f"  device {device}: {len(held)} (layer, expert) pairs, e.g. {held[:3]}")


def make_tiny(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to save the model.")],
    family: Annotated[str, typer.Option(help="mixtral, qwen2_moe, olmoe, qwen3_moe or deepseek_v3.")] = "mixtral",
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 64,
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    json_out: JsonOut = False,
) -> None:
    """Save a tiny random MoE model of a supported family (for trying wdmoe without a real checkpoint)."""
    offline()
    with user_errors():
        from wdmoe.model.tiny import tiny_model

        if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
            raise FileExistsError(f"{out} exists and is not a model directory; choose an empty or new --out")
        model = tiny_model(family, seed=seed, hidden_size=hidden, num_hidden_layers=layers)
        write_dir_atomic(out, model.save_pretrained)
        parameters = sum(p.numel() for p in model.parameters())
    if json_out:
        print_json({"family": family, "hidden_size": hidden, "layers": layers, "seed": seed, "parameters": parameters,
                    "out": str(out)})
        return
    console.print(f"saved a tiny random {family} model (hidden {hidden}, {layers} layers, {parameters:,} parameters) "
                  f"to {out}", highlight=False)
