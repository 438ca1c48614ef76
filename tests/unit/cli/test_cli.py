"""The `wdmoe` command end to end, in-process (typer's CliRunner): split, run --json, demo --json, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from wdmoe.cli.main import app
from wdmoe.experiments.headline_file import load_headline
from wdmoe.model.shards import Manifest

runner = CliRunner()


def test_make_tiny_split_and_run_json_match_the_unsplit_model(tmp_path: Path) -> None:
    result = runner.invoke(app, ["make-tiny", "--out", str(tmp_path / "hf"), "--family", "qwen3_moe", "--json"])
    assert result.exit_code == 0, result.output
    made = json.loads(result.stdout)
    assert made["family"] == "qwen3_moe" and made["out"] == str(tmp_path / "hf") and made["parameters"] > 0
    result = runner.invoke(app, ["split", str(tmp_path / "hf"), "--devices", "4", "--out", str(tmp_path / "split")])
    assert result.exit_code == 0, result.output
    assert Manifest.read(tmp_path / "split").placement.num_devices == 4

    result = runner.invoke(
        app, ["run", "--model", str(tmp_path / "split"), "--prompt-ids", "1,2,3,4", "--max-new-tokens", "6", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.tensor([[1, 2, 3, 4]])
    expected = reference.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                                  pad_token_id=0)[0, 4:].tolist()
    assert report["tokens"] == expected
    assert report["experts_per_token_mean"] == 2.0
    assert len(report["tokens_per_device"]) == 4


def test_run_refuses_bad_prompt_ids_with_a_clear_message(mixtral_split: Path) -> None:
    result = runner.invoke(app, ["run", "--model", str(mixtral_split), "--prompt-ids", "1,x"])
    assert result.exit_code == 2
    assert "comma-separated token ids" in result.output
    result = runner.invoke(app, ["run", "--model", str(mixtral_split), "--prompt-ids", "1,999"])
    assert result.exit_code == 2
    assert "outside the vocabulary 0..127" in result.output
    result = runner.invoke(app, ["run", "--model", str(mixtral_split), "--prompt", "hello"])
    assert result.exit_code == 2
    assert "no tokenizer" in result.output


def test_split_of_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    result = runner.invoke(app, ["split", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "no config.json" in result.output
    assert not (tmp_path / "out").exists()


def test_demo_json_is_token_identical_to_unsplit_and_compares_policies() -> None:
    result = runner.invoke(app, ["demo", "--json", "--max-new-tokens", "8", "--heldout-tokens", "300"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["matches_unsplit"] is True
    assert len(report["tokens"]) == 8
    assert report["experts_per_token_mean"] == 2.0
    assert set(report["policies"]) == {"topk", "wlr", "joint"}
    for row in report["policies"].values():
        assert row["ttft_s"] > 0 and row["tpot_s"] > 0 and 0 < row["accuracy"] < 1
    assert report["policies"]["topk"]["experts_per_token_mean"] == 2.0
    assert report["policies"]["wlr"]["bytes_on_air"] <= report["policies"]["topk"]["bytes_on_air"]
    # the rows are docs/results.md's points (the shipped headline file), each with its cut and loss beside it
    shipped = load_headline()
    for key, point in zip(("topk", "joint", "wlr"), shipped.points, strict=True):
        row = report["policies"][key]
        assert (row["role"], row["policy"]) == (point.role, point.policy)
        assert row["results"] == {"accuracy_loss": point.accuracy_loss, "tpot_reduction": point.tpot_reduction}
        assert row["tpot_reduction"] == pytest.approx(1 - row["tpot_s"] / report["policies"]["topk"]["tpot_s"])
        topk_acc = report["policies"]["topk"]["accuracy"]
        assert row["accuracy_loss"] == pytest.approx((topk_acc - row["accuracy"]) / topk_acc)
    assert report["theta"] == shipped.point("wlr").param
