"""Every MoE model type of the installed transformers, split over 4 devices with TopK, against the unsplit model.

fp32: logits within 1e-5 and 8 greedy tokens identical. The model types of DEFAULT_RUN run in every test run;
the others are marked slow (the whole parametrization takes several minutes on a busy 2-core machine).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.model.discover import experts_sites
from wdmoe.model.shards import MANIFEST, Manifest
from wdmoe.model.split import split_model
from wdmoe.model.zoo import NOT_BUILT, moe_model_types, tiny_any_model

# one of each kind: plain SwiGLU, biases + transposed + interleaved (gpt_oss), router at .router and the block at
# .block_sparse_moe (granitemoe), no gate (nemotron_h, a hybrid Mamba model whose MoE is its `mixer`),
# grouped sigmoid with a shared expert and MLA (deepseek_v3), shared expert behind a sigmoid gate (qwen2_moe)
DEFAULT_RUN = ("mixtral", "gpt_oss", "granitemoe", "nemotron_h", "deepseek_v3", "qwen2_moe")


def _params() -> list[object]:
    return [
        pytest.param(t, marks=() if t in DEFAULT_RUN else (pytest.mark.slow,)) for t in moe_model_types()
    ]


def _ids() -> torch.Tensor:
    return torch.randint(2, 128, (1, 12), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_type", _params())
def test_every_moe_family_split_over_4_devices_is_exact_in_fp32(model_type: str, tmp_path: Path) -> None:
    if model_type in NOT_BUILT:
        pytest.skip(NOT_BUILT[model_type])
    reference = tiny_any_model(model_type, seed=3)
    assert experts_sites(reference), f"{model_type}: no experts module found"
    split_model(reference, tmp_path / "split", 4)
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
        expected = reference.generate(ids, max_new_tokens=8, do_sample=False)
        assert torch.equal(model.generate(ids, max_new_tokens=8, do_sample=False), expected)
    model.close()


def test_a_format_1_split_without_config_still_loads_and_stays_exact(tiny_models, tmp_path: Path) -> None:
    reference = tiny_models["qwen3_moe"]
    split_model(reference, tmp_path / "split", 3)
    data = json.loads((tmp_path / "split" / MANIFEST).read_text())
    assert data["format"] == "wdmoe-split/2" and "config" in data
    data["format"] = "wdmoe-split/1"
    del data["config"]
    (tmp_path / "split" / MANIFEST).write_text(json.dumps(data))
    assert Manifest.read(tmp_path / "split").config is None
    model = DistributedMoE.from_pretrained(tmp_path / "split")
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=1e-5)
