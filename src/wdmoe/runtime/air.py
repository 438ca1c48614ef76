"""Compression on the air (CoEL, papers.md §4.4 [R]): what the BS sends down and the devices send back, per MoE layer.

Contract: `AirCompression(dtype, fusion_tau)` is the `Runtime`'s optional stage between grouping and transport
(None, the default, costs nothing):

- dtype "fp32" | "fp16" | "int8": every hidden state sent down and every expert output sent up is converted to
  it and back (the receiver's view; int8 is per token, absmax scale, `wdmoe.model.quantize.int8_per_token`), so
  the accuracy effect is real. Bits per token: 32 H, 16 H, or 8 H + 32 (the float32 scale).
- fusion_tau in (0, 1]: a device's distinct tokens whose hidden states have cosine similarity >= tau with a
  cluster's first token are sent once, as their mean, and the device's outputs are used for every member
  (ToMe-style, greedy in token order). tau = 1 merges exact duplicates only (equal rows), and sends the row itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from wdmoe.model.quantize import int8_per_token

AIR_DTYPES = ("fp32", "fp16", "int8")
_BITS_PER_VALUE = {"fp32": 32, "fp16": 16, "int8": 8}
INT8_SCALE_BITS = 32  # one float32 scale per token


@dataclass(frozen=True)
class AirCompression:
    """dtype: the activations' dtype on the air (None: as the BS computes); fusion_tau: None (off) or in (0, 1]."""

    dtype: str | None = None
    fusion_tau: float | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in AIR_DTYPES:
            raise ValueError(f"air_dtype = {self.dtype!r}; choose one of {', '.join(AIR_DTYPES)} (or None)")
        if self.fusion_tau is not None and not 0.0 < self.fusion_tau <= 1.0:
            raise ValueError(f"fusion tau = {self.fusion_tau}: a cosine similarity threshold must lie in (0, 1]")

    def bits_per_token(self, hidden_size: int, compute_bits: int) -> int:
        """Bits of one token's hidden state (or one expert output) on the air."""
        if self.dtype is None:
            return compute_bits * hidden_size
        return _BITS_PER_VALUE[self.dtype] * hidden_size + (INT8_SCALE_BITS if self.dtype == "int8" else 0)

    def wire(self, x: torch.Tensor) -> torch.Tensor:  # (n, H) -> (n, H): what the receiver gets
        if self.dtype == "int8":
            return int8_per_token(x)
        if self.dtype == "fp16":
            return x.to(torch.float16).to(x.dtype)
        if self.dtype == "fp32":
            return x.to(torch.float32).to(x.dtype)
        return x

    def down(self, sent: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(rows sent (m, H) as received, the sent row of each assignment (a,), tokens saved by fusion)."""
        if self.fusion_tau is None or sent.shape[0] < 2:
            return self.wire(sent), rows, 0
        fused, member = fuse_rows(sent, self.fusion_tau)
        return self.wire(fused), member[rows], sent.shape[0] - fused.shape[0]


def bits_per_token(air: AirCompression | None, activation_bits: int | None, hidden_size: int,
                   compute_bits: int) -> int:
    """The air format: bits of one token's hidden state (or one expert output) on the air, the one number that the
    `LayerRecord` counts and the radio model charges. The air dtype's when compression sets one; else the radio
    scenario's `activation_bits` when a scenario is set (the model's assumption of what goes on the air); else the
    compute dtype's (what an in-process run moves)."""
    if air is not None and air.dtype is not None:
        return air.bits_per_token(hidden_size, compute_bits)
    if activation_bits is not None:
        return activation_bits * hidden_size
    return compute_bits * hidden_size


def fuse_rows(x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cluster rows (m, H), cluster of each row of x (n,), on the CPU) for x (n, H); the module docstring has the
    rule."""
    if tau >= 1.0:
        unique, member = torch.unique(x, dim=0, return_inverse=True)
        return unique, member.cpu()
    unit = F.normalize(x.to(torch.float32), dim=-1)
    close = (unit @ unit.T >= tau).cpu().numpy()  # (n, n)
    cluster = np.full(x.shape[0], -1, dtype=np.int64)
    count = 0
    for i in range(x.shape[0]):
        if cluster[i] < 0:
            cluster[(cluster < 0) & close[i]] = count
            cluster[i] = count
            count += 1
    member = torch.from_numpy(cluster)
    on_device = member.to(x.device)
    sums = x.new_zeros((count, x.shape[1]), dtype=torch.float32).index_add_(0, on_device, x.to(torch.float32))
    sizes = torch.bincount(on_device, minlength=count).unsqueeze(1)  # (m, 1)
    return (sums / sizes).to(x.dtype), member
