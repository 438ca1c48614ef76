"""One routed expert's FFN, the same math as transformers' eager experts (gated: act(x W_g) * (x W_u), then W_d).

On the CPU (and for fewer than SPLIT_GATE_UP_FROM_ROWS rows on CUDA) gate and up come from one fused GEMM with
the (2I, H) gate_up matrix, exactly as transformers computes them. On CUDA from SPLIT_GATE_UP_FROM_ROWS rows up,
gate and up are two GEMMs on the matrix's two row halves (views, no copy): the GEMMs take the same time as the
fused one, but their outputs are contiguous, and act(gate) * up on contiguous (n, I) tensors takes about 16 us
instead of 28 us at 256 rows on an H100 (strided halves of an (n, 2I) tensor run a slower elementwise kernel);
bench/gpu/expert_ffn.py measures the whole FFN (docs/gpu.md). Below that size one launch fewer matters more (a
decode step is bound by host time, not GPU time). On CUDA the two paths may differ in the last bits (cuBLAS picks
its kernels by shape), as GEMMs of any two shapes may; the CPU path is transformers' arithmetic, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

SPLIT_GATE_UP_FROM_ROWS = 128  # on CUDA: gate and up as two GEMMs from this many rows


def expert_ffn(
    hidden: torch.Tensor,  # (n, H)
    gate_up_proj: torch.Tensor,  # (2I, H)
    down_proj: torch.Tensor,  # (H, I)
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:  # (n, H)
    if hidden.is_cuda and hidden.shape[0] >= SPLIT_GATE_UP_FROM_ROWS:
        inter = down_proj.shape[1]
        gate, up = F.linear(hidden, gate_up_proj[:inter]), F.linear(hidden, gate_up_proj[inter:])  # (n, I) each
    else:
        gate, up = F.linear(hidden, gate_up_proj).chunk(2, dim=-1)  # (n, I) each
    return F.linear(act(gate) * up, down_proj)
