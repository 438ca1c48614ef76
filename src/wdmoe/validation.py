"""Validated TOML files (scenarios, clusters): the shared pydantic base, field types and error messages.

Contract: a file's pydantic models derive from `Strict` (unknown keys refused, frozen once validated) and use the
field types below for quantities that mean the same in every file; `describe_errors(exc, what, root)` turns a
`ValidationError` into one message per bad field that names the field, the value, its unit and the rule:
`scenario field 'bandwidth_hz' = -5 Hz: must be > 0`, `cluster field 'devices[2].free_memory_bytes' = -1 bytes:
must be >= 0`, `scenario has unknown key 'foo' (= 1); allowed keys here: ...`. Numbers must be finite (a TOML `inf` or
`nan` is refused by name). Files are read with `wdmoe.input_files` (which needs no pydantic).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

BandwidthHz = Annotated[float, Field(gt=0.0)]  # Hz
ActivationBits = Annotated[int, Field(ge=1, le=64)]  # bits per hidden value on the air
Seed = Annotated[int, Field(ge=0)]
# Devices in one scenario or cluster: far above any cell or edge cluster, and low enough that a typo (a million
# devices) is refused at once instead of running for minutes and gigabytes.
MAX_DEVICES = 4096

# name suffix -> unit, longest match first where one suffix ends another
UNITS = (
    ("_bytes_per_s", "bytes/s"),
    ("flops_per_s", "FLOP/s"),
    ("_bytes", "bytes"),
    ("_bps", "bit/s"),
    ("_dbm", "dBm"),
    ("_db", "dB"),
    ("_ghz", "GHz"),
    ("_hz", "Hz"),
    ("_w", "W"),
    ("_m", "m"),
    ("_s", "s"),
    ("bits", "bits"),
)
_RULES = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}


class Strict(BaseModel):
    """A table of a config file: unknown keys are refused by name; frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def unit_of(name: str) -> str:
    """The unit a field's name says (`bandwidth_hz` -> "Hz"), or "" when it names none."""
    return next((unit for suffix, unit in UNITS if name.endswith(suffix)), "")


def show(value: Any) -> str:
    """A value as a message shows it: numbers in %g, anything else by repr."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # 1000000, not 1e+06
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model a field holds, directly or inside list[...] / X | None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _model_in(arg)) is not None), None)


def allowed_keys(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The keys the table at `loc` (a pydantic error location, list indices included) accepts."""
    model = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        inner = None if field is None else _model_in(field.annotation)
        if inner is None:
            break
        model = inner
    return list(model.model_fields)


def describe(error: Any, what: str, root: type[BaseModel]) -> str:
    """One pydantic error of a `what` file ("scenario", "cluster") whose top model is `root` (module docstring)."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    field = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
    value = error.get("input")
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(allowed_keys(root, loc[:-1]))
        return f"{what} has unknown key '{field}' (= {value!r}); allowed keys here: {allowed}"
    if error["type"] == "missing":
        return f"{what} field '{field}' is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if message.startswith(f"{what} "):  # a validator's own message, already complete
        return message
    if error["type"] in _RULES:
        bound = next(iter((error.get("ctx") or {}).values()))
        message = f"must be {_RULES[error['type']]} {show(bound)}"
    message = message.replace("Input should be", "must be").replace("String should match pattern", "must match")
    message = re.sub(r" or instance of \w+", "", message)  # pydantic's class names mean nothing in a file
    names = [p for p in loc if isinstance(p, str)]
    unit = unit_of(names[-1]) if names else ""
    return f"{what} field '{field}' = {show(value)}{' ' + unit if unit else ''}: {message}"


def describe_errors(exc: ValidationError, what: str, root: type[BaseModel]) -> str:
    """Every error of `exc`, described and joined by "; "."""
    return "; ".join(describe(error, what, root) for error in exc.errors())

