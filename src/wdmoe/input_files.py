"""Reading an input file (TOML, JSON, text) so that no OSError or UnicodeDecodeError reaches a user.

Contract: `read_text_file(path, what, error)` returns the UTF-8 text of the `what` file ("scenario", "plan") or raises
`error` (a WdmoeError subclass) naming the file and what is wrong with it: missing, a directory, larger than
`MAX_FILE_BYTES`, not UTF-8 text, unreadable. `load_toml` / `load_json` add the syntax check, naming the file.
Light on purpose (no pydantic): the runtime core reads its manifest with it on machines without pydantic.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from wdmoe.errors import WdmoeError

MAX_FILE_BYTES = 64 << 20  # an input file (TOML, JSON) larger than this is refused before it is read


def read_text_file(path: Path | str, what: str, error: type[WdmoeError] = WdmoeError) -> str:
    """The UTF-8 text of the `what` file ("scenario", "plan") at `path`; `error` names the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} file {path} does not exist")
    if not path.is_file():
        raise error(f"{what} file {path} is a directory (or not a regular file); give the file itself")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise error(f"{what} file {path} is {size} bytes; the limit is {MAX_FILE_BYTES} bytes")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); is it the right file?") \
            from None
    except OSError as exc:
        raise error(f"{what} file {path} cannot be read: {exc.strerror or exc}") from None


def load_toml(path: Path | str, what: str, error: type[WdmoeError] = WdmoeError) -> dict[str, Any]:
    """The parsed TOML `what` file at `path` (see `read_text_file`); bad syntax raises `error` naming the file."""
    try:
        return tomllib.loads(read_text_file(path, what, error))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML: {exc}") from None


def load_json(path: Path | str, what: str, error: type[WdmoeError] = WdmoeError) -> Any:
    """The parsed JSON `what` file at `path` (see `read_text_file`); bad syntax raises `error` naming the file."""
    try:
        return json.loads(read_text_file(path, what, error))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON: {exc}") from None

