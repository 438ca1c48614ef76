"""The SwiGLU half of an expert's FFN, silu(x W_g^T) * (x W_u^T), as two Triton kernels for CUDA.

- `fused_gate_up_silu(x, gate_up)`: one kernel from the (2I, H) gate_up matrix as transformers stores it. Each
  program loads a (BLOCK_M, BLOCK_K) slice of the tokens and the matching (BLOCK_K, BLOCK_N) slices of the gate
  rows and of the up rows, so both products accumulate side by side in fp32; the epilogue applies SiLU and the
  product and writes (n, I). The (n, 2I) product never reaches memory and no elementwise kernel follows.
- `silu_mul(gate, up)`: silu(gate) * up in one elementwise kernel (torch runs two: silu, then the product), on
  two (n, I) tensors or on the two halves of one (n, 2I) product (any row stride).

Both do torch's arithmetic (each GEMM output rounded to the tensor dtype; SiLU as x / (1 + exp(-x)) with CUDA's
expf and an IEEE division, rounded; the product, rounded), so they differ from torch's
`F.silu(F.linear(x, W_g)) * F.linear(x, W_u)` at most where a GEMM sums in another order (as cuBLAS's own kernels
for two shapes may); at Mixtral's sizes on an H100 they gave the same bits (docs/gpu.md).
tests/unit/gpu/test_swiglu_triton.py checks them against torch and fp32.

`swiglu(x, gate_up)` picks by the number of rows, from measurements on an H100 (bench/gpu/expert_ffn.py,
docs/gpu.md): below TRITON_FROM_ROWS rows cuBLAS's GEMV and torch's kernels are faster (`applies` says no); up to
FUSED_UP_TO_ROWS the fused kernel; above, the GEMMs are compute-bound, cuBLAS's are faster than Triton's, and
silu_mul follows two cuBLAS GEMMs on the halves of gate_up. Tile sizes come from TILES, measured on an H100, not
from autotuning at run time: a device sees every batch size, and tuning each new one would stall its layer.
WDMOE_TRITON_FFN=0 turns it all off.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import torch
from torch.nn import functional as F

try:  # Triton ships with the CUDA builds of torch on Linux; CPU builds have none
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

TRITON_FFN_ENV = "WDMOE_TRITON_FFN"
TRITON_FROM_ROWS = 8  # below: torch's path
FUSED_UP_TO_ROWS = 128  # fused_gate_up_silu up to this many rows; cuBLAS GEMMs and silu_mul above
# (from_rows, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages): the last row with from_rows <= n applies
TILES: tuple[tuple[int, int, int, int, int, int, int], ...] = (
    (1, 64, 64, 128, 8, 4, 4),
    (96, 128, 64, 128, 8, 8, 3),
)
K_MULTIPLE = 128  # H must be a multiple of this (every BLOCK_K above divides it): no masks inside the K loop
ELEMENTWISE_BLOCK = 2048
MAX_NUMEL = 2**31 - 1  # the kernels index with int32


@functools.cache
def enabled() -> bool:
    """Triton importable, a GPU present, and not switched off by WDMOE_TRITON_FFN=0 (read once per process)."""
    return triton is not None and torch.cuda.is_available() and os.environ.get(TRITON_FFN_ENV, "1") != "0"


def applies(hidden: torch.Tensor, gate_up_proj: torch.Tensor) -> bool:
    """True when `swiglu` should run: kernels available for these tensors (CUDA, bf16 or fp16 on both,
    H % K_MULTIPLE == 0, sizes that int32 offsets reach) and at least TRITON_FROM_ROWS rows."""
    return (
        hidden.is_cuda
        and hidden.shape[0] >= TRITON_FROM_ROWS
        and hidden.dtype in (torch.bfloat16, torch.float16)
        and gate_up_proj.dtype == hidden.dtype
        and hidden.shape[-1] % K_MULTIPLE == 0
        and gate_up_proj.shape[0] % 2 == 0
        and max(hidden.shape[0], hidden.shape[-1]) * gate_up_proj.shape[0] <= MAX_NUMEL  # weight and output
        and hidden.shape[0] * hidden.shape[-1] <= MAX_NUMEL
        and enabled()
    )


def swiglu(hidden: torch.Tensor, gate_up_proj: torch.Tensor) -> torch.Tensor:  # (n, H), (2I, H) -> (n, I)
    """silu(hidden @ gate^T) * (hidden @ up^T) by the kernels that are fastest for this many rows (module doc)."""
    rows, inter = hidden.shape[0], gate_up_proj.shape[0] // 2
    if rows <= FUSED_UP_TO_ROWS:
        return fused_gate_up_silu(hidden, gate_up_proj)
    return silu_mul(F.linear(hidden, gate_up_proj[:inter]), F.linear(hidden, gate_up_proj[inter:]))


def tiles_for(rows: int) -> tuple[int, int, int, int, int, int]:
    """BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages of fused_gate_up_silu for `rows` tokens."""
    chosen = TILES[0]
    for row in TILES:
        if row[0] <= rows:
            chosen = row
    return chosen[1:]


def fused_gate_up_silu(
    hidden: torch.Tensor,  # (n, H); any row stride (an expanded row is read in place)
    gate_up_proj: torch.Tensor,  # (2I, H): gate rows, then up rows
    tiles: tuple[int, int, int, int, int, int] | None = None,
) -> torch.Tensor:  # (n, I)
    n, k = hidden.shape
    inter = gate_up_proj.shape[0] // 2
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = gate_up_proj if gate_up_proj.stride(-1) == 1 else gate_up_proj.contiguous()
    out = hidden.new_empty((n, inter))
    if n == 0:
        return out
    block_m, block_n, block_k, group_m, warps, stages = tiles or tiles_for(n)
    if k % block_k:
        raise ValueError(f"hidden size {k} is not a multiple of BLOCK_K {block_k}")
    grid = (triton.cdiv(n, block_m) * triton.cdiv(inter, block_n),)
    with _on_device_of(hidden):
        _GATE_UP[grid](
            hidden, weight, out, n, inter, k, hidden.stride(0), weight.stride(0), inter,
            BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP_M=group_m, num_warps=warps, num_stages=stages,
        )
    return out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:  # (n, I) each -> (n, I)
    """silu(gate) * up in one kernel; gate and up may have any row stride (the halves of one (n, 2I) product)."""
    gate = gate if gate.stride(-1) == 1 else gate.contiguous()
    up = up if up.stride(-1) == 1 else up.contiguous()
    rows, cols = gate.shape
    out = gate.new_empty((rows, cols))
    if rows and cols:
        with _on_device_of(gate):
            _SILU_MUL[(rows, triton.cdiv(cols, ELEMENTWISE_BLOCK))](
                gate, up, out, cols, gate.stride(0), up.stride(0), BLOCK=ELEMENTWISE_BLOCK, num_warps=8
            )
    return out


def _on_device_of(tensor: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
    """Triton launches on the current CUDA device: switch to the tensor's only when it is another one (the switch
    costs host time on every call)."""
    if tensor.get_device() == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(tensor.device)


_GATE_UP: Any = None
_SILU_MUL: Any = None
if triton is not None:

    @triton.jit
    def _silu_times(gate, up, dtype: tl.constexpr):
        """torch's arithmetic in fp32 from values already rounded to `dtype`: silu as x / (1 + exp(-x)) with CUDA's
        expf (libdevice) and an IEEE-rounded division, rounded; then the product, rounded."""
        silu = tl.math.div_rn(gate, 1.0 + libdevice.exp(-gate)).to(dtype).to(tl.float32)
        return (silu * up).to(dtype)

    @triton.jit
    def _gate_up_silu_kernel(
        x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):
        # grouped order: GROUP_M row blocks walk the same weight columns together, so a weight tile read from
        # memory serves every row block from L2
        pid = tl.program_id(0)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        size_m = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        in_m = offs_m[:, None] < M
        in_n = offs_n[None, :] < N
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :]
        g_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]  # (BLOCK_K, BLOCK_N) of gate^T
        u_ptrs = g_ptrs + N * stride_wn  # the same columns of up^T
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K // BLOCK_K):
            a = tl.load(x_ptrs, mask=in_m, other=0.0)
            acc_g = tl.dot(a, tl.load(g_ptrs, mask=in_n, other=0.0), acc_g)
            acc_u = tl.dot(a, tl.load(u_ptrs, mask=in_n, other=0.0), acc_u)
            x_ptrs += BLOCK_K
            g_ptrs += BLOCK_K
            u_ptrs += BLOCK_K
        dtype = out_ptr.dtype.element_ty
        gate = acc_g.to(dtype).to(tl.float32)
        up = acc_u.to(dtype).to(tl.float32)
        o_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
        tl.store(o_ptrs, _silu_times(gate, up, dtype), mask=in_m & in_n)

    @triton.jit
    def _silu_mul_kernel(g_ptr, u_ptr, out_ptr, N, stride_g, stride_u, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < N
        gate = tl.load(g_ptr + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(u_ptr + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * N + cols, _silu_times(gate, up, out_ptr.dtype.element_ty), mask=mask)

    _GATE_UP = _gate_up_silu_kernel
    _SILU_MUL = _silu_mul_kernel
