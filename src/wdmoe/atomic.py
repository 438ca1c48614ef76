"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written file.

Why: a run killed while writing a cache, a plan or a trained gate left a truncated file that every later command
trusted and failed on. Every writer in wdmoe that produces a file another command reads goes through here.

Contract: `write_atomic(path, fill)` calls `fill(tmp)` with a temporary path in the same directory (same file
system, so the final `os.replace` is atomic on POSIX and Windows), fsyncs the file, renames it over `path` and
fsyncs the directory. If `fill` raises (or the process dies), `path` is untouched; the temporary file is removed
on an exception and, after a kill, is a hidden `.NAME.tmp-*` sibling that `clean_stale` removes and nothing reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_INFIX = ".tmp-"
_UMASK = os.umask(0o022)  # read the process umask (the only way is to set it) and put it back at once
os.umask(_UMASK)


def _fsync_dir(directory: Path) -> None:
    # Directories cannot be opened for fsync on every platform (Windows); the rename is still atomic there.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path | str, fill: Callable[[Path], None]) -> Path:
    """Write `path` through `fill(tmp_path)`, then rename into place; returns `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}{TMP_INFIX}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        fill(tmp)
        # mkstemp creates the file 0600; give it the mode a plain open() would (the old file's, else 0666 - umask).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_bytes_atomic(path: Path | str, data: bytes) -> Path:
    def fill(tmp: Path) -> None:
        tmp.write_bytes(data)

    return write_atomic(path, fill)


def write_text_atomic(path: Path | str, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path | str, value: Any, indent: int | None = 1) -> Path:
    return write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


def clean_stale(directory: Path | str) -> list[Path]:
    """Remove the temporary files a killed writer left in `directory`; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(".") and TMP_INFIX in p.name and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale
