"""Directories swapped atomically, and a SIGKILL at each point of each kind of write (issue 20, items 3 and 6).

Each kill runs a real writer in a subprocess that kills itself at one point (inside the write, between the two
renames of a directory swap, after them); the test then checks that the old or the new content is whole, and that
the next run (or `recover_dir`) cleans what the kill left. Bounded: every subprocess has a timeout.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wdmoe.atomic import recover_dir, write_dir_atomic
from wdmoe.cli.main import app
from wdmoe.model.shards import Manifest

runner = CliRunner()

# A prelude for the subprocesses: SIGKILL this process at the N-th call of `os.fsync` (the write is complete in its
# temporary file, not yet renamed) or of `Path.rename` (a directory swap's renames), counted from 1.
KILLER = """
import os, pathlib, signal, sys
_kind, _at = sys.argv[1], int(sys.argv[2])
_calls = [0]
def _arm(original):
    def wrapped(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] == _at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapped
if _kind == "fsync":
    os.fsync = _arm(os.fsync)
else:
    pathlib.Path.rename = _arm(pathlib.Path.rename)
"""


def run_killed(body: str, kind: str, at: int, *args: str) -> None:
    done = subprocess.run([sys.executable, "-c", KILLER + body, kind, str(at), *args], timeout=120, check=False,
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


OLD = {"manifest.json": '{"v": "old"}', "devices/device-0.safetensors": "old weights"}
NEW = {"manifest.json": '{"v": "new"}', "devices/device-0.safetensors": "new weights", "bs/config.json": "{}"}
SWAP = (
    "import json\n"
    "from pathlib import Path\n"
    "from wdmoe.atomic import write_dir_atomic\n"
    "def fill(d):\n"
    "    for name, text in json.loads(sys.argv[4]).items():\n"
    "        (d / name).parent.mkdir(parents=True, exist_ok=True)\n"
    "        (d / name).write_text(text)\n"
    "write_dir_atomic(Path(sys.argv[3]), fill)\n"
)


def test_a_directory_write_replaces_the_old_one_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    target = tmp_path / "split"
    write_dir_atomic(target, lambda d: write_tree(d, OLD))
    write_dir_atomic(target, lambda d: write_tree(d, NEW))

    assert tree(target) == NEW
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_a_failing_directory_writer_keeps_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "split"
    write_dir_atomic(target, lambda d: write_tree(d, OLD))

    def half_then_fail(d: Path) -> None:
        write_tree(d, {"manifest.json": "{"})
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_dir_atomic(target, half_then_fail)
    assert tree(target) == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_a_sigint_between_the_two_renames_puts_the_old_directory_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "split"
    write_dir_atomic(target, lambda d: write_tree(d, OLD))
    rename = Path.rename
    calls: list[Path] = []

    def interrupted_second(self: Path, to: Path) -> Path:  # what Ctrl-C during the swap does
        calls.append(self)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return rename(self, to)

    monkeypatch.setattr(Path, "rename", interrupted_second)
    with pytest.raises(KeyboardInterrupt):
        write_dir_atomic(target, lambda d: write_tree(d, NEW))
    monkeypatch.undo()

    assert tree(target) == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


@pytest.mark.parametrize(
    ("kind", "at", "survivor"),
    [
        ("fsync", 1, OLD),  # mid-write: the staging directory is complete but not fsynced nor swapped
        ("rename", 1, OLD),  # before the first rename (old -> backup)
        ("rename", 2, OLD),  # between the renames: the old directory is only the backup
        ("fsync", 7, NEW),  # after both renames, before the backup is deleted (3 files + 3 directories fsynced)
    ],
)
def test_a_sigkill_at_each_point_of_a_directory_swap_keeps_a_whole_directory(
    tmp_path: Path, kind: str, at: int, survivor: dict[str, str]
) -> None:
    target = tmp_path / "split"
    write_dir_atomic(target, lambda d: write_tree(d, OLD))

    run_killed(SWAP, kind, at, str(target), json.dumps(NEW))
    recover_dir(target)  # what the next write_dir_atomic of `target` does first

    assert tree(target) == survivor
    assert [p.name for p in tmp_path.iterdir()] == ["split"]


def test_the_staging_directory_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "split"
    mine = tmp_path / f".split.partial-{os.getpid()}-abc"  # this process is alive: another writer's work
    dead = tmp_path / ".split.partial-999999999-abc"  # no such pid
    mine.mkdir()
    dead.mkdir()

    removed = recover_dir(target)

    assert removed == [dead] and mine.is_dir()


def test_a_split_killed_mid_write_keeps_the_old_split_and_the_next_split_cleans_up(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    out = tmp_path / "split"
    body = (
        "from pathlib import Path\n"
        "from wdmoe.cli.main import app\n"
        "app([sys.argv[3], sys.argv[4], '-n', sys.argv[5], '--out', sys.argv[6]])\n"
    )
    assert runner.invoke(app, ["make-tiny", "--out", str(hf), "--hidden", "32"]).exit_code == 0
    assert runner.invoke(app, ["split", str(hf), "-n", "2", "--out", str(out)]).exit_code == 0
    old = (out / "manifest.json").read_text()

    run_killed(body, "fsync", 2, "split", str(hf), "4", str(out))  # shards written, not yet swapped in

    assert (out / "manifest.json").read_text() == old and Manifest.read(out).placement.num_devices == 2
    assert any(".partial-" in p.name for p in tmp_path.iterdir())
    assert runner.invoke(app, ["split", str(hf), "-n", "4", "--out", str(out)]).exit_code == 0
    assert Manifest.read(out).placement.num_devices == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "split"]
