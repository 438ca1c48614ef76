"""The shipped MoE² experts, their task and the precomputed scores agree with each other."""

from __future__ import annotations

from collections import Counter

import numpy as np

from wdmoe.ensemble import scores
from wdmoe.ensemble.experts import EXPERT_NAMES, EXPERTS_DIR, ExpertWorker
from wdmoe.ensemble.task import CATEGORIES, SPLITS, load_categorized
from wdmoe.train.domains import HELDOUT_BELOW, TASK_BELOW, Document, split_three


def test_experts_fit_the_size_budget() -> None:
    sizes = {name: (EXPERTS_DIR / name / "model.safetensors").stat().st_size for name in EXPERT_NAMES}

    assert max(sizes.values()) <= 3_100_000
    assert sum(sizes.values()) <= 15_000_000


def test_task_has_every_category_and_split_in_the_stated_sizes() -> None:
    items = load_categorized()

    counts = Counter((c.category, c.split) for c in items)

    assert counts == {(category, name): n for category in CATEGORIES for name, n in SPLITS}
    assert all(len(c.item.choices) == 4 for c in items)


def test_domain_split_follows_the_hash_of_the_text() -> None:
    docs = [Document(f"document number {i}", "jargon") for i in range(400)]

    parts = split_three(docs)

    assert sum(map(len, parts.values())) == 400
    assert 0 < len(parts["heldout"]) < len(parts["task"]) < len(parts["train"])
    assert abs(len(parts["heldout"]) / 400 - HELDOUT_BELOW) < 0.04
    assert abs((len(parts["heldout"]) + len(parts["task"])) / 400 - TASK_BELOW) < 0.06


def test_a_live_worker_reproduces_the_stored_scores() -> None:
    stored = scores.load()
    item = load_categorized()[0]
    worker = ExpertWorker(EXPERTS_DIR / EXPERT_NAMES[0])

    live = worker.option_logprobs(item.item)

    np.testing.assert_allclose(live.value, stored.logprobs[0, 0], rtol=1e-4, atol=1e-3)
    assert live.compute_s > 0.0
