"""`wdmoe run`: generate with a split model and report what went to each device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wdmoe.cli.common import console, device_table, offline, print_json, user_errors


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ValueError(f"--prompt-ids {text!r}: expected comma-separated token ids, e.g. 1,2,3") from exc
    if not ids:
        raise ValueError("--prompt-ids is empty: give at least one token id")
    return ids


def encode_prompt(model: Any, prompt: str | None, prompt_ids: str | None) -> list[int]:
    if (prompt is None) == (prompt_ids is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if prompt_ids is not None:
        ids = parse_prompt_ids(prompt_ids)
    elif model.tokenizer is None:
        raise ValueError("this model has no tokenizer: use --prompt-ids 1,2,3 instead of --prompt")
    else:
        ids = list(model.tokenizer(prompt)["input_ids"])
    vocab = int(model.config.vocab_size)
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"prompt token id {bad[0]} is outside the vocabulary 0..{vocab - 1}")
    return ids


def generate_report(model: Any, ids: list[int], max_new_tokens: int, **sampling: Any) -> dict[str, Any]:
    """Generate and collect the tokens, text and telemetry summary of this one request."""
    import torch

    model.telemetry.clear()
    start = time.perf_counter()
    output = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, **sampling)
    wall_s = time.perf_counter() - start
    new = output[0, len(ids) :].tolist()
    steps = model.steps
    report: dict[str, Any] = {
        "tokens": new,
        "prompt_tokens": len(ids),
        "wall_s": wall_s,
        "measured_ttft_s": steps[0].wall_s if steps else 0.0,
        "measured_tpot_s": sum(s.wall_s for s in steps[1:]) / max(1, len(steps) - 1),
        **model.summary(steps),
    }
    if model.tokenizer is not None:
        report["text"] = model.tokenizer.decode(new, skip_special_tokens=True)
    return report


def run(
    model_dir: Annotated[Path, typer.Option("--model", "-m", help="A split directory or a HF model directory.")],
    prompt: Annotated[str | None, typer.Option(help="Prompt text (needs a tokenizer).")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="Prompt token ids, e.g. 1,2,3.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 16,
    devices: Annotated[int | None, typer.Option(help="Devices, when splitting a HF directory on the fly.")] = None,
    do_sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Generate text with the experts on (in-process) devices and print what each device did."""
    offline()
    with user_errors():
        import torch

        from wdmoe.runtime.model import DistributedMoE

        model = DistributedMoE.from_pretrained(model_dir, num_devices=devices)
        ids = encode_prompt(model, prompt, prompt_ids)
        torch.manual_seed(seed)
        sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p) if do_sample else {}
        report = generate_report(model, ids, max_new_tokens, **sampling)
        model.close()
    if json_out:
        print_json(report)
        return
    console.print(f"[bold]text:[/bold] {report.get('text', '(no tokenizer)')}")
    console.print(f"[bold]tokens:[/bold] {report['tokens']}")
    console.print(
        f"experts per token {report['experts_per_token_mean']:.2f}; measured TTFT "
        f"{report['measured_ttft_s'] * 1e3:.1f} ms, TPOT {report['measured_tpot_s'] * 1e3:.1f} ms (CPU wall time)"
    )
    console.print(device_table(report))
