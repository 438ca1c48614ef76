"""The pydantic shapes of the split's input files: manifest.json and `wdmoe split --bits-file`.

Contract: `check_manifest(data, source)` and `check_bits_file(data, source)` validate parsed JSON/TOML and raise
(ShardError, ValueError) naming the file, the field, the value and the rule. Kept apart from `shards` and `split`,
which the runtime core imports on machines without pydantic; they import this module only when reading a file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from wdmoe.errors import ShardError
from wdmoe.validation import MAX_DEVICES, Strict, describe_errors

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Index = Annotated[int, Field(ge=0)]


class _PlacementTable(Strict):
    num_devices: Annotated[int, Field(ge=1, le=MAX_DEVICES)]
    num_experts: Annotated[int, Field(ge=1)]
    layers: dict[Annotated[str, Field(pattern=r"^[0-9]+$")], list[list[Index]]]  # decoder layer -> devices per expert


class _QuantizationTable(Strict):
    group_size: Index
    dtype: str
    bits: dict[Annotated[str, Field(pattern=r"^[0-9]+:[0-9]+$")], Literal[4, 8, 16]]  # "layer:expert" -> bits


class ManifestFile(Strict):
    """The shape of manifest.json; `files` names only files inside the split (bs/..., devices/...)."""

    format: str
    family: str
    model_type: str
    config_sha256: Sha256
    hidden_act: str
    placement: _PlacementTable
    files: dict[Annotated[str, Field(pattern=r"^(bs|devices)/[A-Za-z0-9_.-]+$")], Sha256]
    quantization: _QuantizationTable | None = None
    config: dict[str, Any] | None = None  # format 2: the model config (to_dict())


def check_manifest(data: dict[str, Any], source: str) -> ManifestFile:
    try:
        return ManifestFile.model_validate(data)
    except ValidationError as exc:
        raise ShardError(f"{source}: " + describe_errors(exc, "manifest", ManifestFile)) from None


class BitsFile(Strict):
    """A --bits-file: `default` for every expert not listed (none: as the model has it), `experts` per
    "layer:expert" (decoder layer index, expert index)."""

    default: Literal[4, 8, 16, 32] | None = None  # bits
    experts: dict[Annotated[str, Field(pattern=r"^[0-9]+:[0-9]+$")], Literal[4, 8, 16, 32]] = Field(
        default_factory=dict
    )


def check_bits_file(data: dict[str, Any], source: str) -> BitsFile:
    try:
        return BitsFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{source}: " + describe_errors(exc, "bits file", BitsFile)) from None
