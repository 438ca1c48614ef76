"""The planner experiment's pieces (bench/planner_vs_round_robin.py) on a shipped-like requirement, no model."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from wdmoe.plan.cluster import load_cluster
from wdmoe.plan.deployment import copies_memory_bytes, round_robin_copies
from wdmoe.plan.planner import PlannerConfig, copies_latency_s, plan_deployment
from wdmoe.plan.requirement import ModelRequirement

ROOT = Path(__file__).resolve().parents[3]


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("planner_bench", ROOT / "bench" / "planner_vs_round_robin.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def requirement() -> ModelRequirement:
    rng = np.random.default_rng(3)
    pop = rng.dirichlet(np.full(8, 0.7), size=4) * 2
    imp = rng.uniform(0.2, 0.8, size=(4, 8))
    return ModelRequirement.build("shipped-like", (0, 1, 2, 3), 8, 2, 192, 32, 129024, 1_973_952, pop, imp)


def test_mixed_bits_fit_the_budget_and_favour_popular_experts() -> None:
    req = requirement()

    bits = bench().mixed_bits(req, 0.5)

    assert req.bytes_for(bits).sum() <= 0.5 * req.bytes_for().sum()
    score = (req.popularity * req.importance).ravel()
    assert bits.ravel()[np.argmax(score)] >= bits.ravel()[np.argmin(score)]


def test_planner_beats_round_robin_within_memory_at_every_width() -> None:
    cluster, req = load_cluster(ROOT / "configs" / "clusters" / "lab.toml"), requirement()
    free = np.array([s.free_memory_bytes for s in cluster.statuses])
    rr = round_robin_copies(req.num_layers, req.num_experts, len(cluster.statuses))
    for width in (32, 8, 4):
        bits = np.full(req.popularity.shape, width)

        plan = plan_deployment(req, cluster.statuses, cluster.radio, bits, PlannerConfig(allow_intra=False))

        assert plan.expected_latency_s < copies_latency_s(rr, req, cluster.statuses, cluster.radio, bits)
        assert np.all(copies_memory_bytes(plan.copies, req.bytes_for(bits), len(free)) <= free)
