"""The CLI's answer when the devices cannot run the model: one line on stderr, exit status 3, no traceback; with
`--json`, what Ray prints about dead workers goes to stderr, so stdout holds the JSON only."""

from __future__ import annotations

import json
import threading

import pytest
import typer
from typer.testing import CliRunner

from wdmoe.cli.common import print_json, stdout_to_stderr, user_errors
from wdmoe.runtime.failover import FailoverEvent
from wdmoe.runtime.liveness import DevicesLost, Liveness


def test_every_device_lost_is_one_line_and_exit_status_3() -> None:
    app = typer.Typer()

    @app.command()
    def run() -> None:
        with user_errors():
            events = tuple(FailoverEvent("failed", d, "connection lost [x]: its actor or node is gone") for d in (0, 1))
            raise DevicesLost(Liveness(frozenset({0, 1}), 2), 2, events)

    result = CliRunner().invoke(app, [])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: all 2 devices have failed (device 0: connection lost [x]")  # markup kept


def test_with_json_rays_died_worker_messages_go_to_stderr_not_before_the_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray's driver prints its cluster's errors ("A worker died...") on stdout from a thread of its own
    (`ray._private.worker.listen_error_messages`); under `--json` they must land on stderr."""
    worker = pytest.importorskip("ray._private.worker")
    message = {"lines": ["A worker died or was killed while executing a task"], "pid": "raylet", "is_err": False}
    with stdout_to_stderr(True):
        thread = threading.Thread(target=worker.print_to_stdstream, args=(message, False))
        thread.start()
        thread.join()
    print_json({"tokens": [1, 2]})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"tokens": [1, 2]}
    assert "A worker died" in err
