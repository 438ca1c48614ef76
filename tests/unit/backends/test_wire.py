"""The BS <-> device wire format: round trips for every dtype, and refusal of foreign or truncated buffers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.backends.wire import (
    WireError,
    decode_batch,
    decode_result,
    encode_batch,
    encode_result,
    result_size,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_batch_and_result_round_trip_bit_for_bit(dtype: torch.dtype) -> None:
    hidden = torch.randn(3, 8).to(dtype)
    batch = DeviceBatch(2, 5, hidden, torch.tensor([0, 2, 2, 1]), torch.tensor([4, 4, 7, 7]), 1e-3, 2e-3)
    back = decode_batch(encode_batch(batch))
    assert (back.device, back.layer, back.dl_s, back.ul_s) == (2, 5, 1e-3, 2e-3)
    assert torch.equal(back.hidden, hidden) and back.hidden.dtype == dtype
    assert torch.equal(back.token_index, batch.token_index) and torch.equal(back.expert, batch.expert)
    result = DeviceResult(2, torch.randn(4, 8).to(dtype), 0.25, 0.003)
    out = decode_result(encode_result(result))
    assert torch.equal(out.output, result.output) and (out.compute_s, out.air_s) == (0.25, 0.003)


def test_air_time_is_zeroed_when_not_emulated() -> None:
    batch = DeviceBatch(0, 0, torch.zeros(1, 4), torch.tensor([0]), torch.tensor([0]), 0.5, 0.5)
    back = decode_batch(encode_batch(batch, air=False))
    assert (back.dl_s, back.ul_s) == (0.0, 0.0)


def test_foreign_and_truncated_buffers_are_refused() -> None:
    buf = encode_batch(DeviceBatch(0, 0, torch.zeros(2, 4), torch.tensor([0, 1]), torch.tensor([1, 1])))
    with pytest.raises(WireError, match="magic"):
        decode_batch(b"\0" * len(buf))
    with pytest.raises(WireError, match="needs"):
        decode_batch(buf[:-8])
    with pytest.raises(WireError, match="magic"):
        decode_result(buf[8:] + b"\0" * 8)


def test_decoded_tensors_own_writable_storage() -> None:
    buf = encode_batch(DeviceBatch(0, 0, torch.ones(1, 4), torch.tensor([0]), torch.tensor([3])))
    back = decode_batch(buf)
    back.hidden.add_(1.0)  # would raise (or corrupt `buf`) if the tensor aliased the read-only received bytes
    assert torch.equal(decode_batch(buf).hidden, torch.ones(1, 4))
    out = decode_result(encode_result(DeviceResult(0, torch.ones(2, 4), 0.0)))
    out.output.mul_(2.0)
    assert torch.equal(out.output, torch.full((2, 4), 2.0))


def test_negative_sizes_and_out_of_range_rows_are_refused() -> None:
    import struct

    good = encode_batch(DeviceBatch(0, 0, torch.zeros(2, 4), torch.tensor([0, 1]), torch.tensor([1, 1])))
    fields = list(struct.unpack_from("<7q", good))
    fields[5] = -1  # m
    with pytest.raises(WireError, match="negative"):
        decode_batch(struct.pack("<7q", *fields) + good[56:])
    with pytest.raises(WireError, match="outside"):
        decode_batch(encode_batch(DeviceBatch(0, 0, torch.zeros(2, 4), torch.tensor([0, 2]), torch.tensor([1, 1]))))
    many = torch.arange(100) % 2  # more rows than the Python range check takes: the torch check
    decode_batch(encode_batch(DeviceBatch(0, 0, torch.zeros(2, 4), many, many)))
    with pytest.raises(WireError, match="outside"):
        decode_batch(encode_batch(DeviceBatch(0, 0, torch.zeros(2, 4), many - 1, many)))


@pytest.mark.parametrize("wire_dtype", [torch.float16, torch.bfloat16])
def test_a_device_answers_in_the_wire_dtype_whatever_its_weights(mixtral_split: Path, wire_dtype: torch.dtype) -> None:
    """fp32-stored experts, fp16 / bf16 on the wire: the device computes in fp32 and answers in the batch's dtype."""
    from wdmoe.backends.worker import ExpertWorker
    from wdmoe.model.shards import Manifest

    manifest = Manifest.read(mixtral_split)
    worker = ExpertWorker(mixtral_split, manifest, 0)
    layer = next(iter(worker.weights))[0]
    held = [e for (lay, e) in worker.weights if lay == layer]
    gate_up = worker.weights[(layer, held[0])][0]
    assert gate_up.dtype == torch.float32 and len(held) >= 2
    hidden = torch.randn(3, gate_up.shape[1])
    rows = torch.tensor([0, 2, 1, 1])
    for experts in (torch.tensor([held[0]] * 4), torch.tensor([held[0], held[1], held[1], held[0]])):
        exact = worker.run(DeviceBatch(0, layer, hidden, rows, experts)).output
        batch = decode_batch(encode_batch(DeviceBatch(0, layer, hidden.to(wire_dtype), rows, experts)))
        answer = encode_result(worker.run(batch))
        assert len(answer) == result_size(batch)  # what the BS checks a device's announced length against
        out = decode_result(answer).output
        assert out.dtype == wire_dtype
        torch.testing.assert_close(out.float(), exact, rtol=0.05, atol=0.05)


def test_round_frame_parts_and_refusals() -> None:
    from wdmoe.backends.wire import encode_round, round_part

    parts = [b"abc", None, b"", b"defgh"]
    frame = encode_round(parts)
    got = [round_part(frame, i) for i in range(4)]
    assert [None if p is None else bytes(p) for p in got] == [b"abc", None, None, b"defgh"]
    with pytest.raises(WireError, match="no part 4"):
        round_part(frame, 4)
    with pytest.raises(WireError, match="shorter"):
        round_part(frame[:-1], 3)
    with pytest.raises(WireError, match="no part count"):
        round_part(b"\0", 0)
