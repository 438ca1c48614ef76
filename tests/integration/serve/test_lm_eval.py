"""lm-evaluation-harness (`local-completions`, a custom task over a local JSONL file, no hub) against the server
gets the same per-choice log-likelihoods, per-item predictions and accuracies as wdmoe's own multiple-choice scorer
(`wdmoe.eval.multiple_choice.score_task`, what `wdmoe eval --task` runs):

- on the tiny test model under the WLR policy on a fading-free channel (so the policy's choices do not depend on
  the order of requests, which lm-eval chooses);
- on the shipped model and the shipped continuation task, `wdmoe eval --task` against lm-eval talking to the server
  that `wdmoe serve` builds (TopK, whose choices do not depend on the channel), in both BOS conventions: lm-eval's
  default against `wdmoe eval`'s default, and lm-eval's `add_bos_token=True` against `wdmoe eval --bos`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.serve.conftest import LIMITS, NUM_DEVICES
from wdmoe.eval.multiple_choice import Item, TaskScores, load_task, score_task
from wdmoe.eval.tasks import save_task
from wdmoe.serve import Engine, create_app
from wdmoe.serve.server import serve_in_thread

TASK = "wdmoe_mc"
# Our task format as it is: the choices carry their own leading space, so the delimiter is empty.
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module")
def wlr_engine(text_model_dir: Path) -> Iterator[Engine]:
    from wdmoe.config import Scenario
    from wdmoe.policy.factory import make_policy
    from wdmoe.runtime.model import DistributedMoE

    model = DistributedMoE.from_pretrained(text_model_dir, num_devices=NUM_DEVICES)
    scenario = Scenario.model_validate({"num_devices": NUM_DEVICES, "fading": {"model": "none"}})
    model.set_policy(make_policy("wlr", theta=0.7), scenario)
    engine = Engine(model, name="tiny-mixtral")
    yield engine
    engine.close()
    model.close()


def write_task(folder: Path, questions: int = 16) -> Path:
    import random

    rng = random.Random(0)
    items = []
    for _ in range(questions):
        context = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(6, 14))).strip() + "?"
        if rng.random() < 0.3:
            context += " "  # a trailing space moves to the continuation
        choices = tuple(" " + "".join(rng.choice("wxyz") for _ in range(rng.randint(2, 4))) for _ in range(4))
        items.append(Item(context, choices, rng.randrange(4)))
    save_task(items, folder / "mc.jsonl")
    return folder / "mc.jsonl"


def run_lm_eval(
    url: str,
    model_name: str,
    tokenizer_dir: Path,
    data: Path,
    folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    **model_args: Any,
) -> dict[str, Any]:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(folder / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = folder / "lm-eval-tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / "task.yaml").write_text(TASK_YAML.format(task=TASK, data=data), encoding="utf-8")
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "base_url": f"{url}/v1/completions",
            "model": model_name,
            "tokenizer_backend": "huggingface",
            "tokenizer": str(tokenizer_dir),
            "num_concurrent": 2,
            "max_retries": 1,
            **model_args,
        },
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        log_samples=True,
    )
    assert results is not None
    return results


def assert_same_scores(results: dict[str, Any], ours: TaskScores) -> None:
    """lm-eval's accuracies, per-item predictions and per-choice log-likelihoods equal ours."""
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    served = [[resp[0][0] for resp in s["resps"]] for s in samples]  # per item, per choice: log-likelihood
    assert len(served) == ours.items
    assert [max(range(len(row)), key=row.__getitem__) for row in served] == list(ours.predictions)
    assert [s["acc"] for s in samples] == [
        float(p == s["doc"]["answer"]) for p, s in zip(ours.predictions, samples, strict=True)
    ]
    assert [s["acc_norm"] for s in samples] == [
        float(p == s["doc"]["answer"]) for p, s in zip(ours.predictions_norm, samples, strict=True)
    ]
    assert served == [pytest.approx(row, abs=1e-4) for row in ours.loglikelihoods]
    assert results["results"][TASK]["acc,none"] == pytest.approx(ours.accuracy)
    assert results["results"][TASK]["acc_norm,none"] == pytest.approx(ours.accuracy_norm)


def test_lm_eval_local_completions_matches_our_scorer(
    wlr_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_task(tmp_path)
    ours = score_task(wlr_engine.model, wlr_engine.tokenizer, load_task(data))
    with serve_in_thread(create_app(wlr_engine, limits=LIMITS)) as url:
        results = run_lm_eval(url, "tiny-mixtral", wlr_engine.model.root / "bs", data, tmp_path, monkeypatch)
    assert_same_scores(results, ours)
    wlr_engine.model.telemetry.clear()
    wlr_engine.model(torch.tensor([list(range(3, 40))]))
    assert wlr_engine.model.summary()["experts_per_token_mean"] < 2.0  # the policy really dropped experts


@pytest.fixture(scope="module")
def shipped_engine() -> Iterator[Engine]:
    from wdmoe.cli.serve_cmd import Backend, load_engine

    engine = load_engine(None, None, "topk", 0.5, None, Backend.local)  # what `wdmoe serve` runs by default
    yield engine
    engine.close()
    engine.model.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bos", "lm_eval_args"), [(False, {}), (True, {"add_bos_token": True})], ids=["default", "bos"]
)
def test_wdmoe_eval_and_lm_eval_against_wdmoe_serve_agree_on_the_shipped_task(
    shipped_engine: Engine, bos: bool, lm_eval_args: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from wdmoe.cli.main import app
    from wdmoe.model import shipped

    task = shipped.CONTINUATION_TASK
    run = CliRunner().invoke(
        app, ["eval", "--task", str(task), "--max-tokens", "2", "--json", "--bos" if bos else "--no-bos"]
    )
    assert run.exit_code == 0, run.output
    cli = json.loads(run.stdout)
    assert (cli["task_items"], cli["task_bos"], cli["policy"]) == (200, bos, "topk")

    ours = score_task(shipped_engine.model, shipped_engine.tokenizer, load_task(task), bos=bos)
    assert (ours.accuracy, ours.accuracy_norm) == (cli["task_accuracy"], cli["task_accuracy_norm"])
    with serve_in_thread(create_app(shipped_engine)) as url:
        results = run_lm_eval(
            url, shipped_engine.name, shipped.SHIPPED_DIR, task, tmp_path, monkeypatch, **lm_eval_args
        )
    assert_same_scores(results, ours)
