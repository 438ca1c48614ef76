"""lm-evaluation-harness (`local-completions`, a custom task over a local JSONL file, no hub) against the server
gets the same log-likelihoods, predictions and accuracy as scoring the model directly (`mc_accuracy`), under the
WLR policy on a fading-free channel (so the policy's choices do not depend on the order of requests)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.integration.serve.conftest import LIMITS, NUM_DEVICES
from wdmoe.serve import Engine, create_app
from wdmoe.serve.scoring import mc_accuracy
from wdmoe.serve.server import serve_in_thread

TASK = "wdmoe_tiny_mc"
TASK_YAML = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
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
    rng = random.Random(0)
    data = folder / "mc.jsonl"
    with data.open("w", encoding="utf-8") as out:
        for _ in range(questions):
            query = "".join(rng.choice("abcdefgh ") for _ in range(rng.randint(6, 14))).strip() + "?"
            choices = ["".join(rng.choice("wxyz") for _ in range(rng.randint(2, 4))) for _ in range(4)]
            out.write(json.dumps({"query": query, "choices": choices, "gold": rng.randrange(4)}) + "\n")
    (folder / "task.yaml").write_text(TASK_YAML.format(task=TASK, data=data), encoding="utf-8")
    return data


def test_lm_eval_local_completions_matches_direct_scoring(wlr_engine: Engine, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    data = write_task(tmp_path)
    direct = mc_accuracy(wlr_engine.model, data)

    with serve_in_thread(create_app(wlr_engine, limits=LIMITS)) as url:
        results = lm_eval.simple_evaluate(
            model="local-completions",
            model_args={"base_url": f"{url}/v1/completions", "model": "tiny-mixtral",
                        "tokenizer_backend": "huggingface", "tokenizer": str(wlr_engine.model.root / "bs"),
                        "num_concurrent": 2, "max_retries": 1},
            tasks=[TASK], task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
            log_samples=True,
        )

    assert results is not None
    assert results["results"][TASK]["acc,none"] == pytest.approx(direct.accuracy)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    served = [[resp[0][0] for resp in s["resps"]] for s in samples]  # per question, per choice: log-likelihood
    assert len(served) == direct.num_questions
    assert served == [pytest.approx(row, abs=1e-4) for row in direct.loglikelihoods]
    wlr_engine.model.telemetry.clear()
    wlr_engine.model(torch.tensor([list(range(3, 40))]))
    assert wlr_engine.model.summary()["experts_per_token_mean"] < 2.0  # the policy really dropped experts
