"""`wdmoe demo`: the whole path on a small model, checked against the unsplit model, with the policies compared.

Until the project ships its trained model, the demo builds a small random Mixtral (seeded, so every run is the
same), splits it over in-process devices, generates with the model's own top-k and checks the tokens against the
unsplit Hugging Face model, then generates under TopK, WLR and the joint policy over the default radio scenario and
prints their modeled TTFT, TPOT, bytes on air and energy side by side.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from wdmoe.cli.common import console, device_table, offline, print_json, user_errors
from wdmoe.cli.run_cmd import generate_report

DEMO_POLICIES = ("topk", "wlr", "joint")


def demo(
    devices: Annotated[int, typer.Option(min=1, help="In-process expert devices.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 24,
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help="WLR threshold.")] = 0.5,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Split a small random Mixtral over in-process devices, check it against the unsplit model, compare policies."""
    offline()
    with user_errors():
        import torch

        from wdmoe.config import Scenario
        from wdmoe.model.split import split_model
        from wdmoe.model.tiny import tiny_model
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.model import DistributedMoE

        reference: Any = tiny_model("mixtral", seed=0, hidden_size=128, num_hidden_layers=4, intermediate_size=256)
        ids = [1, 17, 42, 99, 7, 64, 3, 11]
        expected = reference.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )[0, len(ids) :].tolist()
        policies: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="wdmoe-demo-") as tmp:
            split_model(reference, Path(tmp) / "split", devices)
            model = DistributedMoE.from_pretrained(Path(tmp) / "split")
            report = generate_report(model, ids, max_new_tokens)
            for name in DEMO_POLICIES:
                model.set_policy(make_policy(name, theta=theta), Scenario.default(num_devices=devices))
                run = generate_report(model, ids, max_new_tokens)
                policies[name] = {
                    "ttft_s": run["latency"]["ttft_s"],
                    "tpot_s": run["latency"]["tpot_s"],
                    "bytes_on_air": run["bytes_on_air"],
                    "energy_j": run["energy_j"],
                    "experts_per_token_mean": run["experts_per_token_mean"],
                    "token_agreement_with_topk": _agreement(run["tokens"], expected),
                }
            model.close()
        report["model"] = "random mixtral (hidden 128, 4 layers, 8 experts, top-2)"
        report["matches_unsplit"] = report["tokens"] == expected
        report["policies"] = policies
    if json_out:
        print_json(report)
        return
    console.print(f"[bold]model:[/bold] {report['model']}, {devices} in-process devices")
    console.print(f"[bold]prompt ids:[/bold] {ids}")
    console.print(f"[bold]new tokens:[/bold] {report['tokens']}")
    verdict = "[green]yes[/green]" if report["matches_unsplit"] else "[red]NO[/red]"
    console.print(f"model's own top-k, token-identical to the unsplit Hugging Face model: {verdict}")
    console.print(device_table(report))
    console.print(_policy_table(policies, theta))
    console.print("Radio numbers are modeled by wdmoe.radio with our [R] default scenario, not the papers' values.")
    if not report["matches_unsplit"]:
        raise typer.Exit(1)


def _agreement(tokens: list[int], expected: list[int]) -> float:
    return sum(a == b for a, b in zip(tokens, expected, strict=True)) / max(1, len(expected))


def _policy_table(policies: dict[str, dict[str, Any]], theta: float) -> Table:
    table = Table(title=f"policies over the default scenario (WLR theta = {theta})")
    for column in ("policy", "TTFT ms", "TPOT ms", "kB on air", "energy J", "experts/token", "same tokens as TopK"):
        table.add_column(column, justify="right")
    for name, row in policies.items():
        table.add_row(
            name, f"{row['ttft_s'] * 1e3:.3f}", f"{row['tpot_s'] * 1e3:.3f}", f"{row['bytes_on_air'] / 1e3:.1f}",
            f"{row['energy_j']:.3f}", f"{row['experts_per_token_mean']:.2f}",
            f"{row['token_agreement_with_topk']:.0%}",
        )
    return table
