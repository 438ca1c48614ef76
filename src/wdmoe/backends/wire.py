"""The wire format between the BS and a remote device: one flat byte buffer per batch and per result.

A batch or a result crosses the transport as `bytes`: a small int64/float64 header, then the raw buffers of the
arrays. Nothing is pickled by us, and the receiver only reinterprets bytes as numbers (`torch.frombuffer`), so a
device can send nothing that executes on the BS. Raw bytes are also the cheapest payload of Ray's compiled-graph
channels (about 2.4x faster than a numpy array there, measured in bench/transport_overhead.py's setting).

    batch:  int64[6]  = MAGIC, device, layer, n (tokens), H, m (assignments);  int64 dtype code;
            float64[2] = dl_s, ul_s;  hidden (n, H) raw;  token_index (m,) int64;  expert (m,) int64
    result: int64[4]  = MAGIC, device, m, H;  int64 dtype code;  float64[2] = compute_s, air_s;  output (m, H) raw
    round:  int64 = D;  int64[D] = the byte length of each part (0: that device is idle);  the D parts, in order

A round frame carries the batches of one compiled-graph round in one buffer: Ray writes a single `bytes` argument
to its channel as is, while several arguments are pickled together (measured: a bare 2-device round 250-350 us
against 370-650 us with one argument per device, on the 2-core machine of bench/transport_overhead.py).

Both directions sit in the per-layer round trip, so encoding and decoding are a handful of calls each: the header
is one `struct` call, each array is copied once (into the buffer on encode, out of it on decode, so that a decoded
tensor owns writable storage and never aliases the received buffer).
"""

from __future__ import annotations

import struct
from typing import Any

import torch

from wdmoe.backends.base import DeviceBatch, DeviceResult

MAGIC = 0x57444D4F45  # "WDMOE"
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CODE = {dtype: code for code, dtype in enumerate(DTYPES)}
_BATCH_HEAD = struct.Struct("<7q2d")  # MAGIC, device, layer, n, H, m, dtype code; dl_s, ul_s
_RESULT_HEAD = struct.Struct("<5q2d")  # MAGIC, device, m, H, dtype code; compute_s, air_s
_COUNT = struct.Struct("<q")
_SMALL = 64  # index arrays up to this many entries are range-checked in Python (cheaper than torch ops)


class WireError(ValueError):
    """A buffer that is not a wdmoe batch or result (wrong magic, truncated, unknown dtype)."""


def _raw(t: torch.Tensor) -> memoryview:
    """The bytes of `t` (on the CPU, contiguous) without a copy of their own: b"".join copies them once."""
    if t.device.type != "cpu" or t.requires_grad or not t.is_contiguous():
        t = t.detach().contiguous().cpu()
    return (t.view(torch.uint8) if t.dtype == torch.bfloat16 else t).numpy().data  # numpy has no bf16


