"""`wdmoe serve` as a real process (API key from a file, stops on SIGTERM) and `wdmoe bench` against servers.

The commands are registered here on a local Typer app, exactly as `wdmoe.cli.main` registers them.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import typer
from typer.testing import CliRunner

from tests.integration.serve.conftest import LIMITS
from wdmoe.cli import serve_cmd
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread

cli = typer.Typer()
cli.command("serve")(serve_cmd.serve)
cli.command("bench")(serve_cmd.bench)
SERVE = "import typer; from wdmoe.cli.serve_cmd import serve; typer.run(serve)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_process_requires_its_key_and_stops_on_sigterm(text_model_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("k3y\n")
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--model", str(text_model_dir), "--devices", "2", "--policy", "wlr",
         "--port", str(port), "--api-key-file", str(key_file), "--max-tokens", "8", "--max-batch", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{url}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.3)
        no_key = httpx.get(f"{url}/v1/models")
        with_key = httpx.post(f"{url}/v1/completions", headers={"Authorization": "Bearer k3y"}, timeout=60,
                              json={"prompt": "hi", "max_tokens": 9})
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)

    assert health.json()["devices"] == 2 and health.json()["max_batch"] == 3
    assert no_key.status_code == 401
    assert with_key.status_code == 400 and "limit is 8" in with_key.json()["error"]["message"]
    assert process.returncode == 0, output


def test_bench_against_a_url_reports_latency_and_radio_figures(engine: Engine) -> None:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
        result = CliRunner().invoke(cli, ["bench", "--url", url, "--concurrency", "3", "--requests", "6",
                                          "--max-tokens", "4", "--prompt-len", "8", "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["successful"], report["failed"], report["output_tokens"]) == (6, 0, 24)
    assert report["ttft_s"]["p50"] <= report["ttft_s"]["p95"] and report["tpot_s"]["p50"] > 0
    assert report["e2e_s"]["mean"] >= report["ttft_s"]["mean"]
    assert report["bytes_on_air_per_token"] > 0 and report["energy_j_per_token"] > 0
    assert report["modeled_tpot_s"]["mean"] > 0
    assert report["ttft_s"]["p99"] <= report["ttft_s"]["max"] and report["request_rate"] is None


def test_bench_at_a_request_rate_with_ignore_eos(engine: Engine) -> None:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
        result = CliRunner().invoke(cli, ["bench", "--url", url, "--requests", "5", "--max-tokens", "3",
                                          "--request-rate", "50", "--ignore-eos", "--json"])
        table = CliRunner().invoke(cli, ["bench", "--url", url, "--requests", "1", "--request-rate", "0"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["successful"], report["output_tokens"]) == (5, 15)
    assert report["request_rate"] == 50 and report["ignore_eos"] is True
    assert table.exit_code == 2 and "--request-rate 0.0: give a rate above 0" in table.output


def test_bench_table_and_argument_errors(engine: Engine) -> None:
    with serve_in_thread(create_app(engine, limits=LIMITS)) as url:
        table = CliRunner().invoke(cli, ["bench", "--url", url, "--requests", "2", "--max-tokens", "2"])
    both = CliRunner().invoke(cli, ["bench", "--url", "http://127.0.0.1:1", "--model", "x"])
    missing = CliRunner().invoke(cli, ["serve", "--backend", "ray", "--model", "x"])
    no_batch = CliRunner().invoke(cli, ["serve", "--max-batch", "0"])

    assert table.exit_code == 0 and "p99 TPOT (ms)" in table.output and "2 / 0" in table.output
    assert "max end-to-end latency (ms)" in table.output
    assert both.exit_code == 2 and "exactly one of --url" in both.output
    assert missing.exit_code == 2 and "x has no config.json" in missing.output  # refused before Ray starts
    assert no_batch.exit_code == 2 and "Invalid value for '--max-batch'" in no_batch.output
