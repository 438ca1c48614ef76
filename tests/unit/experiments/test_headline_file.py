"""The headline points (experiments.headline_file): chosen as docs/results.md chooses them, and the copy the
package ships (what `wdmoe demo` prints beside its rows) equal to docs/figures and to the text of docs/results.md."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from wdmoe.experiments.headline_file import SHIPPED_HEADLINE, headline_points, load_headline, write_headline

ROOT = Path(__file__).resolve().parents[3]
FIGURES = ROOT / "docs" / "figures"


def _row(policy: str, family: str, param: float | None, loss: float, ppl: float, cut: float) -> dict[str, object]:
    return {"policy": policy, "family": family, "param": "" if param is None else param,
            "next_token_accuracy": 0.25 * (1 - loss), "perplexity": 80 * (1 + ppl), "tpot_p50_s": 5e-3 * (1 - cut),
            "accuracy_loss": loss, "perplexity_increase": ppl, "tpot_reduction": cut}


ROWS = [
    _row("topk", "topk", None, 0.0, 0.0, 0.0),
    _row("wlr theta=0.02", "wlr", 0.02, 0.009, 0.02, 0.45),  # within 1% on accuracy only
    _row("wlr theta=0.05", "wlr", 0.05, 0.02, 0.05, 0.55),  # outside
    _row("joint lambda=10", "joint", 10.0, 0.0, 0.0, 0.2),
    _row("joint lambda=100", "joint", 100.0, 0.001, 0.004, 0.4),  # the best joint within 1% on both
    _row("joint lambda=1000", "joint", 1000.0, 0.005, 0.011, 0.5),  # perplexity over budget
    _row("straggler keep=0.8", "straggler", 0.8, 0.0, 0.0, 0.6),  # not a role's family
]


def test_points_are_topk_the_best_joint_within_both_metrics_and_the_best_wlr_within_accuracy() -> None:
    points = headline_points(ROWS, 0.01)

    assert [(p.role, p.policy) for p in points] == [("reference", "topk"), ("headline", "joint lambda=100"),
                                                    ("wlr", "wlr theta=0.02")]
    assert points[1].param == 100.0 and points[1].tpot_reduction == 0.4 and points[0].param is None
    assert points[1].spec().label == "joint lambda=100" and points[2].spec().label == "wlr theta=0.02"
    with pytest.raises(ValueError, match=r"no joint point is faster than TopK within 1% on accuracy_loss and "):
        headline_points([ROWS[0], ROWS[1], ROWS[5]], 0.01)  # joint lambda=1000 misses the perplexity budget


def test_written_file_loads_back(tmp_path: Path) -> None:
    path = write_headline(tmp_path / "headline.json", ROWS, 0.01, "a test")

    loaded = load_headline(path)

    assert loaded.source == "a test" and loaded.max_loss == 0.01
    assert loaded.points == headline_points(ROWS, 0.01)


def test_shipped_headline_is_docs_figures_and_matches_pareto_csv_and_results_md() -> None:
    shipped = load_headline(SHIPPED_HEADLINE)
    assert json.loads(SHIPPED_HEADLINE.read_text()) == json.loads((FIGURES / "headline.json").read_text())
    with (FIGURES / "pareto.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert shipped.points == headline_points(rows, shipped.max_loss)

    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    head, wlr = shipped.point("headline"), shipped.point("wlr")
    assert f"(Lagrangian form, λ = {head.param:g})" in results
    assert f"median time per output token by {100 * head.tpot_reduction:.1f}% against TopK" in results
    assert f"at a {100 * head.accuracy_loss:.2f}% relative loss" in results
    assert f"WLR θ = {wlr.param:g} goes further: TPOT p50 −{100 * wlr.tpot_reduction:.1f}%" in results
    assert f"at a {100 * wlr.accuracy_loss:.2f}% relative next-token-accuracy loss" in results
