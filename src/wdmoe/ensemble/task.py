"""The MoE² local task: multiple choice with application categories (one per text domain), and its splits.

Contract: `build_task(corpora_dir)` turns each domain's `task.txt` (text no expert trained on, see
`wdmoe.train.domains`) into "pick the true continuation among four" items (after `wdmoe.eval.tasks.continuation_task`:
12 words of context, the next 6 words as the truth, but each of the three distractors is a 6-word span of a
document of one of the *other* domains, so an expert of the item's domain is drawn to the truth and an expert of
another domain to the distractor in its own language: the experts' strengths differ by category), tags each with
its category and a split, and `save_task` writes the JSONL of
`src/wdmoe/data/tasks/domains.jsonl`: {"context", "choices", "answer", "category", "split"} per line, readable by
`wdmoe.eval.multiple_choice.load_task` too (it ignores the extra fields). Splits, per category in item order:
`train` (the gate's training data), `val` (the selection's utility oracle), `test` (every reported accuracy).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wdmoe.atomic import write_text_atomic
from wdmoe.errors import WdmoeError
from wdmoe.eval.multiple_choice import Item
from wdmoe.train.data import read_documents
from wdmoe.train.domains import DOMAINS

TASK_FILE = Path(__file__).resolve().parent.parent / "data" / "tasks" / "domains.jsonl"
SPLITS = (("train", 80), ("val", 40), ("test", 40))  # items per category, in this order
CATEGORIES = tuple(DOMAINS)  # ("tech", "jargon", "literature", "society")


@dataclass(frozen=True)
class CategorizedItem:
    item: Item
    category: str
    split: str


CONTEXT_WORDS, CONTINUATION_WORDS = 12, 6


def cross_domain_items(
    words: dict[str, list[list[str]]], category: str, count: int, rng: np.random.Generator
) -> list[Item]:
    """`count` items of `category`: context and truth from one of its documents, one distractor per other domain."""
    need = CONTEXT_WORDS + CONTINUATION_WORDS
    usable = [w for w in words[category] if len(w) >= need]
    if len(usable) < count:
        raise WdmoeError(f"category {category}: {len(usable)} documents of {need}+ words, {count} needed")
    items = []
    for i in rng.choice(len(usable), size=count, replace=False).tolist():
        doc = usable[i]
        choices = [" " + " ".join(doc[CONTEXT_WORDS:need])]
        for other in (c for c in CATEGORIES if c != category):
            pool = [w for w in words[other] if len(w) >= CONTINUATION_WORDS]
            span = pool[int(rng.integers(len(pool)))]
            start = int(rng.integers(0, len(span) - CONTINUATION_WORDS + 1))
            choices.append(" " + " ".join(span[start : start + CONTINUATION_WORDS]))
        order = rng.permutation(len(choices))
        items.append(
            Item(" ".join(doc[:CONTEXT_WORDS]), tuple(choices[o] for o in order), int(np.flatnonzero(order == 0)[0]))
        )
    return items


def build_task(corpora_dir: Path, seed: int = 0) -> list[CategorizedItem]:
    """SPLITS items per category from `corpora_dir/<category>/task.txt`."""
    per_category = sum(count for _, count in SPLITS)
    words = {c: [doc.split() for doc in read_documents(corpora_dir / c / "task.txt")] for c in CATEGORIES}
    rng = np.random.default_rng(seed)
    out: list[CategorizedItem] = []
    for category in CATEGORIES:
        items = cross_domain_items(words, category, per_category, rng)
        splits = [name for name, count in SPLITS for _ in range(count)]
        out.extend(CategorizedItem(item, category, split) for item, split in zip(items, splits, strict=True))
    return out


def save_task(items: list[CategorizedItem], path: Path = TASK_FILE) -> None:
    lines = [
        json.dumps(
            {
                "context": c.item.context,
                "choices": list(c.item.choices),
                "answer": c.item.answer,
                "category": c.category,
                "split": c.split,
            }
        )
        for c in items
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")


def load_categorized(path: Path = TASK_FILE) -> list[CategorizedItem]:
    """The items of a categorized task file; a line without category or split is refused with its number."""
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        raw = json.loads(line)
        if raw.get("category") not in CATEGORIES or raw.get("split") not in {name for name, _ in SPLITS}:
            raise WdmoeError(
                f"{path}:{number}: category {raw.get('category')!r} / split {raw.get('split')!r}: "
                f"expected one of {CATEGORIES} and one of {[name for name, _ in SPLITS]}"
            )
        item = Item(str(raw["context"]), tuple(str(c) for c in raw["choices"]), int(raw["answer"]))
        out.append(CategorizedItem(item, raw["category"], raw["split"]))
    return out
