"""The Pareto front and the headline on hand-made points (pure numpy), and the light import of the experiments."""

from __future__ import annotations

import numpy as np
import pytest

from wdmoe.experiments.pareto import headline, pareto_front, relative_loss


def test_front_keeps_exactly_the_non_dominated_points() -> None:
    # (latency s, accuracy): a fast-bad, b slow-good, c dominated by a, d ties b in latency but worse, e best-fast
    latency = [1.0, 3.0, 2.0, 3.0, 0.5]
    accuracy = [0.5, 0.9, 0.4, 0.8, 0.3]

    front = pareto_front(latency, accuracy)

    assert front.tolist() == [True, True, False, False, True]


def test_identical_points_are_both_on_the_front() -> None:
    assert pareto_front([1.0, 1.0, 2.0], [0.5, 0.5, 0.4]).tolist() == [True, True, False]


def test_headline_takes_the_largest_reduction_within_the_loss_budget() -> None:
    labels = ["topk", "a", "b", "c"]
    latency = [10.0, 8.0, 5.0, 2.0]
    accuracy = [0.500, 0.4975, 0.496, 0.40]  # losses 0, 0.5%, 0.8%, 20%

    h = headline(labels, latency, accuracy, "topk", max_loss=0.01)

    assert h is not None
    assert (h.label, h.within) == ("b", True)
    assert h.latency_reduction == pytest.approx(0.5)
    assert h.accuracy_loss == pytest.approx(0.008)


def test_headline_reports_the_closest_faster_point_when_none_is_within_budget() -> None:
    labels = ["topk", "a", "b", "slow"]
    h = headline(labels, [10.0, 6.0, 9.0, 12.0], [0.5, 0.45, 0.48, 0.6], "topk", max_loss=0.01)

    assert h is not None
    assert (h.label, h.within) == ("b", False)
    assert h.accuracy_loss == pytest.approx(0.04)


def test_headline_on_perplexity_counts_an_increase_as_loss() -> None:
    h = headline(["topk", "a"], [10.0, 5.0], [50.0, 50.4], "topk", max_loss=0.01, higher_is_better=False)

    assert h is not None and h.within
    assert h.accuracy_loss == pytest.approx(0.008)


def test_headline_is_none_when_nothing_beats_the_reference() -> None:
    assert headline(["topk", "a"], np.array([1.0, 2.0]), np.array([0.5, 0.6]), "topk") is None


def test_relative_loss_against_a_zero_reference_is_zero_for_a_tie_and_infinite_otherwise() -> None:
    loss = relative_loss(np.array([0.0, 0.1]), 0.0, higher_is_better=True)

    assert loss.tolist() == [0.0, -np.inf]


def test_the_experiments_import_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, wdmoe.experiments.run, wdmoe.cli.experiment_cmd; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)

    assert result.stdout.strip() == "[]"
