"""One routed expert's FFN, the same math as transformers' eager experts (gated: act(x W_g) * (x W_u), then W_d).

On the CPU gate and up come from one fused GEMM with the (2I, H) gate_up matrix, exactly as transformers computes
them, bit for bit. On CUDA, in order of preference:
- SiLU experts in bf16/fp16 with H a multiple of 128 (Mixtral, Qwen-MoE, ...) and at least 8 rows run the
  Triton kernels of wdmoe.model.swiglu_triton: up to 128 rows one kernel computes silu(gate) * up straight from
  gate_up (no (n, 2I) product in memory, no elementwise kernels); above, cuBLAS computes gate and up as two GEMMs
  and one kernel silu(gate) * up. WDMOE_TRITON_FFN=0 turns this off.
- Otherwise, from SPLIT_GATE_UP_FROM_ROWS rows up, gate and up are two GEMMs on the matrix's two row halves
  (views, no copy): the GEMMs take the same time as the fused one, but their outputs are contiguous, and
  act(gate) * up on contiguous (n, I) tensors takes about 16 us instead of 28 us at 256 rows on an H100 (strided
  halves of an (n, 2I) tensor run a slower elementwise kernel). Below that size, one fused GEMM (one launch fewer
  matters more: a decode step is bound by host time, not GPU time).
bench/gpu/expert_ffn.py measures the whole FFN (docs/gpu.md). On CUDA the paths may differ in the last bits (each
sums its GEMMs in its own order, as cuBLAS's kernels for two shapes may); every one rounds as torch does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F
from transformers import activations

from wdmoe.model import swiglu_triton

SPLIT_GATE_UP_FROM_ROWS = 128  # on CUDA without the Triton kernels: gate and up as two GEMMs from this many rows
_SILU_TYPES: tuple[type, ...] = tuple(
    cls for cls in (torch.nn.SiLU, getattr(activations, "SiLUActivation", None)) if isinstance(cls, type)
)


def is_silu(act: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    """True for F.silu, torch.nn.SiLU and transformers' SiLU module (what ACT2FN["silu"] returns)."""
    return act is F.silu or isinstance(act, _SILU_TYPES)


def expert_ffn(
    hidden: torch.Tensor,  # (n, H)
    gate_up_proj: torch.Tensor,  # (2I, H)
    down_proj: torch.Tensor,  # (H, I)
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:  # (n, H)
    if hidden.is_cuda and is_silu(act) and swiglu_triton.applies(hidden, gate_up_proj):
        return F.linear(swiglu_triton.swiglu(hidden, gate_up_proj), down_proj)
    return expert_ffn_torch(hidden, gate_up_proj, down_proj, act)


def expert_ffn_torch(
    hidden: torch.Tensor,  # (n, H)
    gate_up_proj: torch.Tensor,  # (2I, H)
    down_proj: torch.Tensor,  # (H, I)
    act: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:  # (n, H)
    """expert_ffn without the Triton kernels: torch's operators only (what every expert ran before them)."""
    if hidden.is_cuda and hidden.shape[0] >= SPLIT_GATE_UP_FROM_ROWS:
        inter = down_proj.shape[1]
        gate, up = F.linear(hidden, gate_up_proj[:inter]), F.linear(hidden, gate_up_proj[inter:])  # (n, I) each
    else:
        gate, up = F.linear(hidden, gate_up_proj).chunk(2, dim=-1)  # (n, I) each
    return F.linear(act(gate) * up, down_proj)
