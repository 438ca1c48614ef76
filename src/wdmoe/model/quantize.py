"""Compression (CoEL, papers.md §4.4 [R]): weight-only int8 / int4 quantization of routed experts, and per-token
quantization of the activations sent over the air.

Contract. Weights, per expert matrix W (out, in), symmetric, no zero point, round to nearest:

    int8: one scale per output channel   s_o  = max_i |W_oi| / 127,        q = round(W / s) in [-127, 127]
    int4: one scale per group of g input columns  s_og = max |W_o,group| / 7,  q in [-7, 7]
    dequantized W^ = s q, and every element obeys |W - W^| <= s / 2 (s of its channel or group).

int4 values are stored as q + 8 in a nibble, two per uint8: column 2j in the low nibble, column 2j+1 in the high
one, so an (out, in) matrix is an (out, in / 2) uint8 tensor. Scales are float32: int8 costs 8 + 32 / in bits per
weight, int4 with g = 32 costs 4 + 1. g shrinks to the largest even divisor of `in` not above the requested one,
so the stored shapes alone say g (g = in / scale.shape[1]).

Activations, per token row x (H,): fp16 is a cast; int8 is s = max |x| / 127 per token (one float32 scale, 32 bits
on the air), with the same |x - x^| <= s / 2.

Why our own code rather than a library (checked with torch 2.13 on this CPU): torchao 0.18's int8 weight-only
works, but its int4 weight-only configs need `mslk` or a CUDA build; optimum-quanto 0.2.7's qint8 works, but
quantizing to qint4 ran for more than 5 minutes without finishing (it builds an extension). Both keep weights in
tensor subclasses that need their own flattening to be saved as safetensors. The math above is short, plain
int8 / uint8 tensors load anywhere, and the bound is checked by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QUANTIZED_BITS = (8, 4)
DEFAULT_GROUP_SIZE = 32
_QMAX = {8: 127, 4: 7}
_TINY = 1e-30  # the scale of an all-zero row or group: q = 0 either way, and no division by zero


@dataclass(frozen=True)
class QuantizedTensor:
    """A weight-only quantized (out, in) matrix: `q` int8 (out, in) for 8 bits, uint8 (out, in / 2) for 4 bits,
    `scale` float32 (out, groups): one group per row for 8 bits."""

    bits: int
    q: torch.Tensor
    scale: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:  # (out, in)
        values = (unpack_int4(self.q) if self.bits == 4 else self.q).to(torch.float32)  # (out, in)
        out, groups = self.scale.shape
        grouped = values.view(out, groups, -1) * self.scale.unsqueeze(-1)  # (out, groups, g)
        return grouped.view(out, -1).to(dtype)

    @property
    def nbytes(self) -> int:
        return self.q.numel() * self.q.element_size() + self.scale.numel() * self.scale.element_size()

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The shard entries of this matrix: `{name}.qweight` and `{name}.scale`."""
        return {f"{name}.qweight": self.q.contiguous(), f"{name}.scale": self.scale.contiguous()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], name: str, bits: int) -> QuantizedTensor:
        return cls(bits, tensors[f"{name}.qweight"], tensors[f"{name}.scale"])


def group_size_for(in_features: int, group_size: int) -> int:
    """The largest even divisor of `in_features` not above `group_size` (int4 packs two columns per byte)."""
    if in_features % 2:
        raise ValueError(f"int4 needs an even number of input columns; this matrix has {in_features}")
    return max(g for g in range(2, min(group_size, in_features) + 1, 2) if in_features % g == 0)


def quantize(weight: torch.Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> QuantizedTensor:
    """Quantize an (out, in) matrix to `bits` (8: per output channel, 4: groups of `group_size` columns)."""
    if bits not in QUANTIZED_BITS:
        raise ValueError(f"bits = {bits}: weights quantize to {' or '.join(map(str, QUANTIZED_BITS))} bits")
    w = weight.detach().to(torch.float32)
    out, in_features = w.shape
    g = in_features if bits == 8 else group_size_for(in_features, group_size)
    grouped = w.view(out, in_features // g, g)  # (out, groups, g)
    qmax = _QMAX[bits]
    scale = (grouped.abs().amax(dim=-1) / qmax).clamp_min(_TINY)  # (out, groups)
    q = torch.round(grouped / scale.unsqueeze(-1)).clamp(-qmax, qmax).view(out, in_features).to(torch.int8)
    return QuantizedTensor(bits, pack_int4(q) if bits == 4 else q, scale)


def pack_int4(q: torch.Tensor) -> torch.Tensor:  # (out, in) int8 in [-8, 7] -> (out, in / 2) uint8
    nibbles = (q.to(torch.int16) + 8).to(torch.uint8)
    return nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:  # (out, in / 2) uint8 -> (out, in) int8 in [-8, 7]
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).view(packed.shape[0], -1)


def int8_per_token(x: torch.Tensor) -> torch.Tensor:  # (n, H) -> (n, H), same dtype
    """x quantized to int8 with one absmax scale per token (row) and dequantized: what the receiver gets."""
    xf = x.to(torch.float32)
    scale = (xf.abs().amax(dim=-1, keepdim=True) / 127).clamp_min(_TINY)  # (n, 1)
    return (torch.round(xf / scale).clamp(-127, 127) * scale).to(x.dtype)
