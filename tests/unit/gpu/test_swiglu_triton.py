"""The Triton SwiGLU kernels of the devices' FFN (wdmoe.model.swiglu_triton) against torch and against fp32, and
which path `expert_ffn` takes. The kernel tests need a CUDA GPU and Triton and are skipped elsewhere (CI's machine
has no GPU: they run on the GPU machine, `pytest tests/unit/gpu`, docs/gpu.md); the dispatch rules that need no
GPU run everywhere."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from transformers.activations import ACT2FN

from wdmoe.model import swiglu_triton
from wdmoe.model.expert import expert_ffn, is_silu

CUDA = pytest.mark.skipif(
    not (torch.cuda.is_available() and swiglu_triton.triton is not None), reason="needs a CUDA GPU and Triton"
)
HID, INTER = 256, 400  # HID a multiple of K_MULTIPLE; INTER not a multiple of any BLOCK_N (masked edge tiles run)


def _weights(dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    gate_up = torch.randn(2 * INTER, HID, generator=gen) * HID**-0.5
    down = torch.randn(HID, INTER, generator=gen) * INTER**-0.5
    return gate_up.to("cuda", dtype), down.to("cuda", dtype)


def _torch_swiglu(x: torch.Tensor, gate_up: torch.Tensor) -> torch.Tensor:
    return F.silu(F.linear(x, gate_up[:INTER])) * F.linear(x, gate_up[INTER:])


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in units in the last place of b's dtype at b (the spacing of that dtype's numbers in b's binade)."""
    info = torch.finfo(b.dtype)
    _, exponent = torch.frexp(b.float().abs().clamp_min(info.smallest_normal))  # |b| = m * 2**exponent, m in [0.5, 1)
    spacing = torch.ldexp(torch.full_like(b, info.eps, dtype=torch.float32), exponent - 1)
    return (a.float() - b.float()).abs() / spacing


def test_silu_is_recognised_in_every_form_transformers_and_torch_give_it() -> None:
    assert is_silu(F.silu) and is_silu(torch.nn.SiLU()) and is_silu(ACT2FN["silu"]) and is_silu(ACT2FN["swish"])
    assert not is_silu(F.gelu) and not is_silu(ACT2FN["gelu"]) and not is_silu(torch.relu)


def test_the_kernels_are_never_offered_for_cpu_tensors_unsupported_shapes_or_few_rows() -> None:
    x, gate_up = torch.randn(16, HID, dtype=torch.bfloat16), torch.randn(2 * INTER, HID, dtype=torch.bfloat16)
    assert not swiglu_triton.applies(x, gate_up)
    if torch.cuda.is_available() and swiglu_triton.enabled():
        cx, cw = x.cuda(), gate_up.cuda()
        assert swiglu_triton.applies(cx, cw)
        assert not swiglu_triton.applies(cx[: swiglu_triton.TRITON_FROM_ROWS - 1], cw)  # cuBLAS's GEMV is faster
        assert not swiglu_triton.applies(cx.float(), cw.float())  # fp32: torch's path
        assert not swiglu_triton.applies(cx[:, :200].contiguous(), cw[:, :200].contiguous())  # HID % 128 != 0


def test_tiles_table_starts_at_one_row_and_grows() -> None:
    starts = [row[0] for row in swiglu_triton.TILES]
    assert starts[0] == 1 and starts == sorted(starts)
    assert swiglu_triton.tiles_for(1) == swiglu_triton.TILES[0][1:]
    assert swiglu_triton.tiles_for(10_000) == swiglu_triton.TILES[-1][1:]
    for _, *tile in swiglu_triton.TILES:
        assert HID % tile[2] == 0  # every BLOCK_K divides K_MULTIPLE, so every supported HID
        assert swiglu_triton.K_MULTIPLE % tile[2] == 0


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 5, 64, 100, 191, 300])
def test_fused_gate_up_silu_is_torch_arithmetic_up_to_gemm_summation_order(dtype, rows) -> None:
    gate_up, _ = _weights(dtype, seed=rows)
    x = torch.randn(rows, HID, generator=torch.Generator().manual_seed(rows)).to("cuda", dtype)
    exact = F.silu(x.float() @ gate_up.float()[:INTER].T) * (x.float() @ gate_up.float()[INTER:].T)

    out = swiglu_triton.fused_gate_up_silu(x, gate_up)
    reference = _torch_swiglu(x, gate_up)

    assert out.shape == (rows, INTER) and out.dtype == dtype
    # as close to fp32 as torch's own result (the same roundings; only the GEMMs' summation order differs)
    err, torch_err = (float((y.float() - exact).norm() / exact.norm()) for y in (out, reference))
    assert err <= 1.05 * torch_err
    # and element by element a few last places from torch's at most, most of them equal
    assert float((out != reference).float().mean()) < 0.1
    assert float(_ulps(out, reference).max()) <= 8


