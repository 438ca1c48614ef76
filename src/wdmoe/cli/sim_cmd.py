"""`wdmoe simulate` and `wdmoe trace record|synthesize`: router traces and their replay (thin shells over sim)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from wdmoe.atomic import write_text_atomic
from wdmoe.cli.common import JsonOut, check_choice, console, offline, print_json, progress_bar, user_errors
from wdmoe.cli.sim_tables import cell_tables
from wdmoe.errors import WdmoeError

if TYPE_CHECKING:
    from wdmoe.sim.cell import Arrival


def simulate(
    trace: Annotated[Path, typer.Option(help="A trace file (wdmoe trace record / synthesize).")],
    scenario: Annotated[
        list[Path] | None, typer.Option(help="Scenario TOML, repeatable (default: the built-in default).")
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(help=(
            "Policy, repeatable: topk, wlr, joint, fastest, random, prune, or OUR reconstructions [R] of the "
            "field's baselines from secondary descriptions [S] (papers.md §10): wlr-cum, straggler, energy "
            "(default: topk, wlr, joint).")),
    ] = None,
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "WLR threshold; prune: the pruned gate share; wlr-cum: the gate mass kept in WLR order; straggler and "
        "energy: the gate mass every token keeps."))] = 0.5,
    realizations: Annotated[
        int | None, typer.Option(min=1, help=(
            "Channel realizations per scenario (seeds seed .. seed + n - 1); default 10, with --users 1."))
    ] = None,
    exact: Annotated[
        bool, typer.Option(metavar="", help=(
            "Replay call by call as the runtime does (slower, same numbers). A cell (--users) is always decided "
            "step by step, as the live server does, so it takes no --exact."))
    ] = False,
    json_out: JsonOut = False,
    csv: Annotated[Path | None, typer.Option(help="Also write one CSV row per (scenario, policy) here.")] = None,
    users: Annotated[int | None, typer.Option(min=1, help=(
        "Simulate a cell: N users whose requests arrive over time and share the base station through continuous "
        "batching, as `wdmoe serve` runs them; per-user TTFT (queueing included) and TPOT percentiles."))] = None,
    arrival: Annotated[str, typer.Option(help=(
        "With --users: poisson (each user sends at --arrival-rate) or closed (each user sends its next request "
        "when the previous one finishes)."))] = "poisson",
    arrival_rate: Annotated[float | None, typer.Option(min=0.0, help=(
        "With --users and --arrival poisson: requests per second per user (seeded exponential gaps)."))] = None,
    requests_per_user: Annotated[int, typer.Option(min=1, help=(
        "With --users: requests each user sends; user u's j-th replays trace request (u * M + j) mod R."))] = 4,
    max_batch: Annotated[int, typer.Option(min=1, help=(
        "With --users: requests running at once, the others wait (wdmoe serve --max-batch)."))] = 64,
    schedule: Annotated[str, typer.Option(help=(
        "With --users: prefill-first (new requests prefill in a step of their own, as wdmoe serve does) or mixed "
        "(their prefill shares the step with every running request's decode token)."))] = "prefill-first",
) -> None:
    """Replay a router trace through the radio model and the policies; report latency percentiles, TTFT/TPOT,
    bytes on air, energy and experts per token. With --users: a cell of many users (docs/serve.md)."""
    with user_errors():
        cell = _arrival(users, arrival, arrival_rate)
        check_choice("--schedule", schedule, ("prefill-first", "mixed"))
        if users is not None and exact:
            raise WdmoeError("--exact applies to the one-request replay; a cell (--users) is always decided step by "
                             "step, as the live server does: drop --exact")
        from wdmoe.config import Scenario, load_scenario
        from wdmoe.policy.factory import POLICY_NAMES
        from wdmoe.sim.cell import cell_tokens
        from wdmoe.sim.cell_report import cell_rows
        from wdmoe.sim.grid import simulate_cells, simulate_grid
        from wdmoe.sim.report import rows_csv
        from wdmoe.sim.trace import Trace

        loaded = Trace.load(trace)
        policies = policy or ["topk", "wlr", "joint"]
        unknown = [p for p in policies if p not in POLICY_NAMES]
        if unknown:
            raise ValueError(f"--policy {unknown[0]!r} is unknown; choose from {', '.join(POLICY_NAMES)}")
        # Every scenario is read and checked against the trace before the first replay (a grid runs for minutes).
        given = [(path, load_scenario(path)) for path in scenario or []]
        misfits = [f"{path} has num_devices = {sc.num_devices}" for path, sc in given
                   if sc.num_devices != loaded.num_devices]
        if misfits:
            raise ValueError(f"{'; '.join(misfits)}, but the trace {trace} was recorded over {loaded.num_devices} "
                             "devices: give scenarios with that many devices, or a trace recorded (wdmoe trace record "
                             "--devices N) or synthesized (wdmoe trace synthesize --devices N) for theirs")
        scenarios = {path.stem: sc for path, sc in given} or {"default": Scenario.default(loaded.num_devices)}
        if len(scenarios) < len(given):
            raise ValueError("two --scenario files share a name: the report labels each run by the file's stem")
        if users is not None and cell is not None:
            runs = realizations or 1
            total = len(scenarios) * len(policies) * runs * cell_tokens(loaded, users, requests_per_user)
            with progress_bar(total >= 2000) as bar:
                task = bar.add_task("tokens", total=total)
                cells = simulate_cells(loaded, scenarios, policies, cell, users, requests_per_user, theta, runs,
                                       max_batch, on_step=lambda n: bar.advance(task, n),
                                       prefill_first=schedule == "prefill-first")
            if csv is not None:
                write_text_atomic(csv, rows_csv(cell_rows(cells), flat=True))
        else:
            total = len(scenarios) * len(policies) * (realizations or 10)
            with progress_bar(total >= 4) as bar:
                task = bar.add_task("replays", total=total)
                summaries = simulate_grid(loaded, scenarios, policies, theta, realizations or 10, batched=not exact,
                                          on_replay=lambda: bar.advance(task))
            if csv is not None:
                write_text_atomic(csv, rows_csv(summaries))
    if users is not None:
        cell_report = {"trace": str(trace), "model": loaded.model, "runs": cells}
        if json_out:
            print_json(cell_report)
            return
        for table in cell_tables(cells):
            console.print(table)
        return
    report = {"trace": str(trace), "model": loaded.model, "decisions_per_replay": loaded.num_decisions,
              "runs": summaries}
    if json_out:
        print_json(report)
        return
    console.print(_table(summaries))


def _arrival(users: int | None, arrival: str, rate: float | None) -> Arrival | None:
    """The arrival process of --users (None without it); refuses cell options given without --users."""
    from wdmoe.sim.cell import Closed, Poisson

    check_choice("--arrival", arrival, ("poisson", "closed"))
    if users is None:
        if rate is not None or arrival != "poisson":
            raise WdmoeError("--arrival and --arrival-rate describe a cell: give --users N too")
        return None
    if arrival == "closed":
        return Closed()
    if rate is None or rate <= 0:
        raise WdmoeError(f"--arrival poisson needs --arrival-rate R > 0 requests per second per user (got {rate}); "
                         "or use --arrival closed")
    return Poisson(rate)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.3f}"


def _table(summaries: list[dict[str, Any]]) -> Table:
    table = Table(title="modeled latency (ms) over channel realizations")
    for column in ("scenario", "policy", "token p50", "p95", "p99", "TTFT p50", "TPOT mean", "kB/request",
                   "J/token", "experts/token", "dropped"):
        table.add_column(column, justify="right")
    for s in summaries:
        token = s["token_latency_s"]
        table.add_row(s["scenario"], s["policy"], _ms(token["p50"]), _ms(token["p95"]), _ms(token["p99"]),
                      _ms(s["ttft_s"]["p50"]), _ms(s["tpot_s"]["mean"]), f"{s['bytes_on_air_per_request'] / 1e3:.1f}",
                      f"{s['energy_j_per_token']:.4f}", f"{s['experts_per_token']:.2f}",
                      f"{100 * s['dropped_fraction']:.1f}%")
    return table


def record(
    out: Annotated[Path, typer.Option(help="The trace file to write (.npz).")],
    model_dir: Annotated[
        Path | None, typer.Option("--model", "-m", help="A split or HF model directory (default: the shipped model).")
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="Prompt text, repeatable: one request each.")] = None,
    prompt_ids: Annotated[list[str] | None, typer.Option(help="Prompt token ids, e.g. 1,2,3; repeatable.")] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens to generate per request.")] = 16,
    devices: Annotated[int | None, typer.Option(help="Devices, when splitting a HF directory on the fly.")] = None,
    policy: Annotated[str | None, typer.Option(help="Record under this policy (default: the model's top-k).")] = None,
    theta: Annotated[float, typer.Option(min=0.0, max=1.0, help="WLR threshold (wlr only).")] = 0.5,
    scenario: Annotated[Path | None, typer.Option(help="Radio scenario TOML, with --policy.")] = None,
    logits: Annotated[bool, typer.Option(metavar="", help="Store the router logits too.")] = True,
    json_out: JsonOut = False,
) -> None:
    """Generate greedily for each prompt and record the router's choices of every layer step to a trace file."""
    offline()
    with user_errors():
        from wdmoe.cli.run_cmd import encode_prompt
        from wdmoe.config import load_scenario
        from wdmoe.model.shipped import default_model_dir
        from wdmoe.policy.factory import make_policy
        from wdmoe.runtime.open import ModelOptions, open_model
        from wdmoe.sim.trace import record_trace

        prompts = [(p, None) for p in prompt or []] + [(None, ids) for ids in prompt_ids or []]
        if not prompts:
            raise ValueError("give at least one --prompt TEXT or --prompt-ids 1,2,3")
        directory = model_dir or default_model_dir()
        chosen = make_policy(policy, theta=theta) if policy is not None else None
        radio = load_scenario(scenario) if scenario and chosen is not None else None  # --scenario goes with --policy
        model = open_model(directory, ModelOptions(devices=devices, policy=chosen, scenario=radio))
        model.telemetry.clear()
        import torch

        with progress_bar(len(prompts) > 1) as bar:
            for text, ids in bar.track(prompts, description="requests"):
                tokens = encode_prompt(model, text, ids)
                model.generate(torch.tensor([tokens]), max_new_tokens=max_new_tokens, do_sample=False)
        trace = record_trace(model.steps, model.model_costs(), model.runtime.primary, model.num_devices,
                             str(directory), with_logits=logits)
        model.close()
        trace.save(out)
    _report_written(out, trace.num_requests, trace.num_steps, trace.num_decisions, json_out)


