"""`wdmoe serve`: the OpenAI-compatible server with its dashboard; `wdmoe bench`: the serving benchmark."""

from __future__ import annotations

import asyncio
import functools
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wdmoe.cli.common import JsonOut, console, offline, print_json, user_errors
from wdmoe.input_files import read_text_file

if TYPE_CHECKING:
    from wdmoe.serve.engine import Engine


class Backend(StrEnum):
    local = "local"
    ray = "ray"


ModelOpt = Annotated[
    Path | None, typer.Option("--model", "-m", help="A split or HF model directory (default: the shipped model).")
]
DevicesOpt = Annotated[int | None, typer.Option(min=1, help="Devices, when splitting a HF directory on the fly.")]
PolicyOpt = Annotated[str, typer.Option(help="Expert selection: topk, wlr, joint, fastest, random or prune.")]
ThetaOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="WLR threshold; prune: the pruned gate share.")]
ScenarioOpt = Annotated[Path | None, typer.Option(help="Radio scenario TOML (default: built-in, one per device).")]
BackendOpt = Annotated[Backend, typer.Option(help="Device pool: local (in-process) or ray.")]
ApiKeyOpt = Annotated[Path | None, typer.Option(help="File holding the API key that /v1 routes require.")]
DEFAULT_MAX_BATCH = 64  # the engine's default (wdmoe.serve.engine.Engine)
PlanClusterOpt = Annotated[
    Path | None,
    typer.Option(help="Cluster TOML: place the experts by the planner and re-plan between requests (local only)."),
]


def load_engine(model_dir: Path | None, devices: int | None, policy: str, theta: float, scenario: Path | None,
                backend: Backend, plan_cluster: Path | None = None, max_batch: int = DEFAULT_MAX_BATCH,
                **ray_opts: Any) -> Engine:
    """The model behind a server: split (or load) it, set the policy over the radio scenario, wrap it
    (`max_batch`: requests one forward step runs at most)."""
    from wdmoe.config import load_scenario
    from wdmoe.model.shipped import default_model_dir
    from wdmoe.plan.serving import planned_model
    from wdmoe.policy.factory import make_policy
    from wdmoe.runtime.open import ModelOptions, open_model
    from wdmoe.serve.engine import Engine

    model_dir = model_dir or default_model_dir()
    radio = load_scenario(scenario) if scenario else None
    opts = {k: v for k, v in ray_opts.items() if v is not None} if backend is Backend.ray else {}
    options = ModelOptions(devices=devices, backend=backend.value, pool_options=opts,
                           policy=make_policy(policy, theta=theta), scenario=radio)
    controller = None
    if plan_cluster is None:
        model = open_model(model_dir, options)  # a split made on the fly lives as long as the model
    elif backend is not Backend.local:
        raise ValueError("--plan-cluster re-splits the model between requests: it needs --backend local")
    else:  # the planner's placement, and a new plan applied between requests (wdmoe.plan.serving)
        model, controller = planned_model(model_dir, plan_cluster, options)
    engine = Engine(model, name=model_dir.name or "wdmoe", max_batch=max_batch)
    if controller is not None:
        engine.between_requests.append(functools.partial(_update_plan, engine, controller))
    return engine


def _update_plan(engine: Engine, controller: Any) -> None:
    update = controller.between_requests(engine.model)
    if update.switched:
        console.print(f"new plan: {len(controller.plan.devices)} devices, {update.migrated_bytes:,} bytes moved "
                      f"({update.migration_s * 1e3:.2f} ms over the radio)")


def read_api_key(path: Path | None) -> str | None:
    if path is None:
        return None
    key = read_text_file(path, "--api-key-file").strip()
    if not key:
        raise ValueError(f"--api-key-file {path}: the file is empty; put the key on its first line")
    return key


