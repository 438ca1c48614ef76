"""The split directory on disk: the BS part, one safetensors shard per device, and a manifest with checksums.

Layout of a split directory:

    manifest.json            format, family, config sha256 (and, from format 2, the config), placement, sha256 of
                             every file below
    bs/config.json           the model config (transformers)
    bs/model.safetensors     every weight but the routed experts
    bs/<tokenizer files>     copied when the source has them
    devices/device-K.safetensors   the experts device K holds: layers.{l}.experts.{e}.{name}, one entry per
                             per-expert tensor of the model's experts module (gate_up_proj, down_proj, biases, ...)

A quantized expert (`wdmoe.model.quantize`) is stored as `{name}.qweight` (int8, or uint8 with two int4 values per
byte) and `{name}.scale` (float32) instead of `{name}`; the manifest's `quantization` lists its bit width
(`Quantization`). A file is used only after its sha256 matches the manifest. `Manifest.read` checks the file against
the `wdmoe.model.schemas.ManifestFile` schema (and the placement's layers against bs/config.json) and raises
`ShardError` naming the file, the field and the value.

Verify once: hashing a 3 GB split takes seconds, at every load. A file whose sha256 has matched is recorded in
`.verified.json` (beside the manifest; written atomically; the split writes it too, from the hashes computed while
writing) with its size, mtime_ns and inode; a later load trusts a file whose three are unchanged and re-hashes any
other (edited, replaced, copied elsewhere). A file rewritten in place with its mtime restored by hand is not
caught. A read-only split directory records nothing and is hashed at every load, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wdmoe.atomic import write_json_atomic
from wdmoe.errors import PlacementError, ShardError
from wdmoe.input_files import load_json
from wdmoe.placement import Placement

MANIFEST = "manifest.json"
FORMAT = "wdmoe-split/2"  # 2: the manifest may carry the model config (devices build the experts class from it)
READABLE_FORMATS = ("wdmoe-split/1", FORMAT)  # 1: no config; devices run gate_up_proj / down_proj as SwiGLU
VERIFIED = ".verified.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}


def read_verified(root: Path) -> dict[str, dict[str, Any]]:
    """The verify-once record of a split directory: {relative path: size, mtime_ns, inode, sha256}; {} if none."""
    try:
        data = json.loads((root / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_verified(root: Path, digests: Mapping[str, str]) -> None:
    """Record that the files `digests` names (relative to `root`) have these sha256 now; best effort (a read-only
    directory records nothing, and two loads racing lose one's record, which only costs a re-hash)."""
    record = read_verified(root)
    for relative, digest in digests.items():
        record[relative] = {**_stamp(root / relative), "sha256": digest}
    with contextlib.suppress(OSError):
        write_json_atomic(root / VERIFIED, record)


def config_sha256(config_dict: dict[str, Any]) -> str:
    """A hash of the model config that ignores fields which do not change the model."""
    volatile = {"transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype"}
    canonical = json.dumps({k: v for k, v in config_dict.items() if k not in volatile}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def expert_key(layer: int, expert: int, name: str) -> str:
    return f"layers.{layer}.experts.{expert}.{name}"


def device_shard_name(device: int) -> str:
    return f"devices/device-{device}.safetensors"


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, Any]:
    """The tensors of a (verified) safetensors file on `device`; one that does not parse raises ShardError naming it."""
    from safetensors import SafetensorError  # torch: lazy, this module is read by light code (the planner)
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as exc:
        raise ShardError(
            f"{path} is not a readable safetensors file ({exc}); its sha256 matches the manifest, so the manifest was "
            "written for a broken file: re-run `wdmoe split`"
        ) from None


@dataclass(frozen=True)
class Quantization:
    """How the routed experts are stored: `bits[(layer, expert)]` is 8 or 4 (quantized, see
    `wdmoe.model.quantize`) or 16 (float16); an expert not listed is stored as the model has it (`dtype`).

    Attributes:
        bits: {(layer, expert): bit width} of the experts not stored as the model has them.
        group_size: the int4 group size requested at split time (columns per scale).
        dtype: the model's expert dtype ("float32", "bfloat16", ...): what a device computes in by default.
    """

    bits: dict[tuple[int, int], int] = field(default_factory=dict)
    group_size: int = 0
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        bits = {f"{layer}:{expert}": b for (layer, expert), b in sorted(self.bits.items())}
        return {"group_size": self.group_size, "dtype": self.dtype, "bits": bits}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Quantization:
        bits = {}
        for key, b in data["bits"].items():
            layer, expert = key.split(":")
            bits[(int(layer), int(expert))] = int(b)
        return cls(bits, int(data["group_size"]), str(data["dtype"]))


@dataclass(frozen=True)
class Manifest:
    """The manifest of a split directory."""

    family: str
    model_type: str
    config_sha256: str
    hidden_act: str
    placement: Placement
    files: dict[str, str]  # relative path -> sha256
    quantization: Quantization | None = None  # None: every expert as the model has it
    config: dict[str, Any] | None = None  # the model config (to_dict()); None in format 1 splits

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": FORMAT,
            "family": self.family,
            "model_type": self.model_type,
            "config_sha256": self.config_sha256,
            "hidden_act": self.hidden_act,
            "placement": self.placement.to_json(),
            "files": dict(sorted(self.files.items())),
        }
        if self.quantization is not None:
            data["quantization"] = self.quantization.to_json()
        if self.config is not None:
            data["config"] = self.config
        return data

    def write(self, root: Path) -> None:
        write_json_atomic(root / MANIFEST, self.to_json())

    @classmethod
    def read(cls, root: Path) -> Manifest:
        path = root / MANIFEST
        if not path.exists():
            raise ShardError(f"{root} is not a split directory: {MANIFEST} is missing (run `wdmoe split` first)")
        data = load_json(path, "manifest", ShardError)
        if not isinstance(data, dict):
            raise ShardError(f"{path}: a manifest is a JSON object (format, family, placement, files, ...); this one "
                             f"is a {type(data).__name__}")
        if data.get("format") not in READABLE_FORMATS:
            raise ShardError(f"{path}: format {data.get('format')!r} is not one of {READABLE_FORMATS}")
        from wdmoe.model.schemas import check_manifest  # pydantic: lazy, the runtime core imports without it

        check_manifest(data, str(path))
        try:
            manifest = cls(
                family=data["family"],
                model_type=data["model_type"],
                config_sha256=data["config_sha256"],
                hidden_act=data["hidden_act"],
                placement=Placement.from_json(data["placement"]),
                files=dict(data["files"]),
                quantization=Quantization.from_json(data["quantization"]) if "quantization" in data else None,
                config=data.get("config"),
            )
        except PlacementError as exc:
            raise PlacementError(f"{path}: manifest field 'placement': {exc}") from None
        manifest.check_layers(root)
        return manifest

    def check_layers(self, root: Path) -> None:
        """Refuse a placement whose layers are not decoder layers of the model in bs/config.json (if readable)."""
        config = root / "bs" / "config.json"
        try:
            num_layers = int(json.loads(config.read_text(encoding="utf-8"))["num_hidden_layers"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # checked, with its own message, when the BS part is loaded (verified_path, from_pretrained)
        outside = [layer for layer in self.placement.moe_layers if layer >= num_layers]
        if outside:
            raise ShardError(
                f"{root / MANIFEST}: manifest field 'placement.layers' has layer {outside[0]}; the model "
                f"({config}) has {num_layers} decoder layers (0..{num_layers - 1})"
            )

    def verified_path(self, root: Path, relative: str) -> Path:
        """The path of a manifest file after checking that it exists and that its sha256 matches."""
        expected = self.files.get(relative)
        if expected is None:
            raise ShardError(f"{relative} is not listed in {root / MANIFEST}")
        path = root / relative
        if not path.is_file():
            raise ShardError(f"shard {relative} is missing from {root}; re-run `wdmoe split` or copy it back")
        if read_verified(root).get(relative) == {**_stamp(path), "sha256": expected}:
            return path  # hashed before, unchanged since (size, mtime, inode)
        actual = sha256_file(path)
        if actual != expected:
            raise ShardError(
                f"checksum mismatch for {relative}: sha256 {actual[:16]}… but the manifest says {expected[:16]}…; "
                "the file is corrupt or from another split, refusing to load it"
            )
        record_verified(root, {relative: actual})
        return path

    def expert_bits(self, layer: int, expert: int) -> int | None:
        """The stored bit width of an expert (8, 4 or 16), or None when it is stored as the model has it."""
        return None if self.quantization is None else self.quantization.bits.get((layer, expert))

    def device_shard(self, root: Path, device: int) -> Path | None:
        """The verified shard of `device`, or None if the placement gives it no expert."""
        name = device_shard_name(device)
        return self.verified_path(root, name) if name in self.files else None
