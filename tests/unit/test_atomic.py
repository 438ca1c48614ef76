"""wdmoe.atomic: a reader sees the old file or the whole new one, also when the writer is killed mid-write."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from wdmoe.atomic import clean_stale, write_atomic, write_json_atomic, write_text_atomic


def test_a_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "plan.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})

    assert json.loads(target.read_text()) == {"a": 2}
    assert sorted(p.name for p in target.parent.iterdir()) == ["plan.json"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # what open() would give, not mkstemp's 0600


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "plan.toml"
    target.write_text("a = 1\n")
    target.chmod(0o640)
    write_text_atomic(target, "a = 2\n")

    assert target.read_text() == "a = 2\n" and target.stat().st_mode & 0o777 == 0o640


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "cache.txt"
    write_text_atomic(target, "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("ne")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["cache.txt"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_temporary_that_clean_stale_removes(
    tmp_path: Path,
) -> None:
    target = tmp_path / "accuracy.json"
    write_json_atomic(target, {"accuracy": 0.25})
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from wdmoe.atomic import write_atomic\n"
        "def fill(tmp):\n"
        "    tmp.write_text('{\"accura')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "write_atomic(Path(sys.argv[1]), fill)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(target)], check=False)

    assert done.returncode == -signal.SIGKILL
    assert json.loads(target.read_text()) == {"accuracy": 0.25}
    stale = clean_stale(tmp_path)
    assert len(stale) == 1 and stale[0].name.startswith(".accuracy.json.tmp-")
    assert [p.name for p in tmp_path.iterdir()] == ["accuracy.json"]
