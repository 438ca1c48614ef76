"""Safetensors one tensor at a time: read a checkpoint directory tensor by tensor, write a file as tensors come.

Stage: the I/O of `wdmoe split` (`wdmoe.model.stream_split`). Contract: memory holds one tensor (or one slice of
rows) at a time, never a file; `write_safetensors` returns the sha256 of the bytes it wrote, computed as it writes,
and its output is byte for byte what `safetensors.torch.save_file` writes for the same tensors (the tests compare).

Why plain reads rather than `safe_open`'s memory map: every page of a mapping that has been read counts in the
process's resident set until the mapping is closed, so reading a whole 3 GB file through one `safe_open` handle
shows 3 GB of RSS even though nothing is kept. `os.pread` into a fresh buffer holds exactly the tensor asked for.
The format (documented by safetensors): 8 bytes little-endian header length N, N bytes of JSON
`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}` (offsets from the end of the header),
then the data, little-endian, C order.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save as save_bytes

from wdmoe.errors import UnsupportedModelError

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class StoredTensor:
    """Where one tensor lies in a safetensors file: absolute byte range [start, end) of its data."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: Path) -> dict[str, StoredTensor]:
    """The tensors of one safetensors file, by name, in the file's header order."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    base = 8 + length
    out: dict[str, StoredTensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise UnsupportedModelError(f"{path}: tensor {name} has dtype {info['dtype']}, which wdmoe cannot read")
        begin, end = info["data_offsets"]
        out[name] = StoredTensor(path, DTYPES[info["dtype"]], tuple(info["shape"]), base + begin, base + end)
    return out


class Checkpoint:
    """The safetensors tensors of a Hugging Face model directory (one file, or shards listed by the index)."""

    def __init__(self, model_dir: Path) -> None:
        model_dir = Path(model_dir)
        index = model_dir / INDEX
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            raise UnsupportedModelError(f"{model_dir} has no safetensors weights (model.safetensors or {INDEX})")
        self.files = [model_dir / name for name in files]
        self.tensors: dict[str, StoredTensor] = {}
        for path in self.files:
            self.tensors.update(read_header(path))

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor `name`, freshly allocated (no mapping kept)."""
        stored = self.tensors[name]
        return self._read(stored, stored.start, stored.end, stored.shape)

    def read_row(self, name: str, row: int) -> torch.Tensor:
        """`tensor[row]` of a tensor stored with rows along dim 0 (e.g. one expert of a fused (E, ...) tensor)."""
        stored = self.tensors[name]
        row_bytes = (stored.end - stored.start) // stored.shape[0]
        start = stored.start + row * row_bytes
        return self._read(stored, start, start + row_bytes, stored.shape[1:])

    @staticmethod
    def _read(stored: StoredTensor, start: int, end: int, shape: tuple[int, ...]) -> torch.Tensor:
        buffer = bytearray(end - start)
        view = memoryview(buffer)
        fd = os.open(stored.path, os.O_RDONLY)
        try:
            done = 0
            while done < len(buffer):
                n = os.preadv(fd, [view[done:]], start + done)
                if n == 0:
                    raise UnsupportedModelError(f"{stored.path} is truncated: it ends before byte {start + done}")
                done += n
        finally:
            os.close(fd)
        if not buffer:
            return torch.empty(shape, dtype=stored.dtype)
        return torch.frombuffer(buffer, dtype=stored.dtype).reshape(shape)


@dataclass(frozen=True)
class TensorShape:
    """The dtype and shape of a tensor to be written."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count * self.dtype.itemsize


def file_order(specs: Mapping[str, TensorShape]) -> list[str]:
    """The order safetensors lays `specs` out in a file (by dtype, then name), asked of safetensors itself with
    empty placeholders, so the layout follows the installed version's rule."""
    placeholders = {name: torch.empty((0,), dtype=spec.dtype) for name, spec in specs.items()}
    blob = save_bytes(placeholders)
    (length,) = struct.unpack("<Q", blob[:8])
    return [name for name in json.loads(blob[8 : 8 + length]) if name != "__metadata__"]


def write_safetensors(
    path: Path,
    specs: Mapping[str, TensorShape],
    produce: Callable[[str], torch.Tensor],
    metadata: Mapping[str, str] | None = None,
) -> str:
    """Write a safetensors file of the tensors `specs` announces, asking `produce(name)` for each in file order and
    dropping it once written; returns the sha256 of the file, computed while writing."""
    order = file_order(specs)
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        spec = specs[name]
        header[name] = {"dtype": DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                        "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to a multiple of 8 bytes with spaces
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for chunk in (struct.pack("<Q", len(text)), text):
            f.write(chunk)
            digest.update(chunk)
        for name in order:
            tensor = produce(name)
            spec = specs[name]
            if tensor.dtype != spec.dtype or tuple(tensor.shape) != spec.shape:
                raise ValueError(f"{path}: tensor {name} came as {tensor.dtype} {tuple(tensor.shape)}, "
                                 f"announced as {spec.dtype} {spec.shape}")
            data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data  # a view, no copy
            f.write(data)
            digest.update(data)
            del tensor, data
    return digest.hexdigest()
