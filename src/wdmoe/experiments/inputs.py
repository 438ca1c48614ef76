"""The experiments' two expensive inputs, cached in `Setup.cache_dir`: a router trace and accuracy per policy.

Contract: `experiment_trace` records the model generating greedily on held-out prompts under its own top-k (the
router's choices are what every policy then decides on in replay), or loads `Setup.trace_file`.
`accuracies` evaluates each policy once with `wdmoe.eval` (held-out perplexity, next-token accuracy, task accuracy)
on realization 0 of the scenario (seed `scenario.seed`), keyed by the policy label and everything the score depends
on. torch is imported only when something has to be computed. A cached trace or accuracy file that does not load
(a kill mid-write by an older wdmoe, a hand edit) is named in a warning and rebuilt, never trusted nor fatal.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from wdmoe.atomic import write_json_atomic, write_text_atomic
from wdmoe.experiments.policies import PolicySpec
from wdmoe.experiments.setup import Progress, Setup
from wdmoe.sim.trace import Trace, TraceError

ACCURACY_FILE = "accuracy.json"
ACCURACY_KEYS = ("perplexity", "next_token_accuracy", "task_accuracy", "experts_per_token_mean")
log = logging.getLogger(__name__)


class _Scores(BaseModel):
    model_config = ConfigDict(extra="forbid")

    perplexity: float
    next_token_accuracy: float
    task_accuracy: float  # nan without a task
    experts_per_token_mean: float


_ACCURACY_CACHE = TypeAdapter(dict[str, _Scores])


def experiment_trace(setup: Setup, progress: Progress) -> Trace:
    """The given trace file, or the cached recording, or a new recording saved to the cache."""
    if setup.trace_file is not None:
        return Trace.load(setup.trace_file)
    assert setup.model_dir is not None  # Setup refuses neither
    name = (f"trace-{Path(setup.model_dir).name}-d{setup.scenario.num_devices}-r{setup.requests}"
            f"-p{setup.prompt_tokens}-n{setup.new_tokens}.npz")
    path = setup.cache_dir / name
    if path.is_file():
        try:
            return Trace.load(path)
        except TraceError as exc:
            log.warning("cached trace is broken, recording it again: %s", exc)
    trace = record(setup, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.save(path)
    return trace


def _load_model(setup: Setup) -> Any:
    from wdmoe.runtime.open import ModelOptions, open_model

    if setup.model_dir is None:
        raise ValueError("the experiment needs a model directory (Setup.model_dir) to record or score accuracy")
    return open_model(setup.model_dir, ModelOptions(devices=setup.scenario.num_devices))


def _text(setup: Setup) -> Path:
    if setup.text is None:
        raise ValueError("the experiment needs held-out text (Setup.text) to record a trace or score accuracy")
    return setup.text


def record(setup: Setup, progress: Progress) -> Trace:
    """Generate `new_tokens` greedily for each of `requests` held-out prompts and record the router trace."""
    import torch

    from wdmoe.eval.evaluate import heldout_documents
    from wdmoe.sim.trace import record_trace

    model = _load_model(setup)
    documents = heldout_documents(model, _text(setup), 10**9)
    prompts = [ids[: setup.prompt_tokens] for ids in documents if len(ids) >= setup.prompt_tokens][: setup.requests]
    if len(prompts) < setup.requests:
        raise ValueError(f"only {len(prompts)} held-out documents have {setup.prompt_tokens} tokens; "
                         f"requests = {setup.requests}: lower requests or prompt_tokens")
    model.telemetry.clear()
    tick = progress.task("record trace", len(prompts))
    for ids in prompts:
        model.generate(torch.tensor([ids]), max_new_tokens=setup.new_tokens, min_new_tokens=setup.new_tokens,
                       do_sample=False)
        tick()
    trace = record_trace(model.steps, model.model_costs(), model.runtime.primary, model.num_devices,
                         str(setup.model_dir))
    model.close()
    return trace


def accuracy_key(setup: Setup, spec: PolicySpec) -> str:
    """Everything an accuracy depends on: the policy, the model, the data sizes, the scenario (with its seed)."""
    from wdmoe.eval.multiple_choice import SCORER_VERSION  # torch: imported only when accuracies are needed

    scenario = hashlib.sha256(setup.scenario.model_dump_json().encode()).hexdigest()[:12]
    return (f"{spec.label}|model={setup.model_dir}|text={setup.text}|task={setup.task}|tokens={setup.max_tokens}"
            f"|items={setup.task_items}|block={setup.block_size}|scenario={scenario}|scorer={SCORER_VERSION}")


def accuracies(setup: Setup, specs: Sequence[PolicySpec], progress: Progress) -> dict[str, dict[str, float]]:
    """{label: {perplexity, next_token_accuracy, task_accuracy (nan without a task), experts_per_token_mean}}."""
    path = setup.cache_dir / ACCURACY_FILE
    cache = read_accuracy_cache(path)
    missing = [s for s in specs if accuracy_key(setup, s) not in cache]
    if missing:
        _evaluate_missing(setup, missing, cache, path, progress)
    return {s.label: cache[accuracy_key(setup, s)] for s in specs}


def read_accuracy_cache(path: Path) -> dict[str, dict[str, float]]:
    """The accuracy cache at `path`, checked against its schema; {} (with a warning naming it) when it is broken."""
    if not path.is_file():
        return {}
    try:
        data = _ACCURACY_CACHE.validate_json(path.read_bytes())
    except ValidationError as exc:  # bad JSON or a bad shape
        first = exc.errors()[0]
        reason = f"at {'.'.join(map(str, first['loc'])) or 'the top'}: {first['msg']}"
        log.warning("accuracy cache %s is broken (%s); its accuracies will be computed again", path, reason)
        return {}
    return {label: scores.model_dump() for label, scores in data.items()}


def _evaluate_missing(setup: Setup, specs: Sequence[PolicySpec], cache: dict[str, dict[str, float]], path: Path,
                      progress: Progress) -> None:
    from wdmoe.eval.evaluate import evaluate, heldout_documents

    model = _load_model(setup)
    documents = heldout_documents(model, _text(setup), setup.max_tokens)
    task = _first_items(setup, setup.task) if setup.task is not None else None
    tick = progress.task("accuracy", len(specs))
    path.parent.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        model.set_policy(spec.build(setup.scenario.seed), setup.scenario)
        model.telemetry.clear()
        scores = evaluate(model, documents, setup.block_size, task, None, show_progress=False)
        scores.setdefault("task_accuracy", float("nan"))
        cache[accuracy_key(setup, spec)] = {k: float(scores[k]) for k in ACCURACY_KEYS}
        write_json_atomic(path, cache)  # after each policy: an interrupted run keeps its work
        tick()
    model.close()


def _first_items(setup: Setup, task: Path) -> Path:
    """The task's first `task_items` lines, as a task file in the cache."""
    lines = [line for line in task.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = setup.cache_dir / f"{task.stem}-first{setup.task_items}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, "\n".join(lines[: setup.task_items]) + "\n")
    return out
