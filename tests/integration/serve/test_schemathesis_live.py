"""Schemathesis with every check (`--checks all`) against a live server on 127.0.0.1: no 5xx, every status, content
type, header and body (SSE events included) as the OpenAPI document says, invalid bodies refused.

One relaxation, stated in the config: a schema-valid body may get 400 when it breaks a limit the schema cannot state
(a prompt's length in tokens, the room left in the context, `stream` with `echo`), so `positive_data_acceptance`
also accepts 400; every other check runs as schemathesis ships it.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from wdmoe.serve import Engine, Limits, create_app
from wdmoe.serve.server import serve_in_thread

SMALL = Limits(max_prompt_tokens=16, max_tokens=2, max_prompts=2, max_queue=8)  # keeps every example fast
CONFIG = '[checks.positive_data_acceptance]\nexpected-statuses = ["2xx", "400", "401", "404", "429"]\n'


def test_schemathesis_finds_no_failure_with_all_checks(engine: Engine, tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    with serve_in_thread(create_app(engine, limits=SMALL)) as url:
        run = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color", "run",
             f"{url}/openapi.json", "--checks", "all", "--max-examples", "10", "--seed", "1", "--workers", "1",
             "--request-timeout", "120"],
            capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
        )
    engine.max_queue = 32
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counts is not None, run.stdout[-3000:]
    generated, passed = int(counts.group(1)), int(counts.group(2))
    assert generated == passed and generated >= 100  # every operation got cases, none failed
    assert "Missing test data" not in run.stdout  # GET /v1/models/{id} reached with the served id, not only 404s
