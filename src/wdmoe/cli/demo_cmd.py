"""`wdmoe demo`: the shipped model split over in-process devices, checked and compared across policies.

The demo loads the shipped model (a small Mixtral-family MoE trained by `wdmoe train`), splits it over 8
in-process devices, generates for a prompt with the model's own top-k and checks the tokens against the unsplit
Hugging Face model, then runs TopK, WLR and the joint policy over the default radio scenario and prints, side by
side, the modeled TTFT, TPOT, bytes on air and energy of the generation, and the next-token accuracy on held-out
text under each policy.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from wdmoe.cli.common import JsonOut, console, device_table, offline, print_json, user_errors
from wdmoe.cli.run_cmd import generate_report

DEMO_POLICIES = ("topk", "wlr", "joint")
DEMO_PROMPT = "The best thing about a computer is"


def demo(
    prompt: Annotated[str, typer.Option(help="Prompt text.")] = DEMO_PROMPT,
    devices: Annotated[int, typer.Option(min=1, help="In-process expert devices.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 24,
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help="WLR threshold.")] = 0.5,
    heldout_tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens scored per policy.")] = 2048,
    json_out: JsonOut = False,
) -> None:
    """Run the shipped model over in-process devices; check it against HF; compare TopK, WLR and joint."""
    offline()
    with user_errors():
        import torch
        from transformers import AutoModelForCausalLM

        from wdmoe.config import Scenario
        from wdmoe.eval.evaluate import heldout_documents
        from wdmoe.eval.language import language_scores
        from wdmoe.model import shipped
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.open import ModelOptions, open_model

        model_dir = shipped.default_model_dir()
        model = open_model(model_dir, ModelOptions(devices=devices))
        ids = _prompt_ids(model, prompt)
        reference = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True).eval()
        with torch.inference_mode():
            expected = reference.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0,
            )[0, len(ids) :].tolist()
        report = generate_report(model, ids, max_new_tokens)
        report["matches_unsplit"] = report["tokens"] == expected
        documents = heldout_documents(model, shipped.HELDOUT_TEXT, heldout_tokens) if model.tokenizer else None
        policies: dict[str, dict[str, Any]] = {}
        for name in DEMO_POLICIES:
            model.set_policy(make_policy(name, theta=theta), Scenario.default(num_devices=devices))
            run = generate_report(model, ids, max_new_tokens)
            row = {key: run[key] for key in ("bytes_on_air", "energy_j", "experts_per_token_mean")}
            row.update(ttft_s=run["latency"]["ttft_s"], tpot_s=run["latency"]["tpot_s"], text=run.get("text"))
            row["accuracy"] = None if documents is None else language_scores(model, documents).next_token_accuracy
            policies[name] = row
        model.close()
        report.update(model=str(model_dir), prompt=prompt, policies=policies, theta=theta)
    if json_out:
        print_json(report)
        return
    _print(report, devices)
    if not report["matches_unsplit"]:
        raise typer.Exit(1)


def _prompt_ids(model: Any, prompt: str) -> list[int]:
    if model.tokenizer is None:  # the random fallback model has no tokenizer
        return [1, 17, 42, 99, 7, 64, 3, 11]
    return list(model.tokenizer(prompt)["input_ids"])


def _print(report: dict[str, Any], devices: int) -> None:
    console.print(f"[bold]model:[/bold] {report['model']}, {devices} in-process devices")
    console.print(f"[bold]prompt:[/bold] {report['prompt']}")
    console.print(f"[bold]TopK:[/bold] {report.get('text', report['tokens'])}")
    verdict = "[green]yes[/green]" if report["matches_unsplit"] else "[red]NO[/red]"
    console.print(f"the model's own top-k, token-identical to the unsplit Hugging Face model: {verdict}")
    console.print(device_table(report))
    table = Table(title=f"policies over the default scenario (WLR theta = {report['theta']})")
    for column in ("policy", "TTFT ms", "TPOT ms", "kB on air", "energy J", "experts/token", "held-out acc"):
        table.add_column(column, justify="right")
    for name, row in report["policies"].items():
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        table.add_row(
            name, f"{row['ttft_s'] * 1e3:.2f}", f"{row['tpot_s'] * 1e3:.2f}", f"{row['bytes_on_air'] / 1e3:.1f}",
            f"{row['energy_j']:.3f}", f"{row['experts_per_token_mean']:.2f}", accuracy,
        )
    console.print(table)
    for name, row in report["policies"].items():
        if row["text"] is not None:
            console.print(f"[bold]{name}:[/bold] {row['text']}")
    console.print("Radio numbers are modeled by wdmoe.radio with our [R] default scenario, not the papers' values.")