def serve(
    model_dir: ModelOpt = None,
    devices: DevicesOpt = None,
    policy: PolicyOpt = "topk",
    theta: ThetaOpt = 0.5,
    scenario: ScenarioOpt = None,
    backend: BackendOpt = Backend.local,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    api_key_file: ApiKeyOpt = None,
    max_prompt_tokens: Annotated[int, typer.Option(min=1, help="Longest prompt accepted, in tokens.")] = 2048,
    max_tokens: Annotated[int, typer.Option(min=1, help="Most new tokens per prompt.")] = 512,
    max_queue: Annotated[int, typer.Option(
        min=0, help="Requests that may wait besides the running one(s); one more is refused with 429 (0: none waits)."
    )] = 64,
    max_batch: Annotated[int, typer.Option(
        min=1, help="Requests that run at once, batched in every forward step; the others wait (--max-queue)."
    )] = DEFAULT_MAX_BATCH,
    max_body_bytes: Annotated[
        int, typer.Option(min=1024, help="Largest request body, in bytes; beyond it 413, before it is read.")
    ] = 4 * 2**20,
    ray_address: Annotated[str | None, typer.Option(help="Ray head HOST:PORT (default: a local cluster).")] = None,
    token_file: Annotated[Path | None, typer.Option(help="Ray cluster token file, mode 0600.")] = None,
    transport: Annotated[
        str, typer.Option(help="Ray data path: direct (a socket per device), compiled (Ray Compiled Graphs) or plain.")
    ] = "direct",
    plan_cluster: PlanClusterOpt = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API, with a live dashboard at / and metrics at /metrics."""
    offline()
    with user_errors():
        from wdmoe.serve import Limits, create_app
        from wdmoe.serve.server import StoppingServer, listen, uvicorn_config

        key = read_api_key(api_key_file)
        sock = listen(host, port)  # before the model loads: a busy port fails at once, and nothing was announced
        try:
            engine = load_engine(model_dir, devices, policy, theta, scenario, backend, plan_cluster, max_batch,
                                 address=ray_address, token_file=token_file, transport=transport)
        except BaseException:
            sock.close()
            raise
        app = create_app(engine, api_key=key, limits=Limits(max_prompt_tokens, max_tokens, max_queue=max_queue,
                                                                  max_body_bytes=max_body_bytes))
    bound = sock.getsockname()[1]
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}"
    console.print(f"serving [bold]{engine.name}[/bold] on {engine.model.num_devices} devices ({policy}): "
                  f"{url}/ (dashboard), {url}/v1 (OpenAI API{', key required' if key else ''})", highlight=False)
    try:
        StoppingServer(uvicorn_config(app, host, bound, log_level="info")).run(sockets=[sock])
    finally:
        engine.close()
        engine.model.close()


def bench(
    url: Annotated[str | None, typer.Option(help="Base URL of a running server, e.g. http://127.0.0.1:8000.")] = None,
    model_dir: Annotated[
        Path | None, typer.Option("--model", "-m", help="Serve this model in-process on 127.0.0.1 and bench it.")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 4,
    requests: Annotated[int, typer.Option(min=1, help="Requests in all.")] = 32,
    max_tokens: Annotated[int, typer.Option(min=1, help="New tokens per request.")] = 32,
    prompt_len: Annotated[int, typer.Option(min=1, help="Longest prompt, in tokens (random ids).")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of the random prompts and of the arrival times.")] = 0,
    request_rate: Annotated[float | None, typer.Option(
        help="Requests per second, arriving as a Poisson process (default: all at once); --concurrency still caps "
             "those in flight.")] = None,
    ignore_eos: Annotated[bool, typer.Option(
        "--ignore-eos/--no-ignore-eos", metavar="",
        help="Ask for exactly --max-tokens tokens per request (generation goes on past EOS).")] = False,
    devices: DevicesOpt = None,
    policy: PolicyOpt = "topk",
    theta: ThetaOpt = 0.5,
    scenario: ScenarioOpt = None,
    api_key_file: ApiKeyOpt = None,
    json_out: JsonOut = False,
) -> None:
    """Benchmark a server: TTFT, TPOT and end-to-end latency (mean, p50, p95, p99, max), tokens/s, bytes on air and
    energy per token. A stream cut before its finish_reason or [DONE] counts as a failed request."""
    offline()
    with user_errors():
        from wdmoe.serve.bench import run_bench

        if request_rate is not None and not request_rate > 0:
            raise ValueError(f"--request-rate {request_rate}: give a rate above 0 requests per second (or leave it "
                             "out: all requests at once)")
        if (url is None) == (model_dir is None):
            raise ValueError("give exactly one of --url URL (a running server) or --model DIR (served in-process)")
        key = read_api_key(api_key_file)
        settings: dict[str, Any] = dict(concurrency=concurrency, num_requests=requests, max_tokens=max_tokens,
                                        prompt_len=prompt_len, seed=seed, api_key=key, request_rate=request_rate,
                                        ignore_eos=ignore_eos)
        if url is not None:
            report = asyncio.run(run_bench(url, **settings))
        else:
            report = _bench_in_process(model_dir, devices, policy, theta, scenario, settings)
    if json_out:
        print_json(report)
        return
    console.print(bench_table(report))


def _bench_in_process(model_dir: Path | None, devices: int | None, policy: str, theta: float, scenario: Path | None,
                      settings: dict[str, Any]) -> dict[str, Any]:
    from wdmoe.serve import Limits, create_app
    from wdmoe.serve.bench import run_bench
    from wdmoe.serve.server import serve_in_thread

    engine = load_engine(model_dir, devices, policy, theta, scenario, Backend.local)
    limits = Limits(max_tokens=max(512, settings["max_tokens"]), max_queue=max(64, settings["num_requests"]))
    try:
        with serve_in_thread(create_app(engine, api_key=settings["api_key"], limits=limits)) as url:
            report = asyncio.run(run_bench(url, **settings))
    finally:
        engine.close()
        engine.model.close()
    report["policy"] = policy
    return report


def bench_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    from wdmoe.serve.bench import STATS

    table = Table(title=f"serving benchmark: {report['model']} at {report['url']}", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.2f}"

    rows: list[tuple[str, str]] = [
        ("successful / failed requests", f"{report['successful']} / {report['failed']}"),
        ("concurrency", str(report["concurrency"])),
        ("request rate (req/s, Poisson)", "all at once" if report.get("request_rate") is None
         else f"{report['request_rate']:g}"),
        ("benchmark duration (s)", f"{report['duration_s']:.2f}"),
        ("input / output tokens", f"{report['input_tokens']} / {report['output_tokens']}"),
        ("request throughput (req/s)", f"{report['request_throughput_per_s']:.2f}"),
        ("output token throughput (tok/s)", f"{report['output_tokens_per_s']:.2f}"),
    ]
    for key, name in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("e2e_s", "end-to-end latency"),
                      ("modeled_ttft_s", "modeled TTFT"), ("modeled_tpot_s", "modeled TPOT")):
        for stat in STATS:
            rows.append((f"{stat} {name} (ms)", ms(report[key][stat])))
    per_byte = report["bytes_on_air_per_token"]
    per_joule = report["energy_j_per_token"]
    rows.append(("(measured = CPU wall time incl. queueing; modeled = radio model)", ""))
    rows.append(("bytes on air per output token (modeled)", "-" if per_byte is None else f"{per_byte:.1f}"))
    rows.append(("energy per output token (modeled, mJ)", "-" if per_joule is None else f"{per_joule * 1e3:.3f}"))
    for name, value in rows:
        table.add_row(name, value)
    for error in report["errors"]:
        table.add_row("error", error)
    return table
