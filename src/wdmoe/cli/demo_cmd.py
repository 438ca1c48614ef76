"""`wdmoe demo`: the shipped model split over in-process devices, checked and compared across policies.

The demo loads the shipped model (a small Mixtral-family MoE trained by `wdmoe train`), splits it over 8
in-process devices, generates for a prompt with the model's own top-k and checks the tokens against the unsplit
Hugging Face model, then runs the three points of docs/results.md (`wdmoe/data/results/headline.json`, written by
`wdmoe experiment pareto`): TopK, the project's headline (the joint policy's best point within 1% of TopK's
accuracy and perplexity) and WLR at its θ, over the default radio scenario. It prints, side by side, the modeled
TTFT, TPOT, bytes on air and energy of this generation and the next-token accuracy on held-out text, each with
its TPOT cut and accuracy loss against TopK in this run, and beside them the Pareto experiment's (30 channel
draws, 8,102 held-out tokens), labelled as coming from docs/results.md.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from wdmoe.cli.common import JsonOut, console, device_table, offline, print_json, user_errors
from wdmoe.cli.run_cmd import generate_report

DEMO_KEYS = {"reference": "topk", "headline": "joint", "wlr": "wlr"}  # role -> key of report["policies"]
DEMO_PROMPT = "The best thing about a computer is"


def demo(
    prompt: Annotated[str, typer.Option(help="Prompt text.")] = DEMO_PROMPT,
    devices: Annotated[int, typer.Option(min=1, help="In-process expert devices.")] = 8,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 24,
    theta: Annotated[float | None, typer.Option(
        min=0.0, max=1.0, help="WLR threshold (default: the θ of docs/results.md).")] = None,
    heldout_tokens: Annotated[int, typer.Option(min=2, help="Held-out tokens scored per policy.")] = 2048,
    json_out: JsonOut = False,
) -> None:
    """Run the shipped model over in-process devices; check it against HF; compare TopK, the headline joint point
    and WLR (docs/results.md's points)."""
    offline()
    with user_errors():
        import torch
        from transformers import AutoModelForCausalLM

        from wdmoe.config import Scenario
        from wdmoe.eval.evaluate import heldout_documents
        from wdmoe.eval.language import language_scores
        from wdmoe.experiments.headline_file import SHIPPED_HEADLINE, load_headline
        from wdmoe.experiments.policies import wlr
        from wdmoe.model import shipped
        from wdmoe.runtime.open import ModelOptions, open_model

        results = load_headline()
        wlr_theta = results.point("wlr").param if theta is None else theta
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
        for point in results.points:
            spec = wlr(wlr_theta) if point.role == "wlr" and wlr_theta is not None else point.spec()
            model.set_policy(spec.build(0), Scenario.default(num_devices=devices))
            run = generate_report(model, ids, max_new_tokens)
            row = {key: run[key] for key in ("bytes_on_air", "energy_j", "experts_per_token_mean")}
            row.update(role=point.role, policy=spec.label, ttft_s=run["latency"]["ttft_s"],
                       tpot_s=run["latency"]["tpot_s"], text=run.get("text"))
            row["accuracy"] = None if documents is None else language_scores(model, documents).next_token_accuracy
            if spec.label == point.policy:  # the experiment's figures belong to this policy only
                row["results"] = {"accuracy_loss": point.accuracy_loss, "tpot_reduction": point.tpot_reduction}
            policies[DEMO_KEYS[point.role]] = row
        model.close()
        _against_topk(policies)
        report.update(model=str(model_dir), prompt=prompt, policies=policies,
                      theta=wlr_theta,
                      results_source=f"docs/results.md ({SHIPPED_HEADLINE.name}: {results.source})")
    if json_out:
        print_json(report)
        return
    _print(report, devices)
    if not report["matches_unsplit"]:
        raise typer.Exit(1)


def _against_topk(policies: dict[str, dict[str, Any]]) -> None:
    """This run's TPOT cut and relative accuracy loss of each row against TopK's (None without accuracy)."""
    ref = policies["topk"]
    for row in policies.values():
        row["tpot_reduction"] = 1.0 - row["tpot_s"] / ref["tpot_s"]
        acc, ref_acc = row["accuracy"], ref["accuracy"]
        row["accuracy_loss"] = None if acc is None or not ref_acc else (ref_acc - acc) / ref_acc


def _pct(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _name(row: dict[str, Any]) -> str:
    return f"{row['policy']} (headline)" if row["role"] == "headline" else str(row["policy"])


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
    table = Table(title="policies over the default scenario (this run: one prompt, one channel draw)")
    for column in ("policy", "TTFT ms", "TPOT ms", "kB on air", "energy J", "experts/token", "held-out acc"):
        table.add_column(column, justify="right")
    for row in report["policies"].values():
        accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
        table.add_row(
            _name(row), f"{row['ttft_s'] * 1e3:.2f}", f"{row['tpot_s'] * 1e3:.2f}", f"{row['bytes_on_air'] / 1e3:.1f}",
            f"{row['energy_j']:.3f}", f"{row['experts_per_token_mean']:.2f}", accuracy,
        )
    console.print(table)
    against = Table(title="against TopK: this run, and docs/results.md (the Pareto experiment)")
    for column in ("policy", "TPOT cut", "acc loss", "results.md TPOT cut", "results.md acc loss"):
        against.add_column(column, justify="right")
    for row in report["policies"].values():
        known = row.get("results")
        against.add_row(_name(row), _pct(row["tpot_reduction"], 1), _pct(row["accuracy_loss"], 2),
                        _pct(known and known["tpot_reduction"], 1), _pct(known and known["accuracy_loss"], 2))
    console.print(against)
    console.print(f"results.md: {report['results_source']}")
    for row in report["policies"].values():
        if row["text"] is not None:
            console.print(f"[bold]{row['policy']}:[/bold] {row['text']}")
    console.print("Radio numbers are modeled by wdmoe.radio with our [R] default scenario, not the papers' values.")
