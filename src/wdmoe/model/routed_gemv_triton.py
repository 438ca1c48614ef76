"""The routed experts of a decode step as two Triton GEMV kernels that read the expert ids on the GPU.

A decode step sends one token (a few rows) to k experts. cuBLAS needs the expert's weight tensor on the host, so
the host must first learn which experts the router chose: one synchronization per MoE layer, and a CUDA graph of
the step is impossible. These kernels take the router's `topk_index` (T, k) as a GPU tensor and a table of the
experts' weight addresses (int64 `data_ptr()`s, one per expert, pointing at the tensors each device holds), so a
whole decode step, routing included, is one stream of kernels with no host in the loop:

- `routed_gate_up_silu(x, index, gate_up_table, inter)`: for each assignment a = (t, j), expert e = index[t, j],
  silu(x[t] W_g[e]^T) * (x[t] W_u[e]^T) -> (T*k, I), from the (2I, H) gate_up matrix as transformers stores it;
- `routed_down(act, index, down_table, hidden)`: act[a] W_d[e]^T -> (T*k, H) with the (H, I) down matrix.

Each program reads BLOCK_N weight rows once (the GEMV is bound by the weight bytes, not by FLOPs) and sums in fp32.
They do torch's arithmetic: each product rounded to the weights' dtype, SiLU as x / (1 + exp(-x)) (CUDA's expf, an
IEEE division) on the rounded gate, rounded, then the product, rounded; they differ from cuBLAS only in the order
of the fp32 sums. Every weight must be contiguous, on the GPU of `x`, in `x`'s dtype (fp32, bf16 or fp16); the
tables must stay valid while a graph that captured them is replayed (the caller keeps the weights alive).
tests/unit/gpu/test_routed_gemv_triton.py checks them against torch.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # Triton ships with the CUDA builds of torch on Linux; CPU builds have none
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except ImportError:  # pragma: no cover - depends on the torch build
    triton = None

ROUTED_GEMV_ENV = "WDMOE_ROUTED_GEMV"  # "0": no device-side routed experts (the host path decides every step)
# (BLOCK_N, BLOCK_K, num_warps, num_stages) per kernel; tried on an H200 at Mixtral sizes (docs/gpu.md)
GATE_UP_TILE = (2, 512, 2, 3)
DOWN_TILE = (2, 1024, 4, 1)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.cache
def enabled() -> bool:
    """Triton importable, a GPU present, and not switched off by WDMOE_ROUTED_GEMV=0 (read once per process)."""
    return triton is not None and torch.cuda.is_available() and os.environ.get(ROUTED_GEMV_ENV, "1") != "0"


def applies(weights: list[tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype, device: torch.device) -> bool:
    """True when the kernels can run on these (gate_up, down) pairs: CUDA, one dtype, contiguous, on `device`."""
    if device.type != "cuda" or dtype not in DTYPES or not enabled():
        return False
    index = torch.cuda.current_device() if device.index is None else device.index
    return all(w.is_cuda and w.get_device() == index and w.dtype == dtype and w.is_contiguous()
               for pair in weights for w in pair)


def address_table(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """(E,) int64 on `device`: each tensor's address, in expert order."""
    return torch.tensor([t.data_ptr() for t in tensors], dtype=torch.int64, device=device)


def routed_gate_up_silu(x: torch.Tensor, index: torch.Tensor, gate_up_table: torch.Tensor,
                        inter: int, tile: tuple[int, int, int, int] = GATE_UP_TILE) -> torch.Tensor:
    """(T, H), (T, k) int64, (E,) addresses of (2I, H) matrices -> (T*k, I) silu(gate) * up per assignment."""
    rows, hidden = x.shape
    k = index.shape[1]
    x, index = x.contiguous(), index.contiguous()
    out = torch.empty((rows * k, inter), dtype=x.dtype, device=x.device)
    block_n, block_k, warps, stages = tile
    grid = (triton.cdiv(inter, block_n), rows * k)
    _gate_up_silu_kernel[grid](x, index, gate_up_table, out, hidden, inter, k,
                               BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


def routed_down(act: torch.Tensor, index: torch.Tensor, down_table: torch.Tensor, hidden: int,
                tile: tuple[int, int, int, int] = DOWN_TILE) -> torch.Tensor:
    """(T*k, I), (T, k) int64, (E,) addresses of (H, I) matrices -> (T*k, H) each assignment's expert output."""
    assignments, inter = act.shape
    out = torch.empty((assignments, hidden), dtype=act.dtype, device=act.device)
    block_n, block_k, warps, stages = tile
    grid = (triton.cdiv(hidden, block_n), assignments)
    _down_kernel[grid](act.contiguous(), index.contiguous(), down_table, out, hidden, inter,
                       BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
    return out


if triton is not None:

    @triton.jit
    def _gate_up_silu_kernel(x_ptr, idx_ptr, table_ptr, out_ptr, H, N, k,  # N: the intermediate size I
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n, a = tl.program_id(0), tl.program_id(1)  # a: assignment (t, j) = (a // k, a % k)
        dtype = out_ptr.dtype.element_ty
        expert = tl.load(idx_ptr + a)
        w_ptr = tl.load(table_ptr + expert).to(tl.pointer_type(dtype))
        rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = rows < N
        cols = tl.arange(0, BLOCK_K)
        x_row = x_ptr + (a // k).to(tl.int64) * H
        acc_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            col_ok = k0 + cols < H
            xv = tl.load(x_row + k0 + cols, mask=col_ok, other=0.0).to(tl.float32)
            ok = row_ok[:, None] & col_ok[None, :]
            offs = rows[:, None] * H + k0 + cols[None, :]
            wg = tl.load(w_ptr + offs, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
            wu = tl.load(w_ptr + offs + N * H, mask=ok, other=0.0, eviction_policy="evict_first").to(tl.float32)
            acc_g += wg * xv[None, :]
            acc_u += wu * xv[None, :]
        gate = tl.sum(acc_g, axis=1).to(dtype).to(tl.float32)  # each product rounded, as torch's GEMMs are
        up = tl.sum(acc_u, axis=1).to(dtype).to(tl.float32)
        silu = tl.math.div_rn(gate, 1.0 + libdevice.exp(-gate)).to(dtype).to(tl.float32)
        tl.store(out_ptr + a.to(tl.int64) * N + rows, (silu * up).to(dtype), mask=row_ok)

    @triton.jit
    def _down_kernel(act_ptr, idx_ptr, table_ptr, out_ptr, H, N,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_n, a = tl.program_id(0), tl.program_id(1)
        dtype = out_ptr.dtype.element_ty
        expert = tl.load(idx_ptr + a)
        w_ptr = tl.load(table_ptr + expert).to(tl.pointer_type(dtype))
        rows = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        row_ok = rows < H
        cols = tl.arange(0, BLOCK_K)
        act_row = act_ptr + a.to(tl.int64) * N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, N, BLOCK_K):
            col_ok = k0 + cols < N
            av = tl.load(act_row + k0 + cols, mask=col_ok, other=0.0).to(tl.float32)
            ok = row_ok[:, None] & col_ok[None, :]
            wv = tl.load(w_ptr + rows[:, None] * N + k0 + cols[None, :], mask=ok, other=0.0,
                         eviction_policy="evict_first").to(tl.float32)
            acc += wv * av[None, :]
        tl.store(out_ptr + a.to(tl.int64) * H + rows, tl.sum(acc, axis=1).to(dtype), mask=row_ok)
