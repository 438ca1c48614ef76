"""`dtype` and `torch_device` of the runtime: bf16 on the CPU equals the unsplit HF model in bf16, and a CUDA
device is refused, with the option and the fix named, where torch sees no GPU."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.conftest import FAMILIES
from wdmoe import DistributedMoE
from wdmoe.errors import WdmoeError
from wdmoe.model.split import split_model
from wdmoe.model.tiny import tiny_model
from wdmoe.runtime.loading import DeviceOptions, check_dtype, device_options

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing to refuse")


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_split_matches_unsplit_hf_model_in_bf16(family, tiny_models, tmp_path: Path) -> None:
    tiny_models[family].save_pretrained(tmp_path / "hf")  # fp32 on disk: both sides cast at load
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.bfloat16).eval()
    model = DistributedMoE.from_pretrained(tmp_path / "hf", num_devices=3, dtype=torch.bfloat16)
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(3))

    with torch.no_grad():
        expected = reference(ids).logits
        expected_tokens = reference.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False, pad_token_id=0
        )
    actual = model(ids).logits
    actual_tokens = model.generate(ids, max_new_tokens=8, do_sample=False)

    assert actual.dtype == torch.bfloat16
    # Tolerance: 2e-2 absolute is about one bf16 ulp at |logit| in [2, 4) (2^-6 = 0.0156), plus torch's own bf16
    # rtol. On the CPU both sides run the same kernels and agree exactly; GPU kernels of other batch shapes may not.
    torch.testing.assert_close(actual, expected, rtol=1.6e-2, atol=2e-2)
    assert torch.equal(actual_tokens, expected_tokens)


def test_dtype_casts_the_bs_weights_and_every_devices_shard(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split, dtype=torch.float16)

    assert {p.dtype for p in model.hf_model.parameters()} == {torch.float16}
    shards = [w for worker in model.pool.workers for pair in worker.weights.values() for w in pair]  # type: ignore[attr-defined]
    assert shards and {w.dtype for w in shards} == {torch.float16}
    assert model.model_costs().bytes_per_param == 2.0


def test_default_dtype_is_the_stored_one(mixtral_split: Path) -> None:
    model = DistributedMoE.from_pretrained(mixtral_split)

    assert {p.dtype for p in model.hf_model.parameters()} == {torch.float32}


@NO_GPU
def test_cuda_is_refused_with_the_option_and_the_fix(mixtral_split: Path) -> None:
    with pytest.raises(WdmoeError) as info:
        DistributedMoE.from_pretrained(mixtral_split, torch_device="cuda", dtype=torch.bfloat16)

    message = str(info.value)
    assert "torch_device = 'cuda'" in message
    assert "torch.cuda.is_available() is False" in message
    assert "use torch_device cpu" in message


@NO_GPU
def test_cli_device_option_refuses_cuda_naming_the_flag() -> None:
    with pytest.raises(WdmoeError, match=r"--device = 'cuda'.*use --device cpu"):
        device_options("cuda", "bf16")


def test_device_options_parse_the_cli_strings() -> None:
    assert device_options() == DeviceOptions("cpu", torch.float32)
    assert device_options("cpu", "bf16") == DeviceOptions("cpu", torch.bfloat16)
    assert device_options("cpu", "auto") == DeviceOptions("cpu", None)


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("tpu", "fp32", "--device = 'tpu' is not a device wdmoe runs on; use cpu, cuda or cuda:N"),
        ("cuda:x", "fp32", "--device = 'cuda:x' is not a device"),
        ("cpu", "int8", "--dtype 'int8' is unknown; choose one of fp32, bf16, fp16 or auto"),
    ],
)
def test_device_options_refuse_unknown_values(device: str, dtype: str, message: str) -> None:
    with pytest.raises(WdmoeError, match=re.escape(message)):
        device_options(device, dtype)


def test_a_non_float_dtype_is_refused(mixtral_split: Path) -> None:
    with pytest.raises(WdmoeError, match=r"dtype = torch\.int8"):
        DistributedMoE.from_pretrained(mixtral_split, dtype=torch.int8)
    assert check_dtype(None) is None


def test_split_from_bf16_weights_runs_in_bf16_as_stored(tmp_path: Path) -> None:
    split_model(tiny_model("mixtral", seed=7).to(torch.bfloat16), tmp_path / "split", 2)

    model = DistributedMoE.from_pretrained(tmp_path / "split")

    assert {p.dtype for p in model.hf_model.parameters()} == {torch.bfloat16}
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == torch.bfloat16
