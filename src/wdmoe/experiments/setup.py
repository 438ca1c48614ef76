"""What every experiment shares: the scenario, the replay and evaluation sizes, the output folder, progress.

Contract: `Setup` is a frozen value; nothing here imports torch. `Progress.task(description, total)` returns the
function to call once per finished unit of work (a replay, an evaluated policy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from wdmoe.config import Scenario


class Progress(Protocol):
    def task(self, description: str, total: int) -> Callable[[], None]: ...


class NoProgress:
    """Progress that shows nothing (tests, --json)."""

    def task(self, description: str, total: int) -> Callable[[], None]:
        return lambda: None


@dataclass(frozen=True)
class Setup:
    """One experiment run.

    Attributes:
        out_dir: where the CSV and PNG go; cached traces and accuracies go to out_dir / "cache".
        scenario: the radio scenario; realization r replays with seed scenario.seed + r.
        realizations: channel realizations per (policy, setting).
        model_dir: the model whose accuracy is evaluated and whose trace is recorded.
        text: held-out text (documents separated as `wdmoe.train.data.read_documents` expects).
        task: multiple-choice JSONL task, or None for no task accuracy.
        max_tokens: held-out tokens scored per policy. task_items: task items scored (the first ones).
        block_size: tokens per scoring forward pass.
        trace_file: a trace to replay instead of recording one from the model.
        requests / prompt_tokens / new_tokens: the recorded trace: one request per held-out document, its first
            prompt_tokens tokens as the prompt, new_tokens generated greedily.
    """

    out_dir: Path
    scenario: Scenario = field(default_factory=Scenario.default)
    realizations: int = 20
    model_dir: Path | None = None
    text: Path | None = None
    task: Path | None = None
    max_tokens: int = 8000
    task_items: int = 100
    block_size: int = 128
    trace_file: Path | None = None
    requests: int = 8
    prompt_tokens: int = 32
    new_tokens: int = 32

    def __post_init__(self) -> None:
        if self.realizations < 1:
            raise ValueError(f"realizations = {self.realizations}: need at least 1 channel realization")
        if self.trace_file is None and self.model_dir is None:
            raise ValueError("give a model directory (to record a trace) or a trace file")

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "cache"


@dataclass(frozen=True)
class ExperimentResult:
    """What one experiment wrote: its CSV rows (also printed, `shown` columns only) and the two files."""

    name: str
    csv: Path
    png: Path
    rows: list[dict[str, object]]
    shown: tuple[str, ...]
    notes: tuple[str, ...] = ()
