"""`open_model`: the one assembly of a model (split on the fly or as given, pool, policy, scenario, air, the
temporary directory the model owns), checked against the unsplit Hugging Face model and `from_pretrained`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from wdmoe import DistributedMoE
from wdmoe.config import Scenario
from wdmoe.errors import ShardError
from wdmoe.policy.topk import TopK
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.runtime.air import AirCompression
from wdmoe.runtime.open import ModelOptions, open_model

IDS = torch.tensor([[3, 17, 5, 99, 42, 7, 8, 11]])


def test_a_hf_directory_is_split_over_the_scenarios_devices_into_a_directory_the_model_removes(
    tmp_path: Path, tiny_models: dict[str, object]
) -> None:
    reference = tiny_models["mixtral"]
    reference.save_pretrained(tmp_path / "hf")  # type: ignore[attr-defined]

    model = open_model(tmp_path / "hf", ModelOptions(policy=TopK(), scenario=Scenario.default(num_devices=3)))
    logits = model(IDS).logits
    split_dir = model.root
    model.close()

    with torch.no_grad():
        expected = reference(IDS).logits  # type: ignore[operator]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert model.num_devices == 3
    assert model.wireless is not None and model.wireless.scenario.num_devices == 3
    assert split_dir.name == "split" and not split_dir.exists()


def test_a_split_directory_is_opened_as_is_kept_on_close_and_its_device_count_is_checked(mixtral_split: Path) -> None:
    model = open_model(mixtral_split)
    reference = DistributedMoE.from_pretrained(mixtral_split)
    assert model.root == mixtral_split and model.wireless is None
    torch.testing.assert_close(model(IDS).logits, reference(IDS).logits, rtol=0, atol=0)
    model.close()
    reference.close()
    assert (mixtral_split / "manifest.json").is_file()

    with pytest.raises(ShardError, match="split for 3 devices, not num_devices = 5"):
        open_model(mixtral_split, ModelOptions(devices=5))


def test_policy_and_air_are_set_as_from_pretrained_and_set_compression_set_them(mixtral_split: Path) -> None:
    options = ModelOptions(policy=WLRThreshold(theta=0.9), air=AirCompression("int8"))
    model = open_model(mixtral_split, options)
    reference = DistributedMoE.from_pretrained(mixtral_split, policy=WLRThreshold(theta=0.9))
    reference.set_compression("int8")

    assert model.runtime.air == AirCompression("int8")
    assert model.wireless is not None and reference.wireless is not None
    assert model.wireless.bits_per_token == reference.wireless.bits_per_token
    assert model.wireless.scenario == Scenario.default(num_devices=3)
    model.generate(IDS, max_new_tokens=3, do_sample=False)
    reference.generate(IDS, max_new_tokens=3, do_sample=False)
    ours, theirs = model.summary(), reference.summary()
    for key in ("tokens_per_device", "bits_down_per_device", "bits_up_per_device", "experts_per_token_mean",
                "bytes_on_air", "energy_j"):
        assert ours[key] == theirs[key], key
    assert ours["experts_per_token_mean"] < 2.0  # theta 0.9 dropped some second experts
    model.close()
    reference.close()


def test_the_model_owns_a_temporary_directory_it_is_given_and_refuses_one_with_a_hf_directory(
    mixtral_split: Path, tmp_path: Path, tiny_models: dict[str, object]
) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="wdmoe-test-")
    shutil.copytree(mixtral_split, Path(tmp.name) / "split")

    model = open_model(Path(tmp.name) / "split", temporary=tmp)
    assert Path(tmp.name).is_dir()
    model.close()
    assert not Path(tmp.name).exists()

    tiny_models["mixtral"].save_pretrained(tmp_path / "hf")  # type: ignore[attr-defined]
    other = tempfile.TemporaryDirectory(prefix="wdmoe-test-")
    with pytest.raises(ValueError, match=r"has no manifest\.json"):
        open_model(tmp_path / "hf", temporary=other)
    other.cleanup()
