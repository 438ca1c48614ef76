"""Build a multiple-choice task from held-out text: pick the true continuation among four.

For each sampled document with enough words, the context is its first words and the true continuation its next
`continuation_words` words; the three distractors are word spans of the same length from other documents. The
choices are shuffled with a seeded generator, so the task file is reproducible.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wdmoe.atomic import write_text_atomic
from wdmoe.eval.multiple_choice import Item


def continuation_task(documents: list[str], num_items: int = 200, context_words: int = 12,
                      continuation_words: int = 6, num_choices: int = 4, seed: int = 0) -> list[Item]:
    """Items from `documents`; documents shorter than context + continuation words are skipped."""
    rng = np.random.default_rng(seed)
    need = context_words + continuation_words
    words = [doc.split() for doc in documents]
    usable = [i for i, w in enumerate(words) if len(w) >= need]
    if len(usable) < num_choices:
        raise ValueError(f"only {len(usable)} documents have {need} words; need at least {num_choices}")
    picks = rng.choice(usable, size=min(num_items, len(usable)), replace=False)
    items = []
    for i in picks.tolist():
        context = " ".join(words[i][:context_words])
        truth = " " + " ".join(words[i][context_words:need])
        others = rng.choice([j for j in usable if j != i], size=num_choices - 1, replace=False)
        distractors = []
        for j in others.tolist():
            start = int(rng.integers(0, len(words[j]) - continuation_words + 1))
            distractors.append(" " + " ".join(words[j][start : start + continuation_words]))
        choices = [truth, *distractors]
        order = rng.permutation(num_choices)
        items.append(Item(context, tuple(choices[o] for o in order), int(np.flatnonzero(order == 0)[0])))
    return items


def save_task(items: list[Item], path: Path) -> None:
    lines = [json.dumps({"context": it.context, "choices": list(it.choices), "answer": it.answer}) for it in items]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "\n".join(lines) + "\n")
