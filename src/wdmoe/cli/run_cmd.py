"""`wdmoe run`: generate with a split model and report what went to each device."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from wdmoe.cli.common import (
    JsonOut,
    check_choice,
    console,
    device_table,
    latency_table,
    offline,
    print_json,
    stdout_to_stderr,
    user_errors,
)


def parse_prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError as exc:
        raise ValueError(f"--prompt-ids {text!r}: expected comma-separated token ids, e.g. 1,2,3") from exc
    if not ids:
        raise ValueError("--prompt-ids is empty: give at least one token id")
    return ids


def check_prompt(prompt: str | None, prompt_ids: str | None) -> None:
    """What can be checked before the model loads: one of the two, and ids that parse."""
    if (prompt is None) == (prompt_ids is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    if prompt_ids is not None:
        parse_prompt_ids(prompt_ids)


def encode_prompt(model: Any, prompt: str | None, prompt_ids: str | None) -> list[int]:
    check_prompt(prompt, prompt_ids)
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
    model_dir: Annotated[
        Path | None, typer.Option("--model", "-m", help="A split or HF model directory (default: the shipped model).")
    ] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt text (needs a tokenizer).")] = None,
    prompt_ids: Annotated[str | None, typer.Option(help="Prompt token ids, e.g. 1,2,3.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate.")] = 16,
    devices: Annotated[int | None, typer.Option(help="Devices, when splitting a HF directory on the fly.")] = None,
    do_sample: Annotated[bool, typer.Option(metavar="", help="Sample instead of greedy decoding.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0, help="Sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Nucleus sampling mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (and the random policy's).")] = 0,
    policy: Annotated[str, typer.Option(help=(
        "Expert selection: topk, wlr, joint, fastest, random, prune, or the field's baselines as OUR "
        "reconstructions [R] from secondary descriptions [S] (papers.md §10): wlr-cum (cumulative-gate WLR), "
        "straggler (CAEE-like straggler-drop), energy (DES/JESA-like energy-min selection + band)."))] = "topk",
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "WLR threshold; prune: the pruned gate share; wlr-cum: the gate mass kept in WLR order; straggler and "
        "energy: the gate mass every token keeps."))] = 0.5,
    scenario: Annotated[
        Path | None, typer.Option(help="Radio scenario TOML (default: built-in default, one per device).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Where the devices run: local (in-process) or ray.")] = "local",
    ray_address: Annotated[
        str | None, typer.Option(help="Ray head HOST:PORT (default: start a local Ray cluster).")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="Ray cluster token file, mode 0600 (default ~/.ray/auth_token).")
    ] = None,
    emulate_air: Annotated[
        bool, typer.Option(metavar="", help="Ray: devices wait the modeled downlink/uplink air time.")
    ] = False,
    call_timeout: Annotated[float, typer.Option(min=0.1, help="Ray: seconds before a silent device is failed.")] = 2.0,
    transport: Annotated[
        str, typer.Option(help="Ray data path: direct (a socket per device), compiled (Ray Compiled Graphs) or plain.")
    ] = "direct",
    device: Annotated[str, typer.Option(help="BS and in-process devices compute on: cpu, cuda, cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Weight precision: fp32, bf16, fp16 or auto (as stored).")] = "fp32",
    json_out: JsonOut = False,
) -> None:
    """Generate with the experts on devices (in-process or Ray); print the text, device load and modeled latency."""
    offline()
    with user_errors():
        from wdmoe.backends.base import TRANSPORTS
        from wdmoe.backends.factory import BACKENDS
        from wdmoe.config import load_scenario
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.loading import device_options

        # Every option and input file is checked before the model loads (seconds to minutes).
        check_prompt(prompt, prompt_ids)
        check_choice("--backend", backend, BACKENDS)
        check_choice("--transport", transport, TRANSPORTS)
        chosen = make_policy(policy, theta=theta, seed=seed)
        radio = load_scenario(scenario) if scenario else None
        opts = device_options(device, dtype)

        import torch

        from wdmoe.runtime.open import ModelOptions, open_model

        ray_opts = dict(
            address=ray_address, token_file=token_file, emulate_air=emulate_air, call_timeout_s=call_timeout,
            transport=transport,
        )
        with stdout_to_stderr(json_out):  # Ray's messages (a device that died) must not precede the JSON
            model = open_model(model_dir, ModelOptions(
                devices=devices, backend=backend, pool_options=ray_opts, torch_device=opts.torch_device,
                dtype=opts.dtype, policy=chosen, scenario=radio,
            ))
            try:
                ids = encode_prompt(model, prompt, prompt_ids)
                torch.manual_seed(seed)
                sampling = dict(do_sample=do_sample, temperature=temperature, top_p=top_p) if do_sample else {}
                report = generate_report(model, ids, max_new_tokens, **sampling)
                report.update(policy=policy, backend=backend)
            finally:
                model.close()  # also after every device was lost: the Ray cluster it started stops
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
    console.print(latency_table(report))
    lat = report["latency"]
    tpot = "-" if lat["tpot_s"] is None else f"{lat['tpot_s'] * 1e3:.3f} ms"
    console.print(
        f"[bold]modeled[/bold] ({policy}): TTFT {lat['ttft_s'] * 1e3:.3f} ms, TPOT {tpot}, "
        f"bytes on air {report['bytes_on_air'] / 1e3:.1f} kB, energy {report['energy_j']:.4f} J; "
        f"per token: {', '.join(f'{t * 1e3:.3f}' for t in lat['per_step_s'][1:])} ms"
    )
