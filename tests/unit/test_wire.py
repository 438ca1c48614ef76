"""The BS <-> device wire format: round trips for every dtype, and refusal of foreign or truncated buffers."""

from __future__ import annotations

import pytest
import torch

from wdmoe.backends.base import DeviceBatch, DeviceResult
from wdmoe.backends.wire import WireError, decode_batch, decode_result, encode_batch, encode_result


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
