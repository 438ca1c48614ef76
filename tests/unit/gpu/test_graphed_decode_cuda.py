"""The decode step on the GPU: the routed GEMV kernels (wdmoe.model.routed_gemv_triton) against torch, and the
graphed decode (wdmoe.runtime.graphed_decode) against the unsplit transformers model in fp32, with no host
synchronization per step. They need a CUDA GPU and Triton and are skipped elsewhere (docs/gpu.md)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import FAMILIES
from wdmoe.model import routed_gemv_triton
from wdmoe.model.expert import expert_ffn
from wdmoe.model.split import split_model
from wdmoe.model.tiny import tiny_model
from wdmoe.runtime.model import DistributedMoE

CUDA = pytest.mark.skipif(
    not (torch.cuda.is_available() and routed_gemv_triton.triton is not None), reason="needs a CUDA GPU and Triton"
)
HID, INTER, EXPERTS = 256, 400, 5  # INTER not a multiple of any BLOCK_N: masked edge rows run
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 3])
def test_routed_kernels_equal_each_experts_ffn(dtype: torch.dtype, rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    experts = [(torch.randn(2 * INTER, HID, generator=gen) * HID**-0.5,
                torch.randn(HID, INTER, generator=gen) * INTER**-0.5) for _ in range(EXPERTS)]
    experts = [(gu.to("cuda", dtype), dn.to("cuda", dtype)) for gu, dn in experts]
    x = torch.randn(rows, HID, generator=gen).to("cuda", dtype)
    index = torch.tensor([[4, 1], [0, 4], [2, 3]][:rows], device="cuda")
    device = torch.device("cuda")
    assert routed_gemv_triton.applies(experts, dtype, device)
    gu_table = routed_gemv_triton.address_table([gu for gu, _ in experts], device)
    dn_table = routed_gemv_triton.address_table([dn for _, dn in experts], device)

    act = routed_gemv_triton.routed_gate_up_silu(x, index, gu_table, INTER)
    out = routed_gemv_triton.routed_down(act, index, dn_table, HID)

    pairs = [(t, e) for t in range(rows) for e in index[t].tolist()]
    for a, (t, e) in enumerate(pairs):
        gu, dn = experts[e]
        gate, up = F.linear(x[t : t + 1], gu).chunk(2, dim=-1)
        expected_act = F.silu(gate) * up
        torch.testing.assert_close(act[a : a + 1], expected_act, rtol=TOL[dtype], atol=TOL[dtype])
        torch.testing.assert_close(out[a : a + 1], expert_ffn(x[t : t + 1], gu, dn, F.silu),
                                   rtol=TOL[dtype], atol=TOL[dtype])


@CUDA
@pytest.mark.parametrize("family", FAMILIES)
def test_graphed_decode_in_fp32_gives_the_unsplit_tokens_with_no_sync_per_step(family: str, tmp_path: Path) -> None:
    reference = tiny_model(family, seed=7).to("cuda")
    split_model(reference, tmp_path / "split", 3)
    ours = DistributedMoE.from_pretrained(tmp_path / "split", torch_device="cuda")
    prompt = torch.tensor([[3, 17, 42, 5, 99]], device="cuda")
    with torch.inference_mode():
        expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=24,
                                      do_sample=False, pad_token_id=0)
    counts = []
    for new_tokens in (4, 24, 24):  # the first call captures; the others replay
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = ours.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
        assert torch.equal(out, expected[:, : prompt.shape[1] + new_tokens])
    assert ours._graphed[False].graph is not None
    assert counts[2] <= counts[0]  # 20 more steps cost no synchronization
    decode = [s for s in ours.steps if s.phase == "decode"]
    assert decode and all(len(s.layers) == len(ours.placement.moe_layers) for s in decode)
    ours.graphed_decode = False
    assert torch.equal(ours.generate(prompt, max_new_tokens=24, do_sample=False), expected)
    ours.close()
