"""`wdmoe demo`: the whole path on a small model, checked against the unsplit model.

Until the project ships its trained model, the demo builds a small random Mixtral (seeded, so every run is the
same), splits it over 8 in-process devices, generates, and compares with the unsplit Hugging Face model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from wdmoe.cli.common import console, device_table, offline, print_json, user_errors
from wdmoe.cli.run_cmd import generate_report


def demo(
    devices: Annotated[int, typer.Option(min=1, help="In-process expert devices.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 24,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Split a small random Mixtral over in-process devices, generate, and check it against the unsplit model."""
    offline()
    with user_errors():
        import torch

        from wdmoe.model.split import split_model
        from wdmoe.model.tiny import tiny_model
        from wdmoe.runtime.model import DistributedMoE

        reference: Any = tiny_model("mixtral", seed=0, hidden_size=128, num_hidden_layers=4, intermediate_size=256)
        ids = [1, 17, 42, 99, 7, 64, 3, 11]
        with tempfile.TemporaryDirectory(prefix="wdmoe-demo-") as tmp:
            split_model(reference, Path(tmp) / "split", devices)
            model = DistributedMoE.from_pretrained(Path(tmp) / "split")
            report = generate_report(model, ids, max_new_tokens)
            model.close()
        expected = reference.generate(
            torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        )[0, len(ids) :].tolist()
        report["model"] = "random mixtral (hidden 128, 4 layers, 8 experts, top-2)"
        report["matches_unsplit"] = report["tokens"] == expected
    if json_out:
        print_json(report)
        return
    console.print(f"[bold]model:[/bold] {report['model']}, {devices} in-process devices, TopK routing")
    console.print(f"[bold]prompt ids:[/bold] {ids}")
    console.print(f"[bold]new tokens:[/bold] {report['tokens']}")
    verdict = "[green]yes[/green]" if report["matches_unsplit"] else "[red]NO[/red]"
    console.print(f"token-identical to the unsplit Hugging Face model: {verdict}")
    console.print(device_table(report))
    if not report["matches_unsplit"]:
        raise typer.Exit(1)
