"""MoE² experts: the shipped edge LLMs, each served by its own in-process device worker.

Contract: `load_workers()` returns one `ExpertWorker` per shipped expert (`src/wdmoe/data/ensemble/experts/<name>/`,
in the order of `EXPERT_NAMES`), each holding its own causal LM and the shared tokenizer. A worker answers the two
request kinds of the ensemble and times its own compute (the measured profile of papers.md §5.8 step 1):
`option_logprobs(item)` (log p(choice | context) of every choice, scored by `wdmoe.eval.multiple_choice`) and
`next_token_logprobs(ids)` (log p(next token | ids) over the shared vocabulary). The workers are independent
objects with no shared state, so a process or Ray actor per worker is a transport change, not a model change.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from wdmoe.errors import WdmoeError
from wdmoe.eval.multiple_choice import Item, choice_logprobs

EXPERTS_DIR = Path(__file__).resolve().parent.parent / "data" / "ensemble" / "experts"
EXPERT_NAMES = ("tech-s", "jargon-d", "lit-moe", "society-d", "general-moe")  # the order of every (N, ...) array
BOS = True  # the experts were trained on "<s> doc </s>": score prompts with the <s> they saw


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    domain: str  # the wdmoe.train.domains name it was trained on ("all": the generalist)
    preset: str  # the wdmoe.train.config preset
    num_parameters: int
    weight_bytes: int
    heldout_perplexity: float  # on its own domain's held-out text, at the saved step


@dataclass(frozen=True)
class Timed:
    value: Any
    compute_s: float  # wall-clock seconds of the worker's forward passes


class ExpertWorker:
    """One edge server's LLM: an in-process worker that scores options and predicts next tokens."""

    def __init__(self, directory: Path) -> None:
        if not (directory / "config.json").is_file():
            raise WdmoeError(f"expert directory {directory} holds no config.json: give a `wdmoe train` model dir")
        self.directory = directory
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
        self.model.eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        recipe = json.loads((directory / "recipe.json").read_text()) if (directory / "recipe.json").is_file() else {}
        self.info = ExpertInfo(
            name=directory.name,
            domain=str(recipe.get("domain", "?")),
            preset=str(recipe.get("preset", "?")),
            num_parameters=sum(p.numel() for p in self.model.parameters()),
            weight_bytes=sum(p.numel() * p.element_size() for p in self.model.parameters()),
            heldout_perplexity=float(recipe.get("heldout_perplexity", float("nan"))),
        )

    @property
    def name(self) -> str:
        return self.info.name

    def option_logprobs(self, item: Item) -> Timed:
        """log p(choice | context) of every choice of `item`, (num_choices,) floats."""
        started = time.perf_counter()
        values = choice_logprobs(self.model, self.tokenizer, item, bos=BOS)
        return Timed(values, time.perf_counter() - started)

    @torch.inference_mode()
    def next_token_logprobs(self, ids: list[int]) -> Timed:
        """log p(next token | ids) over the shared vocabulary, a (V,) tensor."""
        started = time.perf_counter()
        logits = self.model(torch.tensor([ids])).logits[0, -1].float()  # (V,)
        return Timed(torch.log_softmax(logits, dim=-1), time.perf_counter() - started)


def expert_dirs(root: Path = EXPERTS_DIR, names: tuple[str, ...] = EXPERT_NAMES) -> list[Path]:
    missing = [name for name in names if not (root / name).is_dir()]
    if missing:
        raise WdmoeError(
            f"experts {', '.join(missing)} are not in {root}: reinstall wdmoe or rebuild them "
            "(python -m wdmoe.ensemble.build ROOT prepare, then ROOT train cpu)"
        )
    return [root / name for name in names]


def load_workers(root: Path = EXPERTS_DIR, names: tuple[str, ...] = EXPERT_NAMES) -> list[ExpertWorker]:
    """One worker per expert, in the order of `names`."""
    return [ExpertWorker(path) for path in expert_dirs(root, names)]
