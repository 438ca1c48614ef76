"""`wdmoe eval` is a thin shell: its JSON equals `wdmoe.eval.evaluate` on the same model, policy and data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from wdmoe import DistributedMoE
from wdmoe.cli.main import app
from wdmoe.config import load_scenario
from wdmoe.eval.evaluate import evaluate, heldout_documents
from wdmoe.policy.wlr import WLRThreshold
from wdmoe.train.data import DOC_END

runner = CliRunner()
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]
INDOOR = Path(__file__).resolve().parents[3] / "configs" / "indoor-lab.toml"  # 4 devices


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(HF model dir with a tokenizer, held-out text, task file)."""
    from wdmoe.eval.tasks import continuation_task, save_task
    from wdmoe.model.tiny import tiny_model
    from wdmoe.train.tokenizer import train_tokenizer

    rng = np.random.default_rng(1)
    docs = [" ".join(rng.choice(WORDS, size=24)) for _ in range(8)]
    root = tmp_path_factory.mktemp("eval-lm")
    tiny_model("mixtral", seed=5, vocab_size=300).save_pretrained(root / "model")
    train_tokenizer(docs, vocab_size=300).save_pretrained(root / "model")
    (root / "heldout.txt").write_text("".join(doc + DOC_END for doc in docs), encoding="utf-8")
    save_task(continuation_task(docs, num_items=3, context_words=5, continuation_words=3), root / "task.jsonl")
    return root / "model", root / "heldout.txt", root / "task.jsonl"


def test_eval_json_equals_the_library_on_the_scenarios_devices(tiny_lm: tuple[Path, Path, Path]) -> None:
    model_dir, text, task = tiny_lm
    args = ["eval", "--model", str(model_dir), "--text", str(text), "--task", str(task), "--policy", "wlr",
            "--theta", "0.8", "--scenario", str(INDOOR), "--max-tokens", "60", "--block-size", "16", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = json.loads(result.stdout)

    model = DistributedMoE.from_pretrained(model_dir, num_devices=4, policy=WLRThreshold(theta=0.8),
                                           scenario=load_scenario(INDOOR))
    expected = evaluate(model, heldout_documents(model, text, 60), 16, task, None, show_progress=False)
    model.close()
    assert ours == expected | {"policy": "wlr", "theta": 0.8, "model": str(model_dir)}
    assert ours["tokens"] >= 60 - 8 and ours["task_items"] == 3 and ours["experts_per_token_mean"] < 2.0


def test_heldout_documents_stop_once_enough_tokens_are_read(tiny_lm: tuple[Path, Path, Path]) -> None:
    model_dir, text, _ = tiny_lm
    model = DistributedMoE.from_pretrained(model_dir, num_devices=2)
    few = heldout_documents(model, text, 1)
    every = heldout_documents(model, text, 10**9)
    model.close()
    assert len(few) == 1 and len(every) == 8
    first = text.read_text(encoding="utf-8").split(DOC_END)[0]
    assert few[0] == every[0] == list(model.tokenizer(first)["input_ids"])


def test_limit_scores_the_first_items_and_equals_a_task_cut_to_them(tiny_lm: tuple[Path, Path, Path],
                                                                   tmp_path: Path) -> None:
    model_dir, text, task = tiny_lm
    first_two = tmp_path / "two.jsonl"
    first_two.write_text("".join(task.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    common = ["eval", "--model", str(model_dir), "--text", str(text), "--max-tokens", "20", "--block-size", "16",
              "--json"]

    limited = runner.invoke(app, [*common, "--task", str(task), "--limit", "2"])
    cut = runner.invoke(app, [*common, "--task", str(first_two)])

    assert limited.exit_code == 0 and cut.exit_code == 0, limited.output + cut.output
    ours, theirs = json.loads(limited.stdout), json.loads(cut.stdout)
    assert ours["task_items"] == 2
    assert {k: v for k, v in ours.items() if k != "task"} == {k: v for k, v in theirs.items() if k != "task"}


def test_a_missing_task_file_is_named_before_the_model_loads(tiny_lm: tuple[Path, Path, Path], tmp_path: Path) -> None:
    _, text, _ = tiny_lm
    result = runner.invoke(app, ["eval", "--model", str(tmp_path / "no-model"), "--text", str(text), "--task",
                                 str(tmp_path / "none.jsonl")])

    assert result.exit_code == 2
    assert f"--task {tmp_path / 'none.jsonl'}: no such file" in " ".join(result.output.split())
