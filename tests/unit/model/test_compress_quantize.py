"""Weight and activation quantization (wdmoe.model.quantize) and the bit-width assignment (plan.quantize_assign)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wdmoe.model.quantize import group_size_for, int8_per_token, pack_int4, quantize, unpack_int4
from wdmoe.model.split import read_bits_file
from wdmoe.plan.quantize_assign import assign_bits, assigned_bytes


def test_int8_by_hand() -> None:
    w = torch.tensor([[1.27, -0.635, 0.004, 0.0]])  # absmax 1.27: scale 0.01, q = 127, -63.5 -> -64, 0.4 -> 0, 0
    q = quantize(w, 8)
    assert q.q.dtype == torch.int8 and q.q.tolist() == [[127, -64, 0, 0]]
    assert q.scale.item() == pytest.approx(0.01)
    assert q.dequantize()[0].tolist() == pytest.approx([1.27, -0.64, 0.0, 0.0])


def test_int4_by_hand_groups_of_two() -> None:
    w = torch.tensor([[7.0, -3.5, 0.7, 0.35]])  # groups (7, -3.5): scale 1; (0.7, 0.35): scale 0.1
    q = quantize(w, 4, group_size=2)
    assert q.q.dtype == torch.uint8 and q.q.shape == (1, 2)  # two values per byte
    assert q.scale[0].tolist() == pytest.approx([1.0, 0.1])
    assert q.dequantize()[0].tolist() == pytest.approx([7.0, -4.0, 0.7, 0.4])  # round half to even: -3.5 -> -4


@pytest.mark.parametrize(("bits", "group"), [(8, 32), (4, 32), (4, 16)])
def test_error_is_at_most_half_a_step(bits: int, group: int) -> None:
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(bits + group)) * 3
    q = quantize(w, bits, group)
    g = 64 if bits == 8 else group
    step = q.scale.repeat_interleave(g, dim=1)  # (48, 64) the scale of each element
    assert bool(((w - q.dequantize()).abs() <= step / 2 + 1e-6).all())
    assert q.nbytes == 48 * 64 * bits // 8 + q.scale.numel() * 4


def test_int4_pack_round_trip_and_layout() -> None:
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 2)  # (3, 32), every value
    packed = pack_int4(q)
    assert packed.shape == (3, 16) and packed.dtype == torch.uint8
    assert packed[0, 0].item() == (0 | (1 << 4))  # column 0 (-8 -> 0) in the low nibble, column 1 (-7 -> 1) high
    assert torch.equal(unpack_int4(packed), q)


def test_group_size_shrinks_to_an_even_divisor() -> None:
    assert group_size_for(224, 32) == 32
    assert group_size_for(100, 32) == 20
    assert group_size_for(6, 32) == 6
    with pytest.raises(ValueError, match="even"):
        group_size_for(7, 32)


def test_int8_per_token_bound_and_zero_rows() -> None:
    x = torch.randn(5, 40, generator=torch.Generator().manual_seed(1))
    x[2] = 0.0
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    assert bool(((x - int8_per_token(x)).abs() <= scale / 2 + 1e-7).all())
    assert torch.equal(int8_per_token(x)[2], x[2])


SIZES = {32: 400.0, 8: 100.0, 4: 50.0}


def test_assign_bits_by_score_under_the_budget() -> None:
    popularity = np.array([[0.9, 0.1, 0.5], [0.2, 0.6, 0.2]])
    importance = np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 1.0]])  # scores .45 .05 .25 / .1 .3 .2
    assert set(assign_bits(popularity, importance, SIZES, 6 * 400).values()) == {32}
    assert set(assign_bits(popularity, importance, SIZES, 6 * 50).values()) == {4}
    bits = assign_bits(popularity, importance, SIZES, 6 * 50 + 350 + 50, layers=[3, 5])
    assert bits == {(3, 0): 32, (5, 1): 8, (3, 2): 4, (5, 2): 4, (5, 0): 4, (3, 1): 4}
    assert assigned_bytes(bits, SIZES) <= 6 * 50 + 400


def test_assign_bits_refuses_an_impossible_budget_with_the_sizes() -> None:
    with pytest.raises(ValueError, match=r"6 experts need at least 0\.00 MB at 4 bits"):
        assign_bits(np.ones((2, 3)), np.ones((2, 3)), SIZES, 299)


def test_bits_file(tmp_path: Path) -> None:
    (tmp_path / "b.toml").write_text('default = 8\n[experts]\n"0:3" = 4\n')
    table = read_bits_file(tmp_path / "b.toml")
    assert table[(0, 3)] == 4 and table[(1, 1)] == 8
    (tmp_path / "b.json").write_text('{"experts": {"2:1": 4}}')
    assert read_bits_file(tmp_path / "b.json") == {(2, 1): 4}
