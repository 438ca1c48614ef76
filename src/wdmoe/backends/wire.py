"""The wire format between the BS and a remote device: one flat byte buffer per batch and per result.

A batch or a result crosses the transport as `bytes`: a small int64/float64 header, then the raw buffers of the
arrays. Nothing is pickled by us, and the receiver only reinterprets bytes as numbers (`torch.frombuffer`), so a
device can send nothing that executes on the BS. Raw bytes are also the cheapest payload of Ray's compiled-graph
channels (about 2.4x faster than a numpy array there, measured in bench/transport_overhead.py's setting).

    batch:  int64[6]  = MAGIC, device, layer, n (tokens), H, m (assignments);  int64 dtype code;
            float64[2] = dl_s, ul_s;  hidden (n, H) raw;  token_index (m,) int64;  expert (m,) int64
    result: int64[4]  = MAGIC, device, m, H;  int64 dtype code;  float64[2] = compute_s, air_s;  output (m, H) raw
"""

from __future__ import annotations

import numpy as np
import torch

from wdmoe.backends.base import DeviceBatch, DeviceResult

MAGIC = 0x57444D4F45  # "WDMOE"
DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CODE = {dtype: code for code, dtype in enumerate(DTYPES)}


class WireError(ValueError):
    """A buffer that is not a wdmoe batch or result (wrong magic, truncated, unknown dtype)."""


def _raw(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes()


def _tensor(buf: bytes | memoryview, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    if count == 0:
        return torch.empty(0, dtype=dtype)
    # the bytearray copy gives the tensor writable storage of its own (the received buffer is read-only)
    return torch.frombuffer(bytearray(buf[offset : offset + count * dtype.itemsize]), dtype=dtype)


def _dtype(code: int) -> torch.dtype:
    if not 0 <= code < len(DTYPES):
        raise WireError(f"dtype code {code} is unknown; expected 0..{len(DTYPES) - 1}")
    return DTYPES[code]


def _header(buf: bytes, ints: int) -> tuple[np.ndarray, np.ndarray, int]:
    size = 8 * (ints + 1) + 16
    if len(buf) < size:
        raise WireError(f"buffer of {len(buf)} bytes is shorter than the {size}-byte header")
    head = np.frombuffer(buf, dtype=np.int64, count=ints + 1)
    if int(head[0]) != MAGIC:
        raise WireError(f"buffer starts with {int(head[0]):#x}, not the wdmoe magic {MAGIC:#x}")
    floats = np.frombuffer(buf, dtype=np.float64, count=2, offset=8 * (ints + 1))
    return head, floats, size


def encode_batch(batch: DeviceBatch, air: bool = True) -> bytes:
    """The batch's bytes; `air=False` sends zero air time (the device then waits none)."""
    n, hidden_size = batch.hidden.shape
    m = batch.token_index.shape[0]
    head = np.array([MAGIC, batch.device, batch.layer, n, hidden_size, m, _CODE[batch.hidden.dtype]], np.int64)
    air_s = np.array([batch.dl_s, batch.ul_s] if air else [0.0, 0.0], dtype=np.float64)
    return b"".join(
        (head.tobytes(), air_s.tobytes(), _raw(batch.hidden), _raw(batch.token_index.to(torch.int64)),
         _raw(batch.expert.to(torch.int64)))
    )


def decode_batch(buf: bytes) -> DeviceBatch:
    head, air, offset = _header(buf, 6)
    device, layer, n, hidden_size, m, code = (int(v) for v in head[1:])
    dtype = _dtype(code)
    expected = offset + n * hidden_size * dtype.itemsize + 16 * m
    if len(buf) != expected:
        raise WireError(f"batch of {len(buf)} bytes; its header (n={n}, H={hidden_size}, m={m}) needs {expected}")
    hidden = _tensor(buf, offset, n * hidden_size, dtype).view(n, hidden_size)
    offset += n * hidden_size * dtype.itemsize
    token_index = _tensor(buf, offset, m, torch.int64)
    expert = _tensor(buf, offset + 8 * m, m, torch.int64)
    if m and (int(token_index.min()) < 0 or int(token_index.max()) >= n):
        raise WireError(f"batch token_index outside 0..{n - 1}")
    return DeviceBatch(device, layer, hidden, token_index, expert, float(air[0]), float(air[1]))


def encode_result(result: DeviceResult) -> bytes:
    m, hidden_size = result.output.shape
    head = np.array([MAGIC, result.device, m, hidden_size, _CODE[result.output.dtype]], dtype=np.int64)
    times = np.array([result.compute_s, result.air_s], dtype=np.float64)
    return head.tobytes() + times.tobytes() + _raw(result.output)


def decode_result(buf: bytes) -> DeviceResult:
    head, times, offset = _header(buf, 4)
    device, m, hidden_size, code = (int(v) for v in head[1:])
    dtype = _dtype(code)
    expected = offset + m * hidden_size * dtype.itemsize
    if len(buf) != expected:
        raise WireError(f"result of {len(buf)} bytes; its header (m={m}, H={hidden_size}) needs {expected}")
    output = _tensor(buf, offset, m * hidden_size, dtype).view(m, hidden_size)
    return DeviceResult(device, output, float(times[0]), float(times[1]))