def synthesize(
    out: Annotated[Path, typer.Option(help="The trace file to write (.npz).")],
    layers: Annotated[int, typer.Option(min=1, help="MoE layers.")] = 32,
    experts: Annotated[int, typer.Option(min=1, help="Routed experts per layer.")] = 8,
    top_k: Annotated[int, typer.Option(min=1, help="Experts per token.")] = 2,
    requests: Annotated[int, typer.Option(min=1, help="Requests.")] = 16,
    prompt_len: Annotated[int, typer.Option(min=1, help="Prompt tokens per request.")] = 32,
    new_tokens: Annotated[int, typer.Option(min=1, help="Generated tokens per request.")] = 64,
    devices: Annotated[int, typer.Option(min=1, help="Devices (expert e on device e mod devices).")] = 8,
    zipf: Annotated[float, typer.Option(min=0.0, help="Zipf exponent of the expert popularity (0: uniform).")] = 0.0,
    popularity: Annotated[
        str | None, typer.Option(help="Explicit popularity per expert, e.g. 4,2,1,1 (overrides --zipf).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    logits: Annotated[bool, typer.Option(metavar="", help="Store router logits consistent with the weights.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Write a synthetic trace with a given expert popularity (Mixtral-8x7B-shaped costs)."""
    with user_errors():
        import numpy as np

        from wdmoe.sim.synthesize import synthesize_trace

        shares: float | np.ndarray = zipf
        if popularity is not None:
            try:
                shares = np.array([float(x) for x in popularity.split(",") if x.strip()])
            except ValueError as exc:
                raise ValueError(f"--popularity {popularity!r}: expected comma-separated numbers") from exc
        trace = synthesize_trace(np.random.default_rng(seed), layers, experts, top_k, requests, prompt_len,
                                 new_tokens, popularity=shares, num_devices=devices, with_logits=logits)
        trace.save(out)
    _report_written(out, trace.num_requests, trace.num_steps, trace.num_decisions, json_out)


def _report_written(out: Path, requests: int, steps: int, decisions: int, json_out: bool) -> None:
    size = out.stat().st_size
    info = {"out": str(out), "requests": requests, "steps": steps, "decisions": decisions, "bytes": size}
    if json_out:
        print_json(info)
    else:
        console.print(f"wrote {out}: {requests} requests, {steps} steps, {decisions} token-layer decisions, "
                      f"{size / 1e3:.1f} kB")