def _tensor(buf: bytes | bytearray | memoryview, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    # the bytearray copy gives the tensor writable storage of its own (the received buffer is read-only)
    return torch.frombuffer(bytearray(memoryview(buf)[offset : offset + count * dtype.itemsize]), dtype=dtype)


def _dtype(code: int) -> torch.dtype:
    if not 0 <= code < len(DTYPES):
        raise WireError(f"dtype code {code} is unknown; expected 0..{len(DTYPES) - 1}")
    return DTYPES[code]


def _header(buf: bytes | bytearray | memoryview, head: struct.Struct) -> tuple[Any, ...]:
    if len(buf) < head.size:
        raise WireError(f"buffer of {len(buf)} bytes is shorter than the {head.size}-byte header")
    fields = head.unpack_from(buf)
    if fields[0] != MAGIC:
        raise WireError(f"buffer starts with {int(fields[0]):#x}, not the wdmoe magic {MAGIC:#x}")
    return fields


def _int64(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.int64 else t.to(torch.int64)


def encode_batch(batch: DeviceBatch, air: bool = True) -> bytes:
    """The batch's bytes; `air=False` sends zero air time (the device then waits none)."""
    n, hidden_size = batch.hidden.shape
    m = batch.token_index.shape[0]
    head = _BATCH_HEAD.pack(
        MAGIC, batch.device, batch.layer, n, hidden_size, m, _CODE[batch.hidden.dtype],
        batch.dl_s if air else 0.0, batch.ul_s if air else 0.0,
    )
    return b"".join((head, _raw(batch.hidden), _raw(_int64(batch.token_index)), _raw(_int64(batch.expert))))


def decode_batch(buf: bytes | bytearray | memoryview) -> DeviceBatch:
    _, device, layer, n, hidden_size, m, code, dl_s, ul_s = _header(buf, _BATCH_HEAD)
    if min(n, hidden_size, m) < 0:
        raise WireError(f"batch header has a negative size (n={n}, H={hidden_size}, m={m})")
    dtype = _dtype(code)
    offset = _BATCH_HEAD.size
    expected = offset + n * hidden_size * dtype.itemsize + 16 * m
    if len(buf) != expected:
        raise WireError(f"batch of {len(buf)} bytes; its header (n={n}, H={hidden_size}, m={m}) needs {expected}")
    hidden = _tensor(buf, offset, n * hidden_size, dtype).view(n, hidden_size)
    offset += n * hidden_size * dtype.itemsize
    token_index = _tensor(buf, offset, m, torch.int64)
    expert = _tensor(buf, offset + 8 * m, m, torch.int64)
    if m:
        if m <= _SMALL:
            rows = struct.unpack_from(f"<{m}q", buf, offset)
            low, high = min(rows), max(rows)
        else:
            low, high = int(token_index.min()), int(token_index.max())
        if low < 0 or high >= n:
            raise WireError(f"batch token_index outside 0..{n - 1}")
    return DeviceBatch(device, layer, hidden, token_index, expert, dl_s, ul_s)


def encode_result(result: DeviceResult) -> bytes:
    m, hidden_size = result.output.shape
    head = _RESULT_HEAD.pack(
        MAGIC, result.device, m, hidden_size, _CODE[result.output.dtype], result.compute_s, result.air_s
    )
    return b"".join((head, _raw(result.output)))


def result_size(batch: DeviceBatch) -> int:
    """The byte size of the result of `batch` (`encode_result`: one output row per assignment, in the batch's
    dtype), which a receiver checks an announced length against before allocating for it."""
    return _RESULT_HEAD.size + batch.token_index.shape[0] * batch.hidden.shape[1] * batch.hidden.element_size()


def decode_result(buf: bytes | bytearray | memoryview) -> DeviceResult:
    _, device, m, hidden_size, code, compute_s, air_s = _header(buf, _RESULT_HEAD)
    if min(m, hidden_size) < 0:
        raise WireError(f"result header has a negative size (m={m}, H={hidden_size})")
    dtype = _dtype(code)
    offset = _RESULT_HEAD.size
    expected = offset + m * hidden_size * dtype.itemsize
    if len(buf) != expected:
        raise WireError(f"result of {len(buf)} bytes; its header (m={m}, H={hidden_size}) needs {expected}")
    output = _tensor(buf, offset, m * hidden_size, dtype).view(m, hidden_size)
    return DeviceResult(device, output, compute_s, air_s)


def encode_round(parts: list[bytes | None]) -> bytes:
    """One buffer for the parts of a round, in device order (None: an idle device, sent as an empty part)."""
    lengths = [0 if part is None else len(part) for part in parts]
    return b"".join((struct.pack(f"<{len(parts) + 1}q", len(parts), *lengths), *(p for p in parts if p)))


def round_part(buf: bytes | memoryview, index: int) -> memoryview | None:
    """Part `index` of a round buffer, without a copy; None for an idle device."""
    if len(buf) < _COUNT.size:
        raise WireError(f"round buffer of {len(buf)} bytes has no part count")
    (count,) = _COUNT.unpack_from(buf)
    if not 0 <= index < count or len(buf) < 8 * (count + 1):
        raise WireError(f"round buffer of {len(buf)} bytes has no part {index} (its header says {count} parts)")
    lengths = struct.unpack_from(f"<{index + 1}q", buf, 8)
    start = 8 * (count + 1) + sum(lengths[:index])
    if min(lengths) < 0 or start + lengths[index] > len(buf):
        raise WireError(f"round buffer of {len(buf)} bytes is shorter than its part {index}")
    return memoryview(buf)[start : start + lengths[index]] if lengths[index] else None
