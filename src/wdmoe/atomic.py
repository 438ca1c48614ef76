"""Atomic file writes: a reader sees the old file or the whole new one, never a half-written file.

Why: a run killed while writing a cache, a plan or a trained gate left a truncated file that every later command
trusted and failed on. Every writer in wdmoe that produces a file another command reads goes through here.

Contract: `write_atomic(path, fill)` calls `fill(tmp)` with a temporary path in the same directory (same file
system, so the final `os.replace` is atomic on POSIX and Windows), fsyncs the file, renames it over `path` and
fsyncs the directory. If `fill` raises (or the process dies), `path` is untouched; the temporary file is removed
on an exception and, after a kill, is a hidden `.NAME.tmp-*` sibling that `clean_stale` removes and nothing reads.

Directories (a split, a saved model, a tokenizer): `write_dir_atomic(path, fill)` calls `fill(staging)` with a new
hidden sibling directory `.NAME.partial-PID-*`, fsyncs what it holds, then swaps it in: the old `path` is renamed
to the hidden backup `.NAME.old`, the staging directory to `path`, and the backup is deleted. At every instant
`path` or its backup holds a whole directory, so a kill (SIGINT, SIGKILL) during the swap never loses both;
`recover_dir(path)`, called at the start of every `write_dir_atomic`, puts the backup back when `path` is missing,
deletes it otherwise, and deletes the staging directories of writers that are no longer running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_INFIX = ".tmp-"
STAGING_INFIX = ".partial-"
BACKUP_SUFFIX = ".old"
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


def write_atomic(path: Path | str, fill: Callable[[Path], object]) -> Path:
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


def _backup(path: Path) -> Path:
    return path.parent / f".{path.name}{BACKUP_SUFFIX}"


def _writer_alive(staging: Path, prefix: str) -> bool:
    """Whether the process that made `staging` (its pid is in the name) still runs."""
    pid = staging.name.removeprefix(prefix).split("-", 1)[0]
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists but is not ours (EPERM): leave its directory alone
        return True
    return True


def recover_dir(path: Path | str) -> list[Path]:
    """Undo what a killed `write_dir_atomic` of `path` left; returns the directories removed or restored.

    A backup with no `path` is the old directory a kill caught between the two renames: it is put back. A backup
    beside `path` is one the kill caught before its deletion: it is deleted. Staging directories of writers that
    are no longer running are deleted (those of a live writer, another process, are left to it).
    """
    path = Path(path)
    backup = _backup(path)
    touched: list[Path] = []
    if backup.is_dir():
        if path.exists():
            shutil.rmtree(backup, ignore_errors=True)
        else:
            backup.rename(path)
        touched.append(backup)
    prefix = f".{path.name}{STAGING_INFIX}"
    if path.parent.is_dir():
        for staging in path.parent.iterdir():
            if staging.name.startswith(prefix) and staging.is_dir() and not _writer_alive(staging, prefix):
                shutil.rmtree(staging, ignore_errors=True)
                touched.append(staging)
    return touched


def _fsync_tree(root: Path) -> None:
    for directory, _, files in os.walk(root):
        for name in files:
            with open(Path(directory) / name, "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(directory))


def write_dir_atomic(path: Path | str, fill: Callable[[Path], object]) -> Path:
    """Write the directory `path` through `fill(staging_dir)`, then swap it in (module docstring); returns `path`.

    If `fill` raises, `path` is untouched and the staging directory removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}{STAGING_INFIX}{os.getpid()}-", dir=path.parent))
    backup = _backup(path)
    try:
        fill(staging)
        os.chmod(staging, 0o777 & ~_UMASK)  # mkdtemp makes it 0700; give it the mode a plain mkdir would
        _fsync_tree(staging)
        if path.exists():
            path.rename(backup)
        staging.rename(path)
    except BaseException:
        if backup.exists() and not path.exists():  # interrupted between the two renames: the old one goes back
            backup.rename(path)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(backup, ignore_errors=True)
    return path
