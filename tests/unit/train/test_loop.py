"""A tiny CPU training run end to end: loss goes down, and the checkpoint runs in HF and split by wdmoe alike."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import wdmoe
from wdmoe.train.config import MAX_WEIGHT_BYTES, TrainConfig, count_parameters, save_dtype, shipped_config, tiny_config
from wdmoe.train.data import join_documents
from wdmoe.train.loop import TrainResult, lr_at, train

WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "hackers", "hack", "code")


def tiny_corpus(directory: Path) -> Path:
    """Documents of a small, learnable language: each is a rotation of a fixed word sequence."""
    directory.mkdir(parents=True)
    docs = [" ".join(WORDS[i % len(WORDS):] + WORDS[: i % len(WORDS)]) for i in range(120)]  # rotations
    (directory / "train.txt").write_text(join_documents(docs[:100]), encoding="utf-8")
    (directory / "heldout.txt").write_text(join_documents(docs[100:]), encoding="utf-8")
    return directory


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A model this small runs fastest on one thread; two threads on two busy cores thrash (5x slower, measured)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainResult, Path]:
    root = tmp_path_factory.mktemp("train")
    result = train(tiny_config(steps=40, eval_every=20), tiny_corpus(root / "corpus"), root / "out", progress=False)
    return result, root / "out"


def test_training_loss_goes_down_and_the_log_is_written(trained: tuple[TrainResult, Path]) -> None:
    result, out = trained

    log = json.loads((out / "train_log.json").read_text())
    losses = [row["loss"] for row in log["losses"]]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    assert all(row["aux_loss"] > 0 and row["lm_loss"] < row["loss"] for row in log["losses"])
    assert [e["step"] for e in log["evals"]] == [20, 40]
    assert result.heldout_perplexity == pytest.approx(math.exp(result.heldout_loss))
    assert result.heldout_perplexity < result.unigram_perplexity
    assert log["save_dtype"] == result.save_dtype == "float32"
    assert log["weight_bytes"] == result.weight_bytes == 4 * result.num_parameters
    assert log["config"]["model"]["num_experts"] == 8 and log["device"] == "cpu"


def test_checkpoint_loads_in_hf_and_split_by_wdmoe_with_identical_greedy_tokens(
    trained: tuple[TrainResult, Path],
) -> None:
    result, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(result.model_dir, local_files_only=True)
    hf = AutoModelForCausalLM.from_pretrained(result.model_dir, local_files_only=True).eval()
    input_ids = tokenizer("the quick brown", return_tensors="pt")["input_ids"]

    expected = hf.generate(input_ids, max_new_tokens=8, do_sample=False)
    split = wdmoe.DistributedMoE.from_pretrained(result.model_dir, num_devices=2)
    actual = split.generate(input_ids, max_new_tokens=8, do_sample=False)

    assert torch.equal(actual, expected)
    assert hf.config.num_local_experts == 8 and hf.config.num_experts_per_tok == 2
    assert not hf.config.output_router_logits  # the aux loss is a training-only cost


def test_shipped_config_fits_the_weight_budget() -> None:
    cfg = shipped_config()

    params = count_parameters(cfg.model)

    # embeddings + LM head 2 * 4096 * 192 = 1,572,864; per layer: attention 192*192*2 + 192*64*2 = 98,304,
    # router 8*192 = 1,536, experts 8*448*192 + 8*192*224 = 1,032,192, norms 384 -> 1,132,416 x 4 layers;
    # final norm 192: 1,572,864 + 4,529,664 + 192 = 6,102,720
    assert params == 6_102_720
    assert save_dtype(params) == torch.float32
    assert params * 4 <= MAX_WEIGHT_BYTES
    assert (cfg.model.num_experts, cfg.model.top_k, cfg.model.vocab_size) == (8, 2, 4096)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    cfg = TrainConfig(steps=101, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)

    assert [lr_at(s, cfg) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert lr_at(100, cfg) == pytest.approx(0.1)


def test_bad_settings_are_refused_with_the_field_and_value() -> None:
    with pytest.raises(ValueError, match="device = 'tpu'"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="block_size = 2048 tokens exceeds"):
        TrainConfig(block_size=2048)