@CUDA
def test_fused_gate_up_silu_reads_an_expanded_row_and_every_tile_table_entry_agrees() -> None:
    gate_up, _ = _weights(torch.bfloat16)
    row = torch.randn(1, HID, generator=torch.Generator().manual_seed(1)).to("cuda", torch.bfloat16)
    expanded = row.expand(3, -1)  # what the device gathers for one decode token sent to an expert 3 times

    out = swiglu_triton.fused_gate_up_silu(expanded, gate_up)

    assert expanded.stride(0) == 0
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    assert torch.equal(out, swiglu_triton.fused_gate_up_silu(expanded.contiguous(), gate_up))
    by_tiles = [swiglu_triton.fused_gate_up_silu(expanded.contiguous(), gate_up, t[1:]) for t in swiglu_triton.TILES]
    for other in by_tiles:
        assert float(_ulps(other, out).max()) <= 8
    assert swiglu_triton.fused_gate_up_silu(row[:0], gate_up).shape == (0, INTER)


@CUDA
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_mul_equals_torchs_two_kernels_on_tensors_and_on_halves_of_one(dtype) -> None:
    gen = torch.Generator().manual_seed(2)
    gate, up = (torch.randn(37, 3001, generator=gen).mul(4).to("cuda", dtype) for _ in range(2))  # edge blocks run
    product = torch.cat([gate, up], dim=1)  # (n, 2I): its halves have row stride 2I

    out = swiglu_triton.silu_mul(gate, up)
    halves = swiglu_triton.silu_mul(product[:, :3001], product[:, 3001:])
    reference = F.silu(gate) * up

    # the same arithmetic as torch's two kernels (CUDA's expf, an IEEE division, the same roundings): the same bits
    assert torch.equal(out, reference), (float((out != reference).float().mean()), float(_ulps(out, reference).max()))
    assert torch.equal(halves, reference)
    assert swiglu_triton.silu_mul(gate[:0], up[:0]).shape == (0, 3001)


@CUDA
@pytest.mark.parametrize(
    "rows",
    [
        swiglu_triton.TRITON_FROM_ROWS - 1,
        swiglu_triton.TRITON_FROM_ROWS,
        swiglu_triton.FUSED_UP_TO_ROWS,
        swiglu_triton.FUSED_UP_TO_ROWS + 1,
        300,
    ],
)
def test_expert_ffn_on_cuda_takes_the_path_its_row_count_names(rows) -> None:
    gate_up, down = _weights(torch.bfloat16)
    x = torch.randn(rows, HID, generator=torch.Generator().manual_seed(3)).to("cuda", torch.bfloat16)
    if rows < swiglu_triton.TRITON_FROM_ROWS:
        gate, up = F.linear(x, gate_up).chunk(2, -1)
        inner = F.silu(gate) * up
    elif rows <= swiglu_triton.FUSED_UP_TO_ROWS:
        inner = swiglu_triton.fused_gate_up_silu(x, gate_up)
    else:
        inner = swiglu_triton.silu_mul(F.linear(x, gate_up[:INTER]), F.linear(x, gate_up[INTER:]))

    assert torch.equal(expert_ffn(x, gate_up, down, ACT2FN["silu"]), F.linear(inner, down))
    if rows >= swiglu_triton.TRITON_FROM_ROWS:
        assert torch.equal(swiglu_triton.swiglu(x, gate_up), inner)
    # another activation: torch's arithmetic (two GEMMs from 128 rows, one fused GEMM below)
    if rows >= 128:
        gate, up = F.linear(x, gate_up[:INTER]), F.linear(x, gate_up[INTER:])
    else:
        gate, up = F.linear(x, gate_up).chunk(2, -1)
    assert torch.equal(expert_ffn(x, gate_up, down, F.gelu), F.linear(F.gelu(gate) * up, down))


@CUDA
def test_the_fused_kernel_replays_from_a_cuda_graph() -> None:
    gate_up, down = _weights(torch.bfloat16)
    rows = swiglu_triton.TRITON_FROM_ROWS  # the fused kernel's path
    static_in = torch.randn(rows, HID, generator=torch.Generator().manual_seed(4)).to("cuda", torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        expert_ffn(static_in, gate_up, down, F.silu)  # compiles and loads the kernel outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = expert_ffn(static_in, gate_up, down, F.silu)

    for seed in (5, 6):
        x = torch.randn(rows, HID, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16)
        static_in.copy_(x)
        graph.replay()
        assert torch.equal(static_out, expert_ffn(x, gate_up, down, F.silu))
